import importlib.util
import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("timm")

from tools import bench  # noqa: E402

# The whole module finishes in well under 60 s on 2 CPU cores (tiny model, 1 epoch, 128 images).
pytestmark = [pytest.mark.timeout(60)] if importlib.util.find_spec("pytest_timeout") else []

TINY = ["vit", "--epochs", "1", "--train-limit", "128", "--test-size", "100", "--calib", "16",
        "--img-size", "8", "--patch-size", "4", "--embed-dim", "32", "--depth", "1", "--heads", "2",
        "--schemes", "W4A16", "W4A4", "--threads", "1"]


def test_vit_bench_prints_table_writes_json_and_caches(tmp_path, capsys):
    cache, path = tmp_path / "cache", tmp_path / "vit.json"
    assert bench.main(TINY + ["--cache", str(cache), "--json", str(path)]) == 0
    table = capsys.readouterr().out
    lines = [l for l in table.splitlines() if l.startswith("|")]
    assert lines[0] == ("| scheme | FP top-1 | RTN top-1 | GPTQ top-1 | GPTAQ top-1 | RTN KL | GPTQ KL | GPTAQ KL"
                        " | RTN s | GPTQ s | GPTAQ s |")
    assert [l.split(" | ")[0] for l in lines[2:]] == ["| W4A16", "| W4A4"]
    assert all(len(l.split("|")) == 13 for l in lines)

    data = json.loads(path.read_text())
    assert data["dataset"] == {"name": "sklearn load_digits", "train": 128, "test": 100, "calibration": 16,
                               "image": [3, 8, 8]}
    assert data["train"]["cached"] is False and data["train"]["seconds"] > 0
    assert 0.0 <= data["fp_top1"] <= 1.0
    assert [(r["scheme"], r["method"]) for r in data["results"]] == [
        (s, m) for s in ("W4A16", "W4A4") for m in ("rtn", "gptq", "gptaq")]
    assert all(0.0 <= r["top1"] <= 1.0 and r["kl_fp"] >= 0.0 and r["seconds"] > 0 for r in data["results"])
    assert {r["a_bits"] for r in data["results"]} == {16, 4}
    assert len(list(cache.glob("*.safetensors"))) == 1

    # A rerun loads the cached weights instead of training: same FP accuracy.
    assert bench.main(TINY + ["--cache", str(cache), "--json", str(path), "--methods", "rtn", "--schemes", "W4A16"]) == 0
    again = json.loads(path.read_text())
    assert again["train"]["cached"] is True and again["fp_top1"] == data["fp_top1"]
    assert [(r["scheme"], r["method"]) for r in again["results"]] == [("W4A16", "rtn")]
    assert again["results"][0]["top1_ort"] is None


def test_vit_bench_onnx_scores_the_export_in_ort(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "vit.json"
    args = TINY + ["--no-cache", "--json", str(path), "--methods", "gptaq", "--onnx"]
    assert bench.main(args) == 0
    assert "| W4A4 | GPTAQ |" in capsys.readouterr().out
    rows = json.loads(path.read_text())["results"]
    assert [r["scheme"] for r in rows] == ["W4A16", "W4A4"]
    # W4A16 is exact to float rounding; W4A4's rounding of activations may flip a borderline image.
    assert rows[0]["ort_agreement"] == 1.0 and rows[0]["top1_ort"] == rows[0]["top1"]
    assert rows[1]["ort_agreement"] >= 0.97


def test_bad_scheme_is_one_line_exit_2(capsys):
    from quantize.cli import run_cli

    assert run_cli(bench.main, ["vit", "--schemes", "W4"]) == 2
    assert capsys.readouterr().err.strip() == "error: scheme 'W4' is not W<2..8>A<4|8|16> (e.g. W4A16, W4A4)"
