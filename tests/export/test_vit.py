"""Vision transformer export: dynamic batch, INT4 blocks, deterministic bytes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from export import ExportConfig, export_onnx
from quantize import QuantConfig, quantize_model
from runtime import OrtSession
from tiny_models import tiny_hf_vit


@pytest.fixture(scope="module")
def vit():
    return quantize_model(tiny_hf_vit(), torch.randn(8, 3, 32, 32), QuantConfig(method="rtn", group_size=32, sym=False),
                          progress=False)


@pytest.fixture(scope="module")
def vit_export(vit, tmp_path_factory):
    return export_onnx(vit, tmp_path_factory.mktemp("vit") / "onnx")


@pytest.fixture
def traced_once(monkeypatch):
    """Reuse one trace of the ViT (tests of what happens after tracing need no fresh trace)."""
    import copy

    import export.to_onnx as to_onnx

    real = to_onnx._trace

    def trace(plan, opset):
        if "proto" not in _TRACE_CACHE:
            _TRACE_CACHE["proto"] = real(plan, opset)
        return copy.deepcopy(_TRACE_CACHE["proto"])

    monkeypatch.setattr(to_onnx, "_trace", trace)


_TRACE_CACHE: dict = {}


def test_hf_vit_dynamic_batch_matches_pytorch(vit, vit_export):
    meta = json.loads((vit_export / "export.json").read_text())
    assert meta["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert meta["outputs"][0]["shape"] == ["batch", 10] and meta["task"] == "image-classification"
    assert meta["scheme"]["quantized_layers"] == 12
    with OrtSession(vit_export, providers=["cpu"], threads=1, accuracy_level=1) as session:
        for batch in (1, 3):
            x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                ref = vit(x).logits.numpy()
            got = session.run({"pixel_values": x.numpy()})["logits"]
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)
    ops = [n.op_type for n in onnx.load(str(vit_export / "model.onnx")).graph.node]
    assert ops.count("DequantizeLinear") == 12


def test_same_input_gives_same_bytes(vit, vit_export, tmp_path):
    again = export_onnx(vit, tmp_path / "again", ExportConfig())
    assert (again / "model.onnx").read_bytes() == (vit_export / "model.onnx").read_bytes()
    # the caller's model is left as it was (input quantizers back on, dtype unchanged)
    assert all(m.enabled for m in vit.modules() if type(m).__name__ == "ActivationQuantizer")


def test_failed_export_leaves_nothing_behind(vit, tmp_path, monkeypatch, traced_once):
    import export.to_onnx as to_onnx
    from export.check import ExportError

    def broken_save(*args, **kwargs):
        raise ExportError("disk full (simulated)")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(ExportError, match="simulated"):
        to_onnx.export_onnx(vit, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_large_models_use_external_data(vit, tmp_path, monkeypatch, traced_once):
    import export.to_onnx as to_onnx

    monkeypatch.setattr(to_onnx, "PROTOBUF_LIMIT", 10_000)  # pretend the tiny ViT is above 2 GB
    out = export_onnx(vit, tmp_path / "ext")
    meta = json.loads((out / "export.json").read_text())
    assert meta["external_data"] == "model.onnx.data" and (out / "model.onnx.data").stat().st_size > 10_000
    assert (out / "model.onnx").stat().st_size < 200_000
    x = torch.randn(2, 3, 32, 32)
    with OrtSession(out, providers=["cpu"], threads=1, accuracy_level=1) as session:
        got = session.run({"pixel_values": x.numpy()})["logits"]
    with torch.no_grad():
        np.testing.assert_allclose(got, vit(x).logits.numpy(), rtol=1e-4, atol=2e-5)


def test_timm_vit_checkpoint_with_w4a8(tmp_path):
    timm = pytest.importorskip("timm")
    from quantize import load_quantized, save_quantized

    kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2, num_classes=10)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()
    model.quant_source = {"library": "timm", "name": "vit_tiny_patch16_224", "kwargs": kwargs}
    quantize_model(model, torch.randn(4, 3, 32, 32), QuantConfig(method="rtn", group_size=32, a_bits=8, a_sym=True),
                   progress=False)
    ckpt = save_quantized(model, tmp_path / "ckpt")
    out = export_onnx(ckpt, tmp_path / "onnx")
    meta = json.loads((out / "export.json").read_text())
    assert meta["arch"] == "timm-vit" and meta["scheme"]["name"] == "W4A8"
    assert meta["scheme"]["layers"]["blocks.0.attn.qkv"]["type"] == "INT4"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = load_quantized(ckpt)(x).numpy()
    with OrtSession(out, providers=["cpu"], threads=1, accuracy_level=1) as session:
        got = session.run({"pixel_values": x.numpy()})["logits"]
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
    assert np.median(np.abs(got - ref)) < 1e-6
