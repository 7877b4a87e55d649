import json
import math

from quantize.cli import run_cli
from tiny_models import save_tiny_llama
from tools import bench
from tools.quality_bench import gap_closed, parse_scheme


def test_parse_scheme_and_gap():
    assert parse_scheme("w4g128") == (4, 128) and parse_scheme("W3") == (3, -1)
    assert gap_closed(10.0, 14.0, 12.0) == 0.5 and math.isnan(gap_closed(10.0, 9.0, 9.5))


def test_bad_scheme_exit_2(capsys):
    assert run_cli(bench.main, ["quality", "--schemes", "int4"]) == 2
    assert "scheme 'int4' is not like w4g128" in capsys.readouterr().err


def test_quality_bench_runs_every_method_on_a_tiny_model(tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "quality.json"
    code = bench.main(["quality", "--model", str(model), "--schemes", "w4g32", "--nsamples", "4", "--seqlen", "16",
                       "--eval-seqlen", "32", "--eval-windows", "2", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "FP perplexity" in table and "| W4 g32 |" in table
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["fp", "rtn", "gptq", "gptaq"]
    assert all(r["ppl"] > 1 for r in results)
