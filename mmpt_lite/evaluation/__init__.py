"""Evaluation: zero-shot MSR-VTT / YouCook2 retrieval and the HMDB-51 linear probe (MIL-NCE protocols).

Modules, bottom up: ``metrics`` (ranks, R@k, MedR, MeanR), ``windows`` (where windows start),
``features`` (decode workers + batched embedding), ``cache`` (features keyed by checkpoint, protocol,
lists), ``zeroshot`` (retrieval, and ``evaluate_retrieval`` for in-training checks), ``linear_probe``
(split files, LinearSVC), ``checkpoints`` (format detection and loading), ``report`` (table, JSON, plot),
``cli`` (the eval/ scripts).
"""
