"""Test and benchmark helpers shipped with the package (local servers, tiny models)."""
