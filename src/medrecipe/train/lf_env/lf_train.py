"""``llamafactory-cli`` for an environment where torchvision does not import.

Run with the python of a LLaMA-Factory environment (medrecipe need not be installed there):

    python lf_train.py train config.yaml

Where torchvision imports this is exactly ``llamafactory-cli``. Where it does not (torch CPU
wheels without a matching torchvision), Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors are first
made to load without their video processor (see offline_processor.py), which stock
transformers 5 needs torchvision for; image and text training is unchanged.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import offline_processor  # noqa: E402

if __name__ == "__main__":
    patched = offline_processor.install()
    if patched:
        print("medrecipe: torchvision does not import here; " + ", ".join(patched)
              + " load without a video processor (images and text only)", file=sys.stderr)
    from llamafactory.cli import main

    sys.argv = ["llamafactory-cli", *sys.argv[1:]]
    sys.exit(main())
