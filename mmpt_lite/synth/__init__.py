"""how2-synth, the embedded synthetic corpus: planning, wording, rendering and writing it.

Reached only by the code that creates a missing corpus (``mmpt_lite.data.prepare.ensure_corpus``),
``scripts/make_synthetic.py`` and the tests; it imports nothing of mmpt_lite but ``fileio``.
"""
