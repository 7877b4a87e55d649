import json

from tools import bench


def test_solver_bench_prints_table_and_json(tmp_path, capsys):
    path = tmp_path / "solver.json"
    code = bench.main(["solver", "--shapes", "48x64", "--repeats", "1", "--cpu-only", "--json", str(path)])
    assert code == 0
    table = capsys.readouterr().out
    assert "| cpu | 48x64 |" in table and "GPTAQ/GPTQ" in table
    data = json.loads(path.read_text())
    assert {r["method"] for r in data["results"]} == {"rtn", "gptq", "gptaq", "reference-gptq"}
    assert all(r["median_s"] > 0 for r in data["results"])


def test_bad_shape_is_one_line_exit_2(capsys):
    from quantize.cli import run_cli

    assert run_cli(bench.main, ["solver", "--shapes", "4096by4096"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: shape '4096by4096' is not OUTxIN (e.g. 4096x4096)"
