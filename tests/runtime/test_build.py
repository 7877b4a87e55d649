"""BuildConfig, the ORT build end to end, capability refusals before a TensorRT build, the build CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from quantize.cli import run_cli
from quantize.errors import ConfigError, UserError
from runtime import BuildConfig, build_engine, open_session
from runtime.__main__ import main
from runtime.build import sha256_file
from runtime.trt import TensorRTUnavailable


def _ops(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _feeds(session, seq=5, batch=2):
    ids = np.random.default_rng(0).integers(0, 128, (batch, seq)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64),
             "position_ids": np.tile(np.arange(seq, dtype=np.int64), (batch, 1))}
    for name, spec in session.input_metadata().items():
        if name.startswith("past_key_values."):
            feeds[name] = np.zeros((batch, spec.shape[1], 0, spec.shape[3]), spec.dtype)
    return feeds


# ---------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------


def test_build_config_round_trips_and_normalises_profiles():
    config = BuildConfig(backend="trt", profile=[["past", 0, 8, 63], ("batch", 1, 1, 2)], workspace_gb=2,
                         timing_cache="cache.bin")
    assert config.profile == (("past_sequence", 0, 8, 63), ("batch", 1, 1, 2))
    again = BuildConfig.from_json(config.to_json())
    assert again == config and hash(again) == hash(config)


@pytest.mark.parametrize("fields,field", [
    ({"backend": "tensorrt"}, "backend"),
    ({"backend": "trt", "provider": "cpu"}, "provider"),
    ({"provider": "rocm"}, "provider"),
    ({"profile": [("batch", 2, 1, 4)]}, "profile"),
    ({"profile": [("batch", 1, 1, 4), ("batch", 1, 1, 2)]}, "profile"),
    ({"profile": [("batch", 1, 1)]}, "profile"),
    ({"workspace_gb": 0}, "workspace_gb"),
    ({"workspace_gb": True}, "workspace_gb"),
    ({"timing_cache": ""}, "timing_cache"),
    ({"strongly_typed": 1}, "strongly_typed"),
    ({"optimization_level": 6}, "optimization_level"),
    ({"ort_optimization": "max"}, "ort_optimization"),
    ({"accuracy_level": 5}, "accuracy_level"),
])
def test_build_config_rejects(fields, field):
    with pytest.raises(ConfigError, match=rf"BuildConfig\.{field}="):
        BuildConfig(**fields)


def test_unknown_build_json_key_is_refused():
    with pytest.raises(ConfigError, match="fields"):
        BuildConfig.from_dict({"backend": "ort", "precision": "int4"})


# ---------------------------------------------------------------------------------------
# ORT build end to end
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ort_build(tiny_export, tmp_path_factory):
    src = tiny_export("sym")
    out = build_engine(src, tmp_path_factory.mktemp("build") / "ort", BuildConfig(provider="cpu", accuracy_level=1))
    return src, out


def test_ort_build_fuses_int4_into_matmulnbits(ort_build):
    src, out = ort_build
    before, after = _ops(src / "model.onnx"), _ops(out / "model.onnx")
    # The default ORT export is the fused decoder: q|k|v and gate|up share one INT4 block.
    assert before["DequantizeLinear"] == 8 and "MatMulNBits" not in before
    assert after.get("MatMulNBits") == 8 and "DequantizeLinear" not in after
    meta = json.loads((out / "build.json").read_text())
    assert meta["backend"] == "ort" and meta["model_file"] == "model.onnx"
    assert meta["source"]["onnx_sha256"] == sha256_file(src / "model.onnx")
    assert meta["model_sha256"] == sha256_file(out / "model.onnx")
    assert meta["source"]["scheme"] == "W4A16" and meta["source"]["quantized_layers"] == 8  # DQ blocks read back
    assert meta["environment"]["providers"] == ["CPUExecutionProvider"]
    assert meta["optimized_ops"]["MatMulNBits"] == 8
    assert BuildConfig.from_dict(meta["config"]) == BuildConfig(provider="cpu", accuracy_level=1)
    assert meta["dims"]["past_sequence"] == [0, 128, 2047] and meta["profiles"] is None
    assert meta["build_seconds"] > 0
    # export.json and the tokenizer travel along, so generate/validate work on the build dir
    assert (out / "export.json").read_bytes() == (src / "export.json").read_bytes()
    assert (out / "tokenizer.json").is_file() and "tokenizer.json" in meta["copied_files"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_ort_build_runs_like_the_export(ort_build):
    src, out = ort_build
    with open_session(src, provider="cpu", threads=1, accuracy_level=1) as ref, open_session(out, threads=1) as built:
        feeds = _feeds(ref)
        want, got = ref.run(feeds), built.run(feeds)
        assert built.supports_in_place_cache  # the fused graph's metadata survives ORT's optimisation
    assert set(want) == set(got)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)


def test_generate_and_info_accept_a_build_dir(ort_build, capsys):
    _, out = ort_build
    assert main(["generate", str(out), "--ids", "3 5 7", "--max-new-tokens", "3", "--threads", "1"]) == 0
    tokens = capsys.readouterr().out.split()
    assert tokens[:3] == ["3", "5", "7"] and len(tokens) == 6
    assert main(["info", str(out), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "input_ids: int64[batch, sequence]" in text and "artifact: build" in text


def test_existing_out_is_refused_unless_overwrite(ort_build):
    src, out = ort_build
    with pytest.raises(UserError, match="--overwrite"):
        build_engine(src, out, BuildConfig(provider="cpu"))
    stamp = (out / "build.json").read_text()
    build_engine(src, out, BuildConfig(provider="cpu", accuracy_level=1), overwrite=True)
    assert json.loads((out / "build.json").read_text())["source"] == json.loads(stamp)["source"]


def test_a_build_dir_is_not_a_build_source(ort_build, tmp_path):
    _, out = ort_build
    with pytest.raises(UserError, match="is a build directory"):
        build_engine(out, tmp_path / "again")


# ---------------------------------------------------------------------------------------
# refusals before any TensorRT work (these run without TensorRT)
# ---------------------------------------------------------------------------------------


def test_trt_without_tensorrt_says_how_to_install(tiny_export, tmp_path, monkeypatch):
    import runtime.trt as trt

    monkeypatch.setattr(trt, "tensorrt_installed", lambda: False)
    with pytest.raises(TensorRTUnavailable, match=r'TensorRT is not installed here.*pip install -e "\.\[trt\]"'):
        build_engine(tiny_export("sym", graph="generic"), tmp_path / "trt", BuildConfig(backend="trt"))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_trt_profile_errors_come_before_the_builder(tiny_export, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(tiny_export("sym", graph="generic") / "model.onnx", bare / "model.onnx")  # no export.json: no default ranges
    with pytest.raises(UserError, match=r"input input_ids has dimension 'batch' on axis 0 .*--profile batch="):
        build_engine(bare, tmp_path / "trt", BuildConfig(backend="trt"))
    with pytest.raises(UserError, match=r"--profile tokens names no dynamic dimension .*batch, past_sequence"):
        build_engine(tiny_export("sym", graph="generic"), tmp_path / "trt",
                     BuildConfig(backend="trt", profile=[("tokens", 1, 1, 2)]))


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def _cli(argv, capsys) -> tuple[int, str]:
    code = run_cli(main, argv)
    return code, capsys.readouterr().err.strip()


def test_build_cli_errors_are_one_line(tiny_export, tmp_path, capsys):
    src = str(tiny_export("sym"))
    cases = [
        (["build", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "does not exist"),
        (["build", src, "--out", str(tmp_path / "o"), "--profile", "batch=1:x:2"], "NAME=MIN:OPT:MAX"),
        (["build", src, "--out", str(tmp_path / "o"), "--profile", "batch=4:1:2"], "BuildConfig.profile"),
        (["build", src, "--out", str(tmp_path / "o"), "--backend", "trt", "--provider", "cpu"], "BuildConfig.provider"),
        (["build", src, "--out", str(tmp_path / "o"), "--workspace-gb", "-1"], "BuildConfig.workspace_gb"),
        (["build", src, "--out", str(tmp_path / "o"), "--backend", "tensorrt"], "invalid choice"),
    ]
    for argv, needle in cases:
        code, err = _cli(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, (argv, err)
    assert not (tmp_path / "o").exists()


def test_build_cli_ort_and_refusal_to_clobber(tiny_export, tmp_path, capsys):
    out = tmp_path / "built"
    code = main(["build", str(tiny_export("sym")), "--out", str(out), "--provider", "cpu", "--profile", "batch=1:1:2"])
    assert code == 0 and "(ort)" in capsys.readouterr().out
    meta = json.loads((out / "build.json").read_text())
    assert meta["config"]["profile"] == [["batch", 1, 1, 2]] and meta["dims"]["batch"] == [1, 1, 2]
    code, err = _cli(["build", str(tiny_export("sym")), "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in err


def test_build_cli_print_config(capsys):
    assert main(["build", "x", "--out", "y", "--backend", "trt", "--profile", "past=0:4:8", "--workspace-gb", "2",
                 "--print-config"]) == 0
    config = BuildConfig.from_json(capsys.readouterr().out)
    assert config.backend == "trt" and config.profile == (("past_sequence", 0, 4, 8),) and config.workspace_gb == 2
