"""open_session on every kind of path; the TensorRT compatibility refusal with a recorded environment."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import runtime.trt as trt
from quantize.errors import UserError
from runtime import BuildConfig, OrtSession, build_engine, open_session
from runtime.build import environment_mismatch
from runtime.load import resolve_artifact
from runtime.trt import TensorRTUnavailable, choose_typing

H100 = {"tensorrt": "10.13.0.35", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "570.86",
        "cuda": "12.8"}
A100 = {**H100, "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}


def _tiny_onnx(path):
    """y = x @ w with x: float32[batch, 4]."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return path


def _fake_trt_build(directory, environment, plan=b"not really a plan"):
    """A build dir as a TensorRT build writes it (a plan and its build.json)."""
    directory.mkdir(parents=True)
    (directory / "model.plan").write_bytes(plan)
    meta = {"backend": "trt", "model_file": "model.plan", "environment": environment,
            "model_sha256": hashlib.sha256(plan).hexdigest(), "source": {"onnx": "/runs/x/model.onnx"}}
    (directory / "build.json").write_text(json.dumps(meta))
    return directory


def test_every_path_kind_opens(tmp_path):
    model = _tiny_onnx(tmp_path / "export" / "model.onnx")
    (tmp_path / "export" / "export.json").write_text("{}")
    built = build_engine(tmp_path / "export", tmp_path / "build", BuildConfig(provider="cpu"))
    x = np.ones((2, 4), np.float32)
    expected = x @ np.arange(12, dtype=np.float32).reshape(4, 3)
    for path, kind in ((model, "onnx"), (tmp_path / "export", "export"), (built, "build"),
                       (built / "model.onnx", "build")):
        artifact = resolve_artifact(path)
        assert (artifact.kind, artifact.backend) == (kind, "ort"), path
        with open_session(path, threads=1) as session:
            assert isinstance(session, OrtSession)
            np.testing.assert_allclose(session.run({"x": x})["y"], expected)
    assert resolve_artifact(built).build["config"]["provider"] == "cpu"


@pytest.mark.parametrize("make,message", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.mkdir(), p)[1], "holds neither model.onnx nor build.json"),
    (lambda p: (p.mkdir(), (p / "model.plan").write_bytes(b"x"), p / "model.plan")[2], "no build.json beside it"),
    (lambda p: (p.mkdir(), (p / "build.json").write_text("{not json"), p)[2], "build.json is corrupt"),
    (lambda p: (p.mkdir(), (p / "build.json").write_text('{"backend": "trt", "model_file": "model.plan"}'), p)[2],
     "model.plan is missing"),
])
def test_bad_paths_give_one_line_errors(tmp_path, make, message):
    path = make(tmp_path / "thing")
    with pytest.raises(UserError, match=message) as info:
        open_session(path)
    assert "\n" not in str(info.value)


def test_backend_must_agree_with_the_artifact(tmp_path):
    model = _tiny_onnx(tmp_path / "m" / "model.onnx")
    with pytest.raises(UserError, match=r"not a TensorRT engine; build one first: python -m runtime build .* --backend trt"):
        open_session(model, backend="trt")
    plan_dir = _fake_trt_build(tmp_path / "trt", H100)
    with pytest.raises(UserError, match=r"is a TensorRT engine; for ONNX Runtime open /runs/x/model.onnx"):
        open_session(plan_dir, backend="ort")
    with pytest.raises(UserError, match="backend 'tensorrt' is invalid"):
        open_session(model, backend="tensorrt")


def test_plan_built_for_another_gpu_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(trt, "probe_environment", lambda: dict(H100))
    build = _fake_trt_build(tmp_path / "trt", A100)
    for path in (build, build / "model.plan"):
        with pytest.raises(UserError, match=r"built for NVIDIA A100-SXM4-80GB \(compute capability 8\.0\) with TensorRT "
                                            r"10\.13\.0\.35, this machine has NVIDIA H100 80GB HBM3 \(compute capability "
                                            r"9\.0\) .*rebuild it here: python -m runtime build /runs/x/model.onnx"):
            open_session(path)


def test_plan_built_with_another_tensorrt_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(trt, "probe_environment", lambda: {**H100, "tensorrt": "11.4.0.106"})
    with pytest.raises(UserError, match=r"with TensorRT 10\.13\.0\.35, this machine has .* TensorRT 11\.4\.0\.106 \(TensorRT differ\)"):
        open_session(_fake_trt_build(tmp_path / "trt", H100))


def test_matching_plan_is_checked_then_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(trt, "probe_environment", lambda: {**H100, "driver": "575.1"})  # driver may differ
    loaded = []
    monkeypatch.setattr(trt, "TrtSession", lambda path, build: loaded.append((path.name, build["backend"])) or "session")
    build = _fake_trt_build(tmp_path / "trt", H100)
    assert open_session(build) == "session" and loaded == [("model.plan", "trt")]
    with pytest.raises(UserError, match="provider 'cpu' does not apply"):
        open_session(build, provider="cpu")
    (build / "model.plan").write_bytes(b"truncated")
    with pytest.raises(UserError, match=r"does not match its build.json \(sha256 differs\)"):
        open_session(build)


def test_environment_mismatch_names_what_differs():
    assert environment_mismatch(H100, {**H100, "driver": "1", "cuda": "13.0"}) is None
    assert environment_mismatch(H100, A100).endswith("(compute capability, GPU differ)")
    assert "(TensorRT differ)" in environment_mismatch(H100, {**H100, "tensorrt": "10.14.1"})


def test_without_tensorrt_or_gpu_one_line_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(trt, "tensorrt_installed", lambda: False)
    with pytest.raises(TensorRTUnavailable, match=r'not installed here .*pip install -e "\.\[trt\]"'):
        open_session(_fake_trt_build(tmp_path / "trt", H100))
    monkeypatch.setattr(trt, "import_tensorrt", lambda: object())
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(TensorRTUnavailable, match="needs a CUDA GPU and there is none here"):
        trt.probe_environment()


def test_typing_rules_per_tensorrt_version():
    assert choose_typing(BuildConfig(backend="trt"), "fp16", 10) == (True, False)
    assert choose_typing(BuildConfig(backend="trt"), "fp32", 10) == (False, True)
    assert choose_typing(BuildConfig(backend="trt", fp16=False), "fp32", 10) == (False, False)
    assert choose_typing(BuildConfig(backend="trt", strongly_typed=True), "fp32", 10) == (True, False)
    assert choose_typing(BuildConfig(backend="trt"), "fp16", 11) == (True, False)
    with pytest.raises(UserError, match=r"TensorRT 11 builds strongly typed networks only.*--dtype fp16"):
        choose_typing(BuildConfig(backend="trt"), "fp32", 11)
    with pytest.raises(UserError, match="strongly_typed=False is impossible on TensorRT 11"):
        choose_typing(BuildConfig(backend="trt", strongly_typed=False), "fp16", 11)


def test_cli_trt_without_tensorrt_exits_2_with_one_line(tmp_path):
    if trt.tensorrt_installed():
        pytest.skip("TensorRT is installed here")
    src = _tiny_onnx(tmp_path / "m" / "model.onnx")
    proc = subprocess.run([sys.executable, "-m", "runtime", "build", str(src), "--backend", "trt", "--out",
                           str(tmp_path / "out"), "--profile", "batch=1:1:2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[trt]"' in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_import_runtime_is_lean():
    code = ("import sys, runtime, runtime.build, runtime.load, runtime.trt, runtime.profiles\n"
            "heavy = [m for m in ('tensorrt', 'onnxruntime', 'onnx', 'polygraphy') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint('lean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "lean", out.stderr
