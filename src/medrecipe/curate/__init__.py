"""OpenMedReason-style curation: figure records to image-dependent clinical questions.

Stages (see docs/curate.md): ingest figure records -> visual usability -> text and context
judge -> clinical task assignment -> constrained question writing -> code checks ->
text-only probe -> Items. Run them with `medrecipe curate RECIPE`.
"""


class ParseError(ValueError):
    """A model reply that does not follow its step's format; the message says what is wrong."""
