"""Evaluation: zero-shot MSR-VTT / YouCook2 retrieval and the HMDB-51 linear probe (MIL-NCE protocols), YouCook2
video-paragraph retrieval (NORTON), and the multi-view Kinetics / SSv2 accuracy of fine-tuned classifiers.

Modules, bottom up: ``metrics`` (ranks, R@k, MedR, MeanR), ``windows`` (where windows start), ``cache``
(features keyed by checkpoint, protocol, lists), ``features`` (protocols, decode workers, batched embedding),
``runtime`` (``EvalRuntime``; the ``Evaluator`` base, which extracts and caches features), ``zeroshot``
(``MsrvttRetrieval``, ``YoucookRetrieval``), ``paragraph`` (``YoucookParagraph``: video-paragraph retrieval
by caption average, DTW and OTAM), ``linear_probe`` (``HmdbProbe``: split files, LinearSVC),
``classify`` (``ClassifyEval``: clips × crops views, softmax averaged per video), ``checkpoints`` (format detection
and loading), ``report`` (table, JSON, plot), ``cli`` (the eval/ scripts,
via ``EVALUATORS``).

In training: ``MsrvttRetrieval.from_run_config(cfg, video_root, csv).run(model, EvalRuntime.for_training(cfg,
device))`` returns the metrics dict.

A new evaluator: one subclass of ``runtime.Evaluator`` (class attributes ``name``, ``title``,
``synthetic_folder``, ``default_list``, ``protocol_type`` (a protocol dataclass whose defaults are the
published protocol), ``decode_windows``, ``feature_output``, …; ``read`` for its eval set; ``cache_parts``
for what else keys its cached features; ``evaluate`` returning (JSON record, table row, curves); ``columns``;
optional ``add_arguments``/``options`` for its own flags), plus one entry in ``cli.EVALUATORS`` and an
``eval/eval_<name>.py`` calling ``cli.main("<name>")``.
"""
