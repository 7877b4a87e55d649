"""python -m tools bench (latency): tiny exports, few iterations; json / csv / png, --compare, refusals."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantize.cli import run_cli
from tools import bench, bench_report
from tools.latency_bench import LatencyConfig, Shape, make_feeds, open_model, step_runner, summarize, turn_order

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[2]
FAST = ["--prompt-lengths", "8,16", "--cache-lengths", "8", "--batch-sizes", "1,2", "--warmup", "1", "--iterations", "3",
        "--threads", "1"]


def test_summarize_percentiles():
    stats = summarize([0.001 * i for i in range(1, 101)])
    assert stats["median_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["min_ms"] == pytest.approx(1.0)


def test_turn_order_rotates_blocks_until_every_artifact_has_its_runs():
    assert turn_order(["a", "b", "c"], 2, 1) == [("a", 1), ("b", 1), ("c", 1), ("b", 1), ("c", 1), ("a", 1)]
    turns = turn_order(["a", "b"], 12, 5)  # spinning: blocks of 5, the last one short
    assert turns == [("a", 5), ("b", 5), ("b", 5), ("a", 5), ("a", 2), ("b", 2)]
    for label in "ab":
        assert sum(n for lab, n in turns if lab == label) == 12


def test_feeds_follow_the_kv_signature(tiny_onnx):
    config = LatencyConfig(artifacts=(str(tiny_onnx(8)),))
    model = open_model("w8", str(tiny_onnx(8)), config)
    decode = make_feeds(model, Shape("decode", 2, 5), 0)
    assert decode["input_ids"].shape == (2, 1) and decode["attention_mask"].shape == (2, 6)
    assert decode["position_ids"].tolist() == [[5], [5]]
    assert decode["past_key_values.0.key"].shape == (2, 2, 5, 16)  # tiny Llama: 2 KV heads of 16
    prefill = make_feeds(model, Shape("prefill", 1, 7), 0)
    assert prefill["past_key_values.1.value"].shape == (1, 2, 0, 16) and prefill["input_ids"].shape == (1, 7)
    np.testing.assert_array_equal(make_feeds(model, Shape("prefill", 1, 7), 0)["input_ids"], prefill["input_ids"])
    out = model.session.run(decode)
    assert out["logits"].shape == (2, 1, 128) and out["present.0.key"].shape == (2, 2, 6, 16)
    with pytest.raises(Exception, match="max_seq_len 256"):
        make_feeds(model, Shape("decode", 1, 256), 0)


def test_in_place_decode_step_computes_the_copied_step(tiny_onnx):
    """The timed in-place decode step reads the same C past tokens as the fed-array step."""
    model = open_model("w8", str(tiny_onnx(8)), LatencyConfig(artifacts=(str(tiny_onnx(8)),), threads=1))
    assert model.session.supports_in_place_cache
    shape = Shape("decode", 2, 5)
    copied = model.session.run(make_feeds(model, shape, 3))["logits"]
    np.testing.assert_allclose(step_runner(model, shape, 3)()["logits"], copied, rtol=1e-5, atol=1e-6)


def test_bench_writes_json_csv_png_and_compare_merges(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "bench"
    code = run_cli(bench.main, [f"w8={tiny_onnx(8)}", "--baseline", f"fp32={tiny_onnx('fp')}", *FAST, "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "on CPU the FP baseline is FP32" in printed.out and "| w8 | decode b2 C8 |" in printed.out
    data = json.loads((out / "bench.json").read_text())
    assert data["tool"] == "bench" and data["baseline"] == "fp32" and data["model_kind"] == "llm"
    assert data["device"].startswith("CPU: ") and data["environment"]["versions"]["onnxruntime"]
    shapes = {(r["phase"], r["batch"], r["length"]) for r in data["results"]}
    assert shapes == {("prefill", b, n) for b in (1, 2) for n in (8, 16)} | {("decode", b, 8) for b in (1, 2)}
    assert len(data["results"]) == 2 * 6 and all(r["iterations"] == 3 for r in data["results"])
    for r in data["results"]:
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["speedup"] > 0 and r["throughput"] > 0
        if r["artifact"] == "fp32":
            assert r["speedup"] == 1.0
    arts = {a["label"]: a for a in data["artifacts"]}
    assert arts["fp32"]["baseline"] is True and arts["w8"]["baseline"] is False
    assert arts["w8"]["size_bytes"] < arts["fp32"]["size_bytes"] and arts["w8"]["peak_host_mb"] > 0
    assert arts["w8"]["ops"]["DequantizeLinear"] > 0 and arts["w8"]["scheme"]
    assert arts["w8"]["kv_cache"] == "in_place"  # fused export: decode timed on a preallocated cache
    with open(out / "bench.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == bench_report.CSV_COLUMNS and len(rows) == 12
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    second = tmp_path / "second.json"
    other = dict(data, device="GPU: Test Board, TensorRT 10")
    second.write_text(json.dumps(other))
    merged_dir = tmp_path / "cmp"
    code = run_cli(bench.main, ["--compare", str(out / "bench.json"), str(second), "--out", str(merged_dir)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| GPU: Test Board, TensorRT 10 | w8 | prefill b1 L8 |" in printed
    merged = json.loads((merged_dir / "bench.json").read_text())
    assert len(merged["results"]) == 24 and {s["device"] for s in merged["sources"]} == {data["device"], other["device"]}
    with open(merged_dir / "bench.csv") as fh:
        assert {row["source"] for row in csv.DictReader(fh)} == {data["device"], other["device"]}
    assert (merged_dir / "bench.png").stat().st_size > 1000


def test_bench_refusals_exit_2(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    corrupt = tmp_path / "bad.json"
    corrupt.write_text("{}")
    cases = {
        "bench times deployable artifacts": [str(tiny_checkpoint(8))],
        "does not exist": [str(tmp_path / "missing.onnx")],
        "is not a bench.json": ["--compare", str(corrupt), str(corrupt)],
        "at least two bench.json": ["--compare", str(corrupt)],
        "labels must differ": [f"a={tiny_onnx(8)}", f"a={tiny_onnx('fp')}"],
        "not a list of integers": [str(tiny_onnx(8)), "--prompt-lengths", "x"],
        "is not a TensorRT engine": [str(tiny_onnx(8)), "--backend", "trt"],
    }
    for expected, argv in cases.items():
        code = run_cli(bench.main, argv)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (expected, err)


def _builder_like_onnx(tmp_path, layers=2, heads=2, head_dim=8, vocab=50):
    """A bare .onnx without export.json and without position_ids, its head size symbolic in the inputs
    and stated by genai_config.json (as onnxruntime-genai's model builder writes them)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
    outputs, nodes = [], []
    emb = helper.make_tensor("emb", TensorProto.FLOAT, [vocab, vocab], np.eye(vocab, dtype=np.float32).ravel().tolist())
    nodes.append(helper.make_node("Gather", ["emb", "input_ids"], ["logits"]))
    outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab]))
    for i in range(layers):
        for kind in ("key", "value"):
            name = f"past_key_values.{i}.{kind}"
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", heads, "past", "kv_cache_dim"]))
            nodes.append(helper.make_node("Identity", [name], [f"present.{i}.{kind}"]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         ["batch", heads, "past", "kv_cache_dim"]))
    graph = helper.make_graph(nodes, "builder_like", inputs, outputs, [emb])
    path = tmp_path / "model_int4.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"head_size": head_dim,
                                                                                  "num_key_value_heads": heads}}}))
    return path


def test_validate_artifact_reads_a_builder_like_onnx(tmp_path):
    from tools.artifacts import SessionArtifact

    path = _builder_like_onnx(tmp_path)
    art = SessionArtifact(str(path), "onnx")
    ids = np.array([[1, 2, 3, 4]], dtype=np.int64)
    assert [k[2:] for k in art.kv] == [(2, 8)] * 4
    logits = art.lm_logits(ids)
    assert logits.shape == (1, 4, 50) and (logits.argmax(-1) == ids).all()


def test_plain_onnx_with_model_builder_inputs(tmp_path, tiny_onnx):
    layers, heads, head_dim, vocab = 2, 2, 8, 50
    path = _builder_like_onnx(tmp_path, layers, heads, head_dim, vocab)
    config = LatencyConfig(artifacts=(str(path),), prompt_lengths=(4,), cache_lengths=(6,), warmup=0, iterations=2,
                           memory=False)
    model = open_model("builder", str(path), config)
    assert [k[2:] for k in model.kv] == [(heads, head_dim)] * 4 and model.vocab == vocab
    feeds = make_feeds(model, Shape("decode", 1, 6), 0)
    assert "position_ids" not in feeds and feeds["past_key_values.0.key"].shape == (1, heads, 6, head_dim)
    from tools.latency_bench import run_latency

    report = run_latency(config)
    assert [r["shape"] for r in report["results"]] == ["prefill b1 L4", "decode b1 C6"]
    assert report["artifacts"][0]["kind"] == "onnx" and report["baseline"] is None


def test_existing_subcommands_still_dispatch(capsys):
    assert run_cli(bench.main, ["solver", "--shapes", "bad"]) == 2
    assert "is not OUTxIN" in capsys.readouterr().err


@pytest.mark.parametrize("entry", [["tools/bench.py"], ["-m", "tools", "bench"]])
def test_script_and_module_entry_points(entry):
    out = subprocess.run([sys.executable, *entry, "latency", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--compare" in out.stdout and "--cache-lengths" in out.stdout


def test_peak_memory_is_the_workers_own(tiny_onnx):
    """Linux carries ru_maxrss over fork and exec; the worker must report its own peak, not ours."""
    from tools.latency_bench import peak_memory, peak_rss_mb

    ballast = np.ones(600 * 2**20 // 8)  # raise this process's peak by 600 MB
    parent = peak_rss_mb()
    config = LatencyConfig(artifacts=(str(tiny_onnx(8)),), prompt_lengths=(4,), cache_lengths=(4,))
    child = peak_memory(str(tiny_onnx(8)), config, [Shape("prefill", 1, 4), Shape("decode", 1, 4)])
    del ballast
    assert 0 < child < parent - 300


@pytest.mark.parametrize("flags, spinning", [([], True), (["--spinning"], True), (["--no-spinning"], False)])
def test_bench_spins_by_default_and_times_every_artifact_its_iterations(tiny_onnx, tmp_path, capsys, flags, spinning):
    out = tmp_path / "spin"
    fast = ["--prompt-lengths", "8", "--cache-lengths", "8", "--batch-sizes", "1", "--warmup", "1", "--iterations", "7",
            "--threads", "1"]
    code = run_cli(bench.main, [f"w8={tiny_onnx(8)}", f"w4={tiny_onnx(4)}", *fast, *flags, "--no-memory",
                                "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "bench.json").read_text())["config"]["spinning"] is spinning
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert {(r["artifact"], r["phase"]) for r in rows} == {(a, p) for a in ("w8", "w4") for p in ("prefill", "decode")}
    assert all(int(r["iterations"]) == 7 for r in rows)
