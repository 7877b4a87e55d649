"""tools/validate.py: pass on a faithful candidate, exit 1 on a damaged one, exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantize.cli import run_cli
from tools import validate

ROOT = Path(__file__).resolve().parents[2]
WINDOWS = ["--seqlen", "32", "--limit", "6", "--batch-size", "2"]
REPORT_KEYS = {"schema_version", "tool", "task", "verdict", "exit_code", "checks", "thresholds", "metrics", "dataset",
               "reference", "candidate", "backend", "config", "versions", "elapsed_s"}
ARTIFACT_KEYS = {"path", "kind", "backend", "task", "fingerprint", "size_bytes", "dtype", "scheme", "details"}


def _run(capsys, *argv):
    code = run_cli(validate.main, [str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_faithful_candidate_passes_and_report_schema(fp_dir, tiny_checkpoint, text_file, tmp_path, capsys):
    report = tmp_path / "report.json"
    code, out, err = _run(capsys, "--reference", fp_dir, "--candidate", tiny_checkpoint(8), "--data", text_file, *WINDOWS,
                          "--max-ppl-increase", "1%", "--min-top1-agreement", "0.9", "--max-kl", "0.01",
                          "--report", report)
    assert code == 0, err
    assert "verdict: PASS (3 gates)" in out and out.count("PASS") == 4
    data = json.loads(report.read_text())
    assert REPORT_KEYS <= data.keys()
    assert data["verdict"] == "pass" and data["exit_code"] == 0 and data["task"] == "lm" and data["backend"] == "torch"
    assert data["thresholds"] == {"max_ppl_increase": 1.0, "min_top1_agreement": 0.9, "max_kl": 0.01}
    assert ARTIFACT_KEYS <= data["reference"].keys() and data["candidate"]["kind"] == "checkpoint"
    assert data["reference"]["kind"] == "model" and len(data["candidate"]["fingerprint"]) == 64
    assert data["dataset"]["windows"] == 6 and data["dataset"]["seqlen"] == 32
    assert data["dataset"]["scored_tokens"] == 6 * 31 and len(data["dataset"]["fingerprint"]) == 64
    m = data["metrics"]
    assert m["ppl_reference"] > 1 and abs(m["ppl_increase_pct"]) < 1 and 0.9 <= m["top1_agreement"] <= 1
    assert 0 <= m["kl"] < 0.01
    assert [c["metric"] for c in data["checks"]] == ["perplexity", "top-1 agreement", "mean KL (nats)"]
    assert all(c["passed"] is True for c in data["checks"])


def test_damaged_candidate_fails_with_exit_1(fp_dir, tiny_checkpoint, text_file, tmp_path, capsys):
    report = tmp_path / "report.json"
    code, out, _ = _run(capsys, "--reference", fp_dir, "--candidate", tiny_checkpoint(2), "--data", text_file, *WINDOWS,
                        "--min-top1-agreement", "0.99", "--max-kl", "0.001", "--report", report)
    assert code == 1
    assert "verdict: FAIL (2 of 2 gates failed: top-1 agreement, mean KL (nats))" in out
    data = json.loads(report.read_text())
    assert data["verdict"] == "fail" and data["exit_code"] == 1
    assert data["metrics"]["kl"] > 0.001 and data["metrics"]["top1_agreement"] < 0.99


def test_onnx_candidate_matches_torch_and_is_deterministic(fp_dir, tiny_checkpoint, tiny_onnx, text_file):
    base = dict(reference=str(fp_dir), data=str(text_file), seqlen=32, limit=3, batch_size=2)
    torch_run = validate.validate(validate.ValidateConfig(candidate=str(tiny_checkpoint(8)), **base)).data
    onnx_cfg = validate.ValidateConfig(candidate=str(tiny_onnx(8)), accuracy_level=1, **base)
    first, second = validate.validate(onnx_cfg).data, validate.validate(onnx_cfg).data
    assert first["candidate"]["backend"] == "ort" and first["candidate"]["kind"] == "export"
    assert first["metrics"] == second["metrics"] and first["dataset"] == second["dataset"]
    # ORT at accuracy level 1 computes what PyTorch's fake-quant computes (to float rounding).
    assert first["metrics"]["ppl_candidate"] == pytest.approx(torch_run["metrics"]["ppl_candidate"], rel=1e-4)
    assert first["dataset"]["fingerprint"] == torch_run["dataset"]["fingerprint"]


def test_perplexity_equals_quantize_evaluate(fp_dir, tmp_path):
    """The gate's perplexity is quantize.evaluate's GPTQ-protocol perplexity on the same windows."""
    from quantize.data import eval_tokens
    from quantize.evaluate import perplexity
    from quantize.loading import load_model
    from tiny_models import tiny_text

    small = tmp_path / "small.txt"
    small.write_text(tiny_text(200))
    loaded = load_model(str(fp_dir))
    expected = perplexity(loaded.model, eval_tokens(str(small), loaded.tokenizer), 32)
    got = validate.validate(validate.ValidateConfig(str(fp_dir), str(fp_dir), data=str(small), seqlen=32)).data
    assert got["metrics"]["ppl_reference"] == pytest.approx(expected, rel=1e-5)
    assert got["metrics"]["ppl_increase_pct"] == 0.0 and got["metrics"]["top1_agreement"] == 1.0
    assert got["metrics"]["kl"] == pytest.approx(0.0, abs=1e-6)


def _other_tokenizer_checkpoint(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from quantize import QuantConfig, quantize_model, save_quantized
    from tiny_models import tiny_llama, token_batch

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["alpha beta gamma delta"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    other = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    model = quantize_model(tiny_llama(), token_batch(), QuantConfig(method="rtn", w_bits=8, group_size=32), progress=False)
    return save_quantized(model, tmp_path / "other_tok", tokenizer=other)


def test_bad_inputs_exit_2_with_one_line(fp_dir, tiny_checkpoint, text_file, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    empty = tmp_path / "empty.txt"
    empty.write_text("   ")
    bad_gate = tmp_path / "gate.yaml"
    bad_gate.write_text("max_ppl_incrase: 3%\n")
    good = ["--reference", fp_dir, "--candidate", tiny_checkpoint(8), "--data", text_file, *WINDOWS]
    cases = {
        "does not exist": ["--reference", fp_dir, "--candidate", tmp_path / "missing", "--data", text_file],
        "cannot load ONNX model": ["--reference", fp_dir, "--candidate", corrupt, "--data", text_file],
        "unknown --task 'speech'": [*good, "--task", "speech"],
        "is empty": ["--reference", fp_dir, "--candidate", tiny_checkpoint(8), "--data", empty],
        "unknown threshold 'max_ppl_incrase'": [*good, "--gate", bad_gate],
        "applies to --task image, not lm": [*good, "--max-top1-drop", "1"],
        "is not a number": [*good, "--max-kl", "low"],
        "must be a fraction": [*good, "--min-top1-agreement", "1.5"],
        "tokenizers differ": ["--reference", fp_dir, "--candidate", _other_tokenizer_checkpoint(tmp_path),
                              "--data", text_file, *WINDOWS],
        "fewer than one window": [*good[:6], "--seqlen", "100000"],
        "runs with --backend torch": [*good, "--backend", "ort"],
        "is not a TensorRT engine": ["--reference", fp_dir, "--candidate", corrupt, "--data", text_file,
                                     "--backend", "trt"],
        "limit=0 is invalid": [*good, "--limit", "0"],
    }
    for expected, argv in cases.items():
        code, out, err = _run(capsys, *argv)
        assert code == 2, (expected, out, err)
        assert expected in err and len(err.strip().splitlines()) == 1, (expected, err)
        assert "Traceback" not in err


def test_trt_plan_without_tensorrt_exits_2(fp_dir, tmp_path, capsys):
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the refusal path does not apply")
    build = tmp_path / "trt_build"
    build.mkdir()
    (build / "model.plan").write_bytes(b"plan")
    (build / "build.json").write_text(json.dumps({"backend": "trt", "model_file": "model.plan", "environment": {}}))
    code, _, err = _run(capsys, "--reference", fp_dir, "--candidate", build, "--backend", "trt")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "TensorRT" in err


def test_gate_file_yaml_and_json(fp_dir, tiny_checkpoint, text_file, tmp_path, capsys):
    pytest.importorskip("yaml")
    gate = tmp_path / "gate.yaml"
    gate.write_text("max_kl: 0.5\nmin_top1_agreement: 50%\n")
    args = ["--reference", fp_dir, "--candidate", tiny_checkpoint(8), "--data", text_file, *WINDOWS, "--gate", gate]
    code, out, _ = _run(capsys, *args, "--max-kl", "0.0000001")  # the flag overrides the file
    assert code == 1 and ">= 0.5" in out and "<= 1e-07" in out
    gate_json = tmp_path / "gate.json"
    gate_json.write_text(json.dumps({"max_ppl_increase": "5%"}))
    code, out, _ = _run(capsys, *args[:-1], gate_json)
    assert code == 0 and "<= 5%" in out


def test_image_task(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    from transformers import ViTImageProcessor

    from quantize import QuantConfig, quantize_model, save_quantized
    from tiny_models import tiny_hf_vit

    model = tiny_hf_vit()
    fp = tmp_path / "vit_fp"
    model.save_pretrained(fp)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(fp)
    rng = np.random.default_rng(0)
    for label in range(3):
        (tmp_path / "images" / f"class{label}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / f"class{label}" / f"{i}.png")
    calib = torch_images(8)
    cand = save_quantized(quantize_model(tiny_hf_vit(), calib, QuantConfig(method="rtn", w_bits=8, group_size=32),
                                         progress=False), tmp_path / "vit_w8")
    report = tmp_path / "r.json"
    code, out, err = _run(capsys, "--reference", fp, "--candidate", cand, "--task", "image", "--data", tmp_path / "images",
                          "--min-top1-agreement", "0.9", "--max-top1-drop", "10", "--report", report)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["dataset"]["images"] == 12 and data["dataset"]["classes"] == 3
    assert [c["metric"] for c in data["checks"]] == ["top-1", "top-1 agreement", "mean KL (nats)"]
    assert 0 <= data["metrics"]["top1_reference"] <= 1 and data["metrics"]["top1_agreement"] >= 0.9
    code, _, err = _run(capsys, "--reference", fp, "--candidate", cand, "--task", "image")
    assert code == 2 and "--task image needs --data" in err


def torch_images(n):
    import torch

    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_runs_as_a_script():
    out = subprocess.run([sys.executable, "tools/validate.py", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--max-ppl-increase" in out.stdout and "Exit codes: 0 pass, 1" in out.stdout
