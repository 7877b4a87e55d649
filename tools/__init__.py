"""tools stage: release tools over the artifacts of quantize / export / runtime.

``python -m tools validate`` (accuracy gate, :mod:`tools.validate`), ``python -m tools bench``
(latency vs an FP baseline, :mod:`tools.latency_bench`; research benchmarks as subcommands) and
``python -m tools pipeline`` (the whole flow, :mod:`tools.pipeline`). Shared pieces:
:mod:`tools.artifacts` (open any artifact), :mod:`tools.metrics` (perplexity, agreement, KL),
:mod:`tools.gates` (thresholds), :mod:`tools.environment` (what a number was measured on).
"""
