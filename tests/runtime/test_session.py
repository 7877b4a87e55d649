"""OrtSession and the Session protocol: loading errors, feed validation, CLI exit codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quantize.errors import UserError
from runtime import OrtSession


def _tiny_onnx(path):
    """y = x @ w + 1 with x: float32[batch, 4]."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "one"], ["y"])],
                              "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, one])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return path


def test_run_and_metadata(tmp_path):
    path = _tiny_onnx(tmp_path / "model.onnx")
    with OrtSession(tmp_path, providers="cpu", threads=1) as session:  # a directory resolves to model.onnx
        spec = session.input_metadata()["x"]
        assert spec.dtype == np.float32 and spec.shape == ("batch", 4)
        assert list(session.output_metadata()) == ["y"]
        x = np.ones((2, 4), np.float32)
        np.testing.assert_allclose(session.run({"x": x})["y"], x @ np.arange(12, dtype=np.float32).reshape(4, 3) + 1)
        assert session.active_providers == ["CPUExecutionProvider"]
    assert path.exists()


@pytest.mark.parametrize("feeds,message", [
    ({}, "missing input"),
    ({"x": np.ones((2, 4), np.float32), "z": np.ones(1)}, "unknown input"),
    ({"x": np.ones((2, 4), np.float64)}, "dtype float64, expected float32"),
    ({"x": np.ones((2, 4, 1), np.float32)}, "expected rank 2"),
    ({"x": np.ones((2, 5), np.float32)}, "size 5 on axis 1, expected 4"),
    ({"x": [[1.0] * 4]}, "numpy array"),
])
def test_feeds_are_validated(tmp_path, feeds, message):
    _tiny_onnx(tmp_path / "model.onnx")
    with OrtSession(tmp_path / "model.onnx", threads=1) as session, pytest.raises(UserError, match=message):
        session.run(feeds)


def test_truncated_and_missing_models_give_one_line_errors(tmp_path):
    good = _tiny_onnx(tmp_path / "good.onnx").read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="cannot load ONNX model") as info:
        OrtSession(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        OrtSession(tmp_path / "nope.onnx")
    with pytest.raises(UserError, match="accuracy_level"):
        OrtSession(tmp_path / "good.onnx", accuracy_level=7)
    with pytest.raises(UserError, match="not available"):
        OrtSession(tmp_path / "good.onnx", providers=["NoSuchExecutionProvider"])


def test_cli_on_truncated_model_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07\x12\x05trunc")
    proc = subprocess.run([sys.executable, "-m", "runtime", "generate", str(tmp_path), "--ids", "1 2 3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load ONNX model"), proc.stderr


def test_cli_errors_in_process(tmp_path, capsys):
    from quantize.cli import run_cli
    from runtime.__main__ import main

    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x05trunc")
    for argv, needle in ((["info", str(tmp_path)], "cannot load ONNX model"),
                         (["info", str(tmp_path / "missing")], "does not exist"),
                         (["generate", str(tmp_path), "--ids", "a b"], "must be integers")):
        assert run_cli(main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


def test_cli_info(tmp_path, capsys):
    from runtime.__main__ import main

    _tiny_onnx(tmp_path / "model.onnx")
    assert main(["info", str(tmp_path), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "x: float32[batch, 4]" in out and "y: float32[batch, 3]" in out
