"""Quantize a model with GPTQModel on given calibration token ids (run under GPTQModel's own venv).

Usage: ``PY tools/gptqmodel_worker.py SPEC.json`` where SPEC holds ``model_dir``, ``calib_ids``
(a ``torch.save``'d LongTensor ``[n, seqlen]``), ``out``, ``method`` (``gptq`` | ``gptaq``),
``bits``, ``group_size``, ``sym``, ``damp`` (``null`` = GPTQModel's default), ``act_group_aware``
and ``alpha``. Writes the GPTQModel checkpoint to ``out`` and ``out/worker_report.json``
(quantization seconds, peak host memory, version, the resolved QuantizeConfig).

This file imports only torch, gptqmodel and the standard library: it runs in a separate venv
(GPTQModel is an optional comparison, never a dependency of this package), called by
``python -m tools.bench quality --gptqmodel-python PY``. Set ``GPTQMODEL_CPU_WORKERS`` (the
caller sets 2) on a small CPU.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main(spec_path: str) -> int:
    import torch
    import gptqmodel
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.quantization.config import GPTAQConfig

    spec = json.loads(Path(spec_path).read_text())
    ids = torch.load(spec["calib_ids"])
    calibration = [{"input_ids": row.tolist(), "attention_mask": [1] * row.numel()} for row in ids]
    kwargs = dict(bits=spec["bits"], group_size=spec["group_size"], sym=spec["sym"], desc_act=False,
                  act_group_aware=spec["act_group_aware"])
    if spec.get("damp") is not None:
        kwargs["damp_percent"] = spec["damp"]
    if spec["method"] == "gptaq":
        kwargs["gptaq"] = GPTAQConfig(alpha=spec["alpha"], device="cpu")
    qcfg = QuantizeConfig(**kwargs)
    model = GPTQModel.load(spec["model_dir"], qcfg, device="cpu", dtype=torch.float32)
    start = time.perf_counter()
    model.quantize(calibration, batch_size=spec.get("batch_size", 8))
    seconds = time.perf_counter() - start
    model.save(spec["out"])
    report = {"quant_seconds": seconds, "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "version": getattr(gptqmodel, "__version__", "unknown"), "torch": torch.__version__,
              "quantize_config": {k: _plain(getattr(qcfg, k, None)) for k in
                                  ("bits", "group_size", "sym", "desc_act", "act_group_aware", "damp_percent", "mse",
                                   "static_groups", "gptaq")}}
    (Path(spec["out"]) / "worker_report.json").write_text(json.dumps(report, indent=2))
    return 0


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
