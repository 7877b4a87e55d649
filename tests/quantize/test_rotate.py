"""QuaRot rotation: the rotated model equals the original; rotated W4A4 / W4A16 calibrate, save and load."""

from __future__ import annotations

import json

import pytest
import torch

from quantize import QuantConfig, load_quantized, quantize_model, save_quantized
from quantize.errors import UserError
from quantize.hadamard import OnlineHadamard
from quantize.qmodel import QuantLinear
from quantize.rotate import rotate_model
from tiny_models import tiny_decoder, tiny_hf_vit, token_batch

CASES = [
    ("llama", {}),                                     # GQA 4/2, untied
    ("llama", {"tie_word_embeddings": True}),          # tied head: rotation unties it
    ("mistral", {}),
    ("qwen2", {}),                                     # q/k/v biases
    ("qwen3", {}),                                     # q/k norms, explicit head_dim
    ("llama", {"hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 1,
               "intermediate_size": 96}),            # Paley sizes (48 = 12·4, 96 = 12·8), 3 heads: full o_proj Hadamard
]


def _with_random_gains(model):
    """Norm gains far from 1, so a fusion mistake cannot hide."""
    gen = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data = 1 + 0.5 * torch.randn(p.shape, generator=gen)
    return model


@pytest.mark.parametrize("kind,overrides", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-5), (torch.float16, 4e-3)])
def test_rotated_model_equals_original(kind, overrides, dtype, tol):
    model = _with_random_gains(tiny_decoder(kind, **overrides)).to(dtype)
    ids = token_batch(2, 17)
    with torch.no_grad():
        ref = model(ids).logits.double()
        rotate_model(model, seed=3)
        got = model(ids).logits.double()
    # float64 models still run RMSNorm in float32 (transformers upcasts there), hence 1e-5
    assert (got - ref).abs().max() <= tol * ref.abs().max()
    assert all(p.dtype == dtype for p in model.parameters())


def test_rotation_changes_weights_and_records_online_transforms():
    model = _with_random_gains(tiny_decoder("llama", tie_word_embeddings=True))
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    rotate_model(model, seed=0)
    assert not torch.allclose(model.model.layers[0].mlp.up_proj.weight, before)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.config.tie_word_embeddings is False
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for n, m in model.named_modules() if n.endswith("norm"))
    rotation = model.quant_extra["rotation"]
    assert rotation["seed"] == 0 and rotation["hidden"] == 64
    assert rotation["online"] == {
        **{f"model.layers.{i}.self_attn.o_proj": {"features": 64, "size": 4} for i in range(2)},
        **{f"model.layers.{i}.mlp.down_proj": {"features": 128, "size": None} for i in range(2)},
    }
    down = model.model.layers[1].mlp.down_proj
    assert isinstance(down, QuantLinear) and isinstance(down.input_transform, OnlineHadamard)
    assert not down.is_quantized


def test_seed_changes_the_rotation_not_the_function():
    ids = token_batch(2, 9)
    a = rotate_model(tiny_decoder("llama"), seed=0)
    b = rotate_model(tiny_decoder("llama"), seed=1)
    assert not torch.allclose(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=1e-4, atol=1e-5)


def test_unsupported_models_and_double_rotation_are_refused():
    with pytest.raises(UserError, match="RMSNorm decoders .* not hf-vit"):
        quantize_model(tiny_hf_vit(), torch.randn(4, 3, 32, 32), QuantConfig(rotate=True, group_size=32))
    model = rotate_model(tiny_decoder("llama"))
    with pytest.raises(UserError, match="rotated already"):
        rotate_model(model)


@pytest.mark.parametrize("overrides,what", [
    ({"hidden_size": 172, "num_attention_heads": 2, "num_key_value_heads": 1}, "hidden size = 172"),
    ({"hidden_size": 40, "num_attention_heads": 4, "num_key_value_heads": 2}, "head_dim = 10"),
    ({"intermediate_size": 172}, "intermediate size = 172"),
])
def test_sizes_without_hadamard_are_one_line(overrides, what):
    model = tiny_decoder("llama", **overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=what) as exc:
        rotate_model(model)
    assert "\n" not in str(exc.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


@pytest.mark.parametrize("cfg", [
    QuantConfig(method="gptaq", rotate=True, a_bits=4, group_size=-1, sym=False, mse_clip=True),
    QuantConfig(method="gptq", rotate=True, a_bits=4, group_size=32),
    QuantConfig(method="rtn", rotate=True, a_bits=4, group_size=32),
    QuantConfig(method="gptaq", rotate=True, group_size=32),
])
def test_rotated_quantization_saves_and_loads_bit_exact(tmp_path, cfg):
    model = tiny_decoder("llama", tie_word_embeddings=True, intermediate_size=96)
    quantize_model(model, token_batch(8, 32), cfg, progress=False)
    ids = token_batch(2, 13, seed=4)
    with torch.no_grad():
        before = model(ids).logits
    out = save_quantized(model, tmp_path / "ckpt")
    meta = json.loads((out / "quant_config.json").read_text())
    assert meta["quant_config"]["rotate"] and meta["extra"]["rotation"]["online"]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["meta"]["rotation"] == "hadamard"
    loaded = load_quantized(out)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, before)
    down = loaded.model.layers[0].mlp.down_proj
    assert isinstance(down.input_transform, OnlineHadamard) and down.is_quantized
    assert down.input_quant.bits == cfg.a_bits


def test_rotation_lowers_w4a4_error_with_activation_outliers():
    """With a few outlier channels in the residual stream (what real LLMs have), per-token 4-bit
    activations lose much less after rotation."""
    ids = token_batch(16, 32)

    def outlier_model():
        model = tiny_decoder("llama")
        with torch.no_grad():
            model.model.embed_tokens.weight[:, :3] *= 40.0
        return model

    with torch.no_grad():
        ref = outlier_model()(ids).logits
    err = {}
    for rotate in (False, True):
        model = quantize_model(outlier_model(), ids, QuantConfig(method="gptaq", rotate=rotate, a_bits=4, w_bits=8,
                                                                group_size=32), progress=False)
        with torch.no_grad():
            err[rotate] = (model(ids).logits - ref).pow(2).mean().item()
    assert err[True] < 0.5 * err[False], err
