"""how2-synth, the embedded synthetic corpus (``corpus.py``); imports nothing of mmpt_lite but ``fileio``."""
