"""Scripts that run in a user's LLaMA-Factory environment (by path, with its python).

They import LLaMA-Factory and transformers but nothing from medrecipe, so that environment
does not need medrecipe (whose training extra pins newer transformers / datasets / TRL).
``python -m medrecipe.train.lf_env`` prints the folder that holds them.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
CHECK_SCRIPT = FOLDER / "lf_check.py"
TRAIN_SCRIPT = FOLDER / "lf_train.py"
