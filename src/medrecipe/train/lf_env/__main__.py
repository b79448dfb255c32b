"""Print the path of the LLaMA-Factory launcher (``lf_train.py``) for shell use."""

from medrecipe.train.lf_env import TRAIN_SCRIPT

print(TRAIN_SCRIPT)
