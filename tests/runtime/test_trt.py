"""TensorRT engines of a tiny Llama (FP16 and INT4 weight-only) against ONNX Runtime on the same graph,
and ORT's CUDA provider against its CPU provider.

Marked ``trt`` / ``gpu``: skipped in one place (tests/conftest.py) without TensorRT or a CUDA
device. None of these ran on the machines that wrote them (no GPU, no TensorRT there).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantize.errors import UserError
from runtime import BuildConfig, build_engine, open_session

PROFILE = [("batch", 1, 1, 2), ("sequence", 1, 6, 16), ("past", 0, 6, 15)]


def _prefill(session, batch=2, seq=6, seed=0):
    ids = np.random.default_rng(seed).integers(0, 128, (batch, seq)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64),
             "position_ids": np.tile(np.arange(seq, dtype=np.int64), (batch, 1))}
    for name, spec in session.input_metadata().items():
        if name.startswith("past_key_values."):
            feeds[name] = np.zeros((batch, spec.shape[1], 0, spec.shape[3]), spec.dtype)
    return feeds


def _decode(session, prefill_out, batch=2, past=6):
    feeds = {"input_ids": np.full((batch, 1), 5, np.int64), "attention_mask": np.ones((batch, past + 1), np.int64),
             "position_ids": np.full((batch, 1), past, np.int64)}
    for name in session.input_metadata():
        if name.startswith("past_key_values."):
            feeds[name] = prefill_out[name.replace("past_key_values.", "present.", 1)]
    return feeds


def _relative_error(got, want):
    got, want = got.astype(np.float32), want.astype(np.float32)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.fixture(scope="module")
def trt_builds(tiny_export, tmp_path_factory):
    """``{scheme: (export dir, TensorRT build dir)}`` for an FP16 and an INT4 weight-only fp16 export."""
    root = tmp_path_factory.mktemp("trt")
    made = {}
    for scheme in ("fp", "sym"):
        src = tiny_export(scheme, target="trt", dtype="fp16", max_seq_len=16)
        made[scheme] = (src, build_engine(src, root / scheme, BuildConfig(backend="trt", profile=PROFILE, workspace_gb=1,
                                                                          timing_cache=str(root / "timing.cache"))))
    return made


@pytest.mark.trt
@pytest.mark.parametrize("scheme", ["fp", "sym"])
def test_trt_engine_matches_ort(trt_builds, scheme):
    src, built = trt_builds[scheme]
    with open_session(src, provider="cpu", threads=2, accuracy_level=1) as ort, open_session(built) as engine:
        assert list(engine.input_metadata()) == list(ort.input_metadata())
        want, got = ort.run(_prefill(ort)), engine.run(_prefill(engine))
        assert _relative_error(got["logits"], want["logits"]) < 2e-2
        top1 = (got["logits"].argmax(-1) == want["logits"].argmax(-1)).mean()
        assert top1 >= 0.9, top1
        step_want, step_got = ort.run(_decode(ort, want)), engine.run(_decode(engine, got))
        assert step_got["present.0.key"].shape == step_want["present.0.key"].shape == (2, 2, 7, 16)
        assert _relative_error(step_got["logits"], step_want["logits"]) < 2e-2


@pytest.mark.trt
def test_trt_build_json_records_the_environment(trt_builds, tmp_path):
    from runtime import trt

    src, built = trt_builds["sym"]
    meta = json.loads((built / "build.json").read_text())
    here = trt.probe_environment()
    assert {k: meta["environment"][k] for k in ("tensorrt", "gpu", "compute_capability")} == \
        {k: here[k] for k in ("tensorrt", "gpu", "compute_capability")}
    assert meta["flags"]["strongly_typed"] is True and meta["source"]["graph_dtype"] == "fp16"
    assert meta["profiles"][0]["input_ids"] == {"min": [1, 1], "opt": [1, 6], "max": [2, 16]}
    assert meta["profiles"][0]["past_key_values.0.key"]["max"] == [2, 2, 15, 16]
    assert meta["build_seconds"] > 0 and (built / "model.plan").stat().st_size > 0
    # the second build (sym) found the timing cache the first (fp) wrote
    assert meta["flags"]["timing_cache_loaded"] is True


@pytest.mark.trt
def test_trt_refuses_shapes_outside_the_profile(trt_builds):
    _, built = trt_builds["fp"]
    with open_session(built) as engine, pytest.raises(UserError, match=r"input input_ids has shape \[3, 6\], outside"):
        engine.run(_prefill(engine, batch=3))


@pytest.mark.trt
def test_trt_generate_runs_on_the_engine(trt_builds):
    from runtime import generate

    src, built = trt_builds["sym"]
    with open_session(built) as engine, open_session(src, provider="cpu", accuracy_level=1) as ort:
        ids = np.array([[3, 5, 7, 9]], np.int64)
        got, want = generate(engine, ids, 4), generate(ort, ids, 4)
    assert got.tokens.shape == want.tokens.shape == (1, 8)
    assert got.new_tokens[0, 0] == want.new_tokens[0, 0]


@pytest.mark.trt
def test_trt_typing_of_an_fp32_graph(tiny_export, tmp_path):
    from runtime import trt

    major = trt.tensorrt_major(trt.import_tensorrt().__version__)
    src = tiny_export("fp", max_seq_len=16)  # fp32 ORT-target graph
    config = BuildConfig(backend="trt", profile=PROFILE, workspace_gb=1)
    if major >= 11:
        with pytest.raises(UserError, match="--dtype fp16"):
            build_engine(src, tmp_path / "fp32", config)
        return
    built = build_engine(src, tmp_path / "fp32", config)  # TensorRT 10: weakly typed + FP16 flag
    flags = json.loads((built / "build.json").read_text())["flags"]
    assert flags == {**flags, "strongly_typed": False, "fp16": True}
    with open_session(built) as engine, open_session(src, provider="cpu") as ort:
        want, got = ort.run(_prefill(ort)), engine.run(_prefill(engine))
    assert _relative_error(got["logits"], want["logits"]) < 2e-2


@pytest.mark.gpu
def test_ort_cuda_provider_matches_cpu(tiny_export, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) is not installed")
    src = tiny_export("sym", max_seq_len=16)
    built = build_engine(src, tmp_path / "cuda", BuildConfig(provider="cuda", accuracy_level=1))
    with open_session(built) as gpu, open_session(src, provider="cpu", accuracy_level=1) as cpu:
        assert gpu.active_providers[0] == "CUDAExecutionProvider"
        want, got = cpu.run(_prefill(cpu)), gpu.run(_prefill(gpu))
    assert _relative_error(got["logits"], want["logits"]) < 1e-3
