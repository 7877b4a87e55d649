"""Bad input and schemes a target cannot run: one line, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from export.__main__ import main
from quantize.cli import run_cli
from export.check import CapabilityError, check_capability
from export.config import ExportConfig
from export.scheme import layers_from_meta
from quantize.checkpoint import read_meta


def _refused(argv, capsys, *needles):
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_trt_refuses_asymmetric_weights_naming_the_layer(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    _refused([str(checkpoint("asym")), "--out", str(out), "--target", "trt"], capsys,
             "asymmetric", "model.layers.0.", "--target ort", "zero point")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_trt_refuses_w4a4_and_offers_w4a16(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    _refused([str(checkpoint("w4a4")), "--out", str(out), "--target", "trt"], capsys,
             "W4A4 cannot run in TensorRT", "--a-bits 16", "model.layers.0.")
    assert not out.exists()


def test_w4a4_weights_pass_trt_rules_without_activation_quant(checkpoint):
    meta = read_meta(checkpoint("w4a4"))
    check_capability(layers_from_meta(meta, a_bits=16), ExportConfig(target="trt", dtype="fp16", a_bits=16))
    with pytest.raises(CapabilityError, match="fp16"):
        check_capability(layers_from_meta(meta, a_bits=16), ExportConfig(target="trt", dtype="fp32", a_bits=16))
    check_capability(layers_from_meta(meta), ExportConfig(target="ort"))  # ORT simulates W4A4


def test_opset_below_21_is_refused(checkpoint, tmp_path, capsys):
    _refused([str(checkpoint("sym")), "--out", str(tmp_path / "out"), "--opset", "20"], capsys, "opset", "21")
    assert list(tmp_path.iterdir()) == []


def test_not_a_checkpoint_directory(tmp_path, capsys):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "notes.txt").write_text("hello")
    _refused([str(src), "--out", str(tmp_path / "out")], capsys, "neither a quantized checkpoint")
    _refused([str(src / "notes.txt"), "--out", str(tmp_path / "out")], capsys, "is a file")
    _refused([str(tmp_path / "missing" / "dir"), "--out", str(tmp_path / "out")], capsys, "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk"]


def test_corrupt_checkpoint_metadata(checkpoint, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint("sym"), bad)
    (bad / "quant_config.json").write_text("{ not json")
    _refused([str(bad), "--out", str(tmp_path / "out")], capsys, "corrupt")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _refused([str(checkpoint("sym")), "--out", str(out)], capsys, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_process_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "export", str(tmp_path / "nope" / "x"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o").exists()
