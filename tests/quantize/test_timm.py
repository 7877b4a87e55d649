"""timm models (VisionTransformer / DeiT and EVA-02) through the walker, built tiny from kwargs, never downloaded."""

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from quantize import QuantConfig, load_quantized, quantize_model, save_quantized  # noqa: E402
from quantize.arch import spec_for  # noqa: E402
from quantize.qmodel import QuantLinear  # noqa: E402

COMMON = dict(embed_dim=64, depth=2, num_heads=4, num_classes=10)

#: id -> (timm name, extra create_model kwargs, arch spec, block Linears per block)
MODELS = {
    # DeiT / ViT: fused qkv, GELU MLP; timm keeps the blocks in an nn.Sequential.
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8),
            "timm-vit", ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]),
    # EVA-02 tiny/small as timm defines them: fused qkv, GluMlp (fused SwiGLU fc1), rotary embedding.
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=7),
              "timm-eva", ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]),
    # EVA-02 base/large style: SwiGLU with separate fc1_g / fc1_x (+ mlp.norm), separate q/k/v.
    "eva02-swiglu": ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=7, scale_mlp=True, qkv_fused=False,
                                                    scale_attn_inner=True),
                     "timm-eva", ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.proj",
                                  "mlp.fc1_g", "mlp.fc1_x", "mlp.fc2"]),
}

W4A4 = QuantConfig(method="gptaq", w_bits=4, group_size=-1, sym=False, mse_clip=True, act_order=True, damp=0.1,
                   a_bits=4, a_clip_ratio=1.0)


def tiny_timm(kind: str) -> nn.Module:
    name, extra, _, _ = MODELS[kind]
    kwargs = {**COMMON, **extra}
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    model.quant_source = {"library": "timm", "name": name, "kwargs": kwargs}
    return model


def images(kind: str, n: int = 16, seed: int = 0) -> torch.Tensor:
    size = MODELS[kind][1]["img_size"]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("kind", list(MODELS))
def test_timm_block_linears_match_the_spec(kind):
    model = tiny_timm(kind)
    spec = spec_for(model)
    assert spec.name == MODELS[kind][2]
    for block in model.blocks:
        names = [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]
        assert names == MODELS[kind][3]
        assert sorted(n for g in spec.group_members(block) for n in g) == sorted(names)


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_block_linear_quantized_head_kept(kind):
    model = tiny_timm(kind)
    n_block_linears = sum(isinstance(m, nn.Linear) for m in model.blocks.modules())
    assert n_block_linears == len(MODELS[kind][3]) * COMMON["depth"]
    quantize_model(model, images(kind), QuantConfig(group_size=32, damp=0.1, act_order=True), progress=False)
    quantized = [m for m in model.blocks.modules() if isinstance(m, QuantLinear) and m.is_quantized]
    assert len(quantized) == n_block_linears
    assert not any(type(m) is nn.Linear for m in model.blocks.modules())
    assert type(model.head) is nn.Linear
    assert len(model.quant_state.log) == n_block_linears
    assert model.quant_state.arch == MODELS[kind][2]


@pytest.mark.parametrize("kind", list(MODELS))
def test_gptaq_w4a4_differs_but_stays_close(kind):
    x = images(kind)
    ref = logits(tiny_timm(kind), x)
    model = quantize_model(tiny_timm(kind), x, W4A4, progress=False, batch_size=8)
    qs = [m.input_quant for m in model.blocks.modules() if isinstance(m, QuantLinear)]
    assert qs and all(q.active and q.bits == 4 for q in qs)
    out = logits(model, x)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, ref)
    rel = ((out - ref).norm() / ref.norm()).item()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert rel < 0.5 and cos > 0.9, (rel, cos)


@pytest.mark.parametrize("kind", list(MODELS))
def test_timm_save_load_round_trip_is_bit_exact(tmp_path, kind):
    x = images(kind, 8)
    model = quantize_model(tiny_timm(kind), x, W4A4, progress=False)
    before = logits(model, x)
    loaded = load_quantized(save_quantized(model, tmp_path / kind))
    assert type(loaded).__name__ == type(model).__name__
    assert torch.equal(logits(loaded, x), before)
    assert loaded.quant_state.config == W4A4
    assert loaded.quant_state.source["name"] == MODELS[kind][0]
    assert all(m.input_quant.active for m in loaded.blocks.modules() if isinstance(m, QuantLinear))
