"""Shared fixtures. Tests never reach the network: the Hub is offline, servers are local."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """Path of a tiny randomly initialised Qwen2.5-VL (model + processor) saved to disk."""
    pytest.importorskip("torch")
    from medrecipe.testing.tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_vlm"))
