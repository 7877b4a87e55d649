"""Release tools on real TensorRT plans (``trt`` marker: skipped without TensorRT and a CUDA GPU).

Written against the same runtime API the runtime's own TensorRT tests use; no GPU was
available to the session that wrote it, so it has not run yet.
"""

from __future__ import annotations

import json

import pytest

from quantize.cli import run_cli

pytestmark = pytest.mark.trt


def test_validate_and_bench_on_tensorrt_plans(fp_dir, tiny_checkpoint, text_file, tmp_path, capsys):
    from export import ExportConfig, export_onnx
    from runtime import BuildConfig, build_engine
    from tools import bench, validate

    cfg = ExportConfig(target="trt", dtype="fp16", max_seq_len=64)
    fp_plan = build_engine(export_onnx(fp_dir, tmp_path / "fp16", cfg), tmp_path / "fp16_plan", BuildConfig(backend="trt"))
    w4_plan = build_engine(export_onnx(tiny_checkpoint(4), tmp_path / "w4", cfg), tmp_path / "w4_plan",
                           BuildConfig(backend="trt"))
    report = tmp_path / "report.json"
    code = run_cli(validate.main, ["--reference", str(fp_dir), "--candidate", str(w4_plan), "--backend", "trt",
                                   "--data", str(text_file), "--seqlen", "32", "--limit", "3", "--batch-size", "1",
                                   "--max-kl", "0.5", "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["candidate"]["backend"] == "trt" and data["candidate"]["kind"] == "build"

    out = tmp_path / "bench"
    code = run_cli(bench.main, [f"w4={w4_plan}", "--baseline", f"fp16={fp_plan}", "--prompt-lengths", "8",
                                "--cache-lengths", "8", "--warmup", "1", "--iterations", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "bench.json").read_text())
    assert result["device"].startswith("GPU: ") and result["environment"]["tensorrt"]
    assert result["baseline_note"] == "baseline fp16 is FP16"
