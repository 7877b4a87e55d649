"""python -m tools pipeline: end to end on a tiny model; a rerun skips every finished stage."""

from __future__ import annotations

import json

import pytest

from quantize.cli import run_cli
from tools import pipeline

pytest.importorskip("matplotlib")


def _argv(fp_dir, text_file, out, *extra):
    return [str(fp_dir), "--out", str(out), "--group-size", "32", "--calib", str(text_file), "--nsamples", "4",
            "--seqlen", "16", "--eval-data", str(text_file), "--eval-seqlen", "32", "--eval-limit", "4",
            "--max-seq-len", "64", "--prompt-lengths", "8", "--cache-lengths", "8", "--warmup", "1",
            "--iterations", "2", "--no-memory", "--threads", "1", *extra]


def _statuses(text: str) -> dict[str, str]:
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    return {r[1].strip(): r[2].strip() for r in rows if len(r) > 4 and r[2].strip() in ("ran", "skipped")}


def test_pipeline_end_to_end_then_rerun_skips(fp_dir, text_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(pipeline.main, _argv(fp_dir, text_file, out, "--max-kl", "1.0"))
    first = capsys.readouterr()
    assert code == 0, first.err
    stages = ["quantize", "export-fp", "export", "build-fp", "build", "validate", "bench"]
    assert _statuses(first.out) == {s: "ran" for s in stages}
    assert "perplexity FP" in first.out and "speedup" in first.out and "verdict PASS" in first.out
    for path in ("quantized/quant_config.json", "onnx/model.onnx", "onnx-fp/export.json", "build/build.json",
                 "build-fp/model.onnx", "validate/report.json", "bench/bench.json", "bench/bench.csv",
                 "bench/bench.png", "pipeline.json"):
        assert (out / path).is_file(), path
    build = json.loads((out / "build" / "build.json").read_text())
    assert build["optimized_ops"].get("MatMulNBits", 0) > 0  # the W4 weights fused for ORT's INT4 kernel
    report = json.loads((out / "validate" / "report.json").read_text())
    assert report["verdict"] == "pass" and report["thresholds"] == {"max_kl": 1.0}
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert {a["label"] for a in bench["artifacts"]} == {"fp32", "w4a16"} and bench["baseline"] == "fp32"

    code = run_cli(pipeline.main, _argv(fp_dir, text_file, out, "--max-kl", "1.0"))
    again = capsys.readouterr()
    assert code == 0 and _statuses(again.out) == {s: "skipped" for s in stages}

    # A tighter gate reruns only validate (and fails it: exit 1); bench keeps its result.
    code = run_cli(pipeline.main, _argv(fp_dir, text_file, out, "--max-kl", "0"))
    third = capsys.readouterr()
    assert code == 1 and "verdict FAIL" in third.out
    assert _statuses(third.out) == {**{s: "skipped" for s in stages}, "validate": "ran"}

    # A changed output is noticed: the edited build is redone, and so is everything reading it.
    (out / "build" / "build.json").write_text((out / "build" / "build.json").read_text() + " ")
    code = run_cli(pipeline.main, _argv(fp_dir, text_file, out, "--max-kl", "1.0"))
    fourth = capsys.readouterr()
    assert code == 0
    assert _statuses(fourth.out) == {"quantize": "skipped", "export-fp": "skipped", "export": "skipped",
                                     "build-fp": "skipped", "build": "ran", "validate": "ran", "bench": "ran"}


def test_pipeline_config_and_refusals(fp_dir, capsys):
    assert run_cli(pipeline.main, ["--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"] is None and cfg["scheme"] == "w4a16" and cfg["method"] == "gptaq" and cfg["backend"] == "ort"
    assert cfg["group_size"] == 128 and cfg["out"] == "runs/smollm2-135m-w4a16-gptaq"

    w4a4 = pipeline.PipelineConfig(scheme="w4a4").quant_config()
    assert (w4a4.rotate, w4a4.a_bits, w4a4.sym, w4a4.mse_clip, w4a4.group_size) == (True, 4, False, True, -1)
    assert pipeline.PipelineConfig(scheme="fp16").quant_config() is None

    for argv, expected in ((["--scheme", "w4a4", "--backend", "trt"], "TensorRT has no INT4 activations"),
                           (["--scheme", "int4"], "invalid choice"),
                           (["--group-size", "100"], "group_size=100 is invalid"),
                           (["--max-top1-drop", "1"], "unrecognized arguments")):
        assert run_cli(pipeline.main, [*argv, "--print-config"]) == 2
        assert expected in capsys.readouterr().err


def test_trt_backend_without_tensorrt_exits_2_in_one_line(fp_dir, text_file, tmp_path, capsys):
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the refusal path does not apply")
    code = run_cli(pipeline.main, _argv(fp_dir, text_file, tmp_path / "trt", "--backend", "trt", "--scheme", "fp16"))
    err = capsys.readouterr().err
    assert code == 2 and "TensorRT" in err and len(err.strip().splitlines()) == 1


def test_python_m_tools_dispatches(capsys):
    from tools.__main__ import main

    assert run_cli(main, ["pipeline", "--print-config", "--scheme", "w3a16"]) == 0
    assert json.loads(capsys.readouterr().out)["scheme"] == "w3a16"
    assert run_cli(main, ["deploy"]) == 2
    assert "unknown command 'deploy'; expected one of validate, bench, pipeline" in capsys.readouterr().err
