import importlib.util
import json
import math
from pathlib import Path

import pytest

from quantize.cli import run_cli
from tiny_models import save_tiny_llama
from tools import bench
from tools.quality_bench import QualityCase, gap_closed, grid_cases, parse_case, parse_scheme


def test_parse_scheme_case_grid_and_gap():
    assert parse_scheme("w4g128") == (4, 128) and parse_scheme("W3") == (3, -1)
    assert gap_closed(10.0, 14.0, 12.0) == 0.5 and math.isnan(gap_closed(10.0, 9.0, 9.5))
    case = parse_case("gptaq w4g128 reorder=group mse_clip=1 head_bits=8")
    assert case == QualityCase("gptaq", 4, 128, {"reorder": "group", "mse_clip": True, "head_bits": 8})
    assert case.without_head() == QualityCase("gptaq", 4, 128, {"reorder": "group", "mse_clip": True})
    assert case.key == "gptaq_w4g128_head_bits-8_mse_clip-True_reorder-group"
    grid = grid_cases(["w4g128"], ["rtn", "gptq"], ["none", "group"], ["off", "on"])
    assert len(grid) == 2 + 4  # RTN ignores the column order
    with pytest.raises(Exception, match="not one of"):
        parse_case("gptq w4g128 colour=blue")


def test_bad_scheme_exit_2(capsys):
    assert run_cli(bench.main, ["quality", "--schemes", "int4"]) == 2
    assert "scheme 'int4' is not like w4g128" in capsys.readouterr().err


def test_quality_bench_runs_a_grid_resumes_and_writes_json_csv_png(tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "quality"
    common = ["quality", "--model", str(model), "--nsamples", "4", "--seqlen", "16", "--eval-seqlen", "32",
              "--eval-windows", "2", "--out", str(out)]
    code = bench.main(common + ["--schemes", "w4g32", "--methods", "fp", "rtn", "gptaq", "--reorders", "none", "group",
                                "--case", "gptq w4g32 reorder=group head_bits=8", "--case", "gptq w4g32 reorder=group",
                                "--decode", "--decode-context", "8", "--decode-steps", "3", "--decode-repeats", "1"])
    assert code == 0
    table = capsys.readouterr().out
    assert "FP perplexity" in table and "| W4 g32 | gptaq | reorder=group |" in table
    report = json.loads((out / "results.json").read_text())
    assert report["meta"]["command"].startswith("python -m tools.bench quality --model ")  # no checkout path
    results = report["results"]
    assert [r["method"] for r in results] == ["fp", "rtn", "gptq", "gptq", "gptaq", "gptaq"]
    assert all(r["ppl"] > 1 for r in results) and all(r["quant_seconds"] > 0 for r in results[1:])
    assert (out / "results.csv").read_text().count("\n") == 7
    decode = json.loads((out / "decode.json").read_text())  # the head case and its float-head twin, in ORT
    assert sorted(decode) == ["gptq_w4g32_head_bits-8_reorder-group", "gptq_w4g32_reorder-group"]
    assert all(d["ms_per_token"] > 0 and d["steps"] == 3 for d in decode.values())
    assert "ORT CPU decode ms/token" in table
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "results.png").stat().st_size > 1000
    stamp = (out / "cases" / "rtn_w4g32.json").stat().st_mtime_ns
    assert bench.main(common + ["--schemes", "w4g32", "--methods", "rtn"]) == 0  # finished cases are kept, not rerun
    assert (out / "cases" / "rtn_w4g32.json").stat().st_mtime_ns == stamp


def test_gptqmodel_worker_gets_absolute_paths_from_a_relative_out(tmp_path, monkeypatch):
    """The worker runs with cwd = its work dir, so a relative --out must not reach it as relative paths."""
    from types import SimpleNamespace

    import torch

    from quantize.errors import UserError
    from tools.quality_bench import run_gptqmodel_case

    fake = tmp_path / "python"  # stands in for the GPTQModel venv's python: reads the spec, then fails
    fake.write_text('#!/bin/sh\ntest -f "$2" && grep -q \'"calib_ids": "/\' "$2" && echo "spec read" >&2; exit 3\n')
    fake.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    data = SimpleNamespace(model_dir=tmp_path, calib=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(UserError, match="failed for gptqmodel-gptq_w4g128 .*: spec read$"):
        run_gptqmodel_case(data, QualityCase("gptqmodel-gptq", 4, 128), str(fake), Path("runs/x"))
