import pytest
import torch
from torch import nn

from quantize import QuantConfig, load_quantized, quantize_model, save_quantized
from quantize.arch import spec_for
from quantize.errors import UserError
from quantize.qmodel import QuantLinear
from tiny_models import tiny_decoder, tiny_hf_vit, tiny_llama, token_batch

KINDS = ["llama", "mistral", "qwen2", "qwen3"]


def block_linears(model, spec):
    blocks = model.get_submodule(spec.blocks)
    return [m for b in blocks for m in b.modules() if isinstance(m, (nn.Linear, QuantLinear))]


@pytest.mark.parametrize("kind", KINDS)
def test_every_block_linear_is_quantized(kind):
    model = tiny_decoder(kind)
    spec = spec_for(model)
    n_linear = len(block_linears(model, spec))
    quantize_model(model, token_batch(), QuantConfig(group_size=32), progress=False)
    quantized = [m for m in block_linears(model, spec) if isinstance(m, QuantLinear) and m.is_quantized]
    assert len(quantized) == n_linear == 14
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, QuantLinear)
    assert len(model.quant_state.log) == n_linear


def test_hf_vit_all_block_linears_quantized_and_head_kept():
    model = tiny_hf_vit()
    quantize_model(model, torch.randn(8, 3, 32, 32), QuantConfig(group_size=32, damp=0.1, act_order=True), progress=False)
    assert sum(isinstance(m, QuantLinear) and m.is_quantized for m in model.modules()) == 12
    assert type(model.classifier) is nn.Linear


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_gptaq_differs_from_gptq_and_alpha_zero_is_gptq():
    ids = token_batch(8, 32)
    runs = {}
    for name, cfg in {"gptq": QuantConfig(method="gptq", group_size=32),
                      "gptaq": QuantConfig(method="gptaq", group_size=32),
                      "alpha0": QuantConfig(method="gptaq", group_size=32, alpha=0.0)}.items():
        model = quantize_model(tiny_llama(), ids, cfg, progress=False, batch_size=4)
        runs[name] = [m.codes.clone() for m in model.modules() if isinstance(m, QuantLinear)]
    assert all(torch.equal(a, b) for a, b in zip(runs["gptq"], runs["alpha0"]))
    assert any(not torch.equal(a, b) for a, b in zip(runs["gptq"], runs["gptaq"]))


def test_quantized_model_tracks_fp_better_than_rtn():
    ids = token_batch(16, 32)
    ref = _logits(tiny_llama(), ids)
    err = {}
    for method in ("rtn", "gptq", "gptaq"):
        model = quantize_model(tiny_llama(), ids, QuantConfig(method=method, w_bits=3, group_size=32), progress=False)
        err[method] = (_logits(model, ids) - ref).pow(2).mean().item()
    assert err["gptaq"] < err["rtn"] and err["gptq"] < err["rtn"]


@pytest.mark.parametrize("kind,cfg", [
    ("llama", QuantConfig(method="gptaq", group_size=32, act_order=True)),
    ("qwen2", QuantConfig(method="gptq", w_bits=3, group_size=-1, sym=False)),
    ("llama-tied", QuantConfig(method="rtn", w_bits=8, group_size=16)),
])
def test_save_load_round_trip_is_bit_exact(tmp_path, kind, cfg):
    model = tiny_llama(tie_word_embeddings=True) if kind == "llama-tied" else tiny_decoder(kind)
    ids = token_batch(8, 32)
    quantize_model(model, ids, cfg, progress=False)
    before = _logits(model, ids)
    out = save_quantized(model, tmp_path / "ckpt")
    loaded = load_quantized(out)
    assert torch.equal(_logits(loaded, ids), before)
    assert loaded.quant_state.config == cfg
    with pytest.raises(UserError, match="already exists"):
        save_quantized(model, tmp_path / "ckpt")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_hf_vit_round_trip(tmp_path):
    model = tiny_hf_vit()
    x = torch.randn(8, 3, 32, 32)
    quantize_model(model, x, QuantConfig(group_size=32, a_bits=4), progress=False)
    before = model(pixel_values=x).logits
    loaded = load_quantized(save_quantized(model, tmp_path / "vit"))
    assert torch.equal(loaded(pixel_values=x).logits, before)


def test_w4a4_activation_quantizers_are_on_after_calibration():
    for method in ("gptq", "gptaq"):
        model = quantize_model(tiny_llama(), token_batch(), QuantConfig(method=method, group_size=32, a_bits=4), progress=False)
        qs = [m.input_quant for m in model.modules() if isinstance(m, QuantLinear)]
        assert qs and all(q.active and q.bits == 4 for q in qs)


def test_unsupported_and_moe_models_are_refused():
    with pytest.raises(UserError, match="unsupported model Sequential; supported: LlamaForCausalLM"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), torch.zeros(1, 4), QuantConfig())
    from transformers import MixtralConfig, MixtralForCausalLM

    moe = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=2))
    with pytest.raises(UserError, match="mixture-of-experts"):
        quantize_model(moe, torch.zeros(1, 4, dtype=torch.long), QuantConfig())


@pytest.mark.parametrize("method,quantized_h", [("gptaq", True), ("gptq", False)])
def test_activation_quant_order_a_to_w_for_gptaq_w_to_a_for_gptq(monkeypatch, method, quantized_h):
    """GPTAQ builds H from 4-bit activations (A→W, its FP stream stays float); GPTQ calibrates
    on float activations and switches the quantizers on afterwards (W→A)."""
    from quantize.hessian import HessianAccumulator

    seen = []
    original = HessianAccumulator.add

    def add(self, x, x_fp=None):
        per_token_levels = max(len(torch.unique(row)) for row in x.reshape(-1, x.shape[-1]))
        seen.append((per_token_levels, None if x_fp is None else max(len(torch.unique(r)) for r in x_fp.reshape(-1, x_fp.shape[-1]))))
        return original(self, x, x_fp) if x_fp is not None else original(self, x)

    monkeypatch.setattr(HessianAccumulator, "add", add)
    model = quantize_model(tiny_llama(), token_batch(8, 32), QuantConfig(method=method, group_size=32, a_bits=4), progress=False)
    assert seen
    assert all((levels <= 16) == quantized_h for levels, _ in seen), seen[:4]
    if method == "gptaq":
        assert all(fp_levels > 16 for _, fp_levels in seen)  # the FP stream is not quantized
    assert all(m.input_quant.active for m in model.modules() if isinstance(m, QuantLinear))


def test_wrong_modality_is_refused():
    with pytest.raises(UserError):
        quantize_model(tiny_llama(), torch.randn(2, 3, 32, 32), QuantConfig())


def test_resume_after_failure_equals_uninterrupted(tmp_path, monkeypatch):
    from quantize import calibrate

    ids = token_batch(8, 32)
    cfg = QuantConfig(group_size=32)
    straight = save_quantized(quantize_model(tiny_llama(), ids, cfg, progress=False), tmp_path / "straight")

    original = calibrate.BlockWalker.process

    def fail_on_block_1(self, index, state):
        if index == 1:
            raise RuntimeError("killed")
        return original(self, index, state)

    monkeypatch.setattr(calibrate.BlockWalker, "process", fail_on_block_1)
    with pytest.raises(RuntimeError, match="killed"):
        quantize_model(tiny_llama(), ids, cfg, progress=False, resume_dir=tmp_path / "state")
    monkeypatch.setattr(calibrate.BlockWalker, "process", original)
    calls = []
    monkeypatch.setattr(calibrate.BlockWalker, "process", lambda self, i, s: calls.append(i) or original(self, i, s))
    resumed = save_quantized(quantize_model(tiny_llama(), ids, cfg, progress=False, resume_dir=tmp_path / "state"),
                             tmp_path / "resumed")
    assert calls == [1]
    assert (straight / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()

    with pytest.raises(UserError, match="different calibration"):
        quantize_model(tiny_llama(), token_batch(8, 32, seed=1), cfg, progress=False, resume_dir=tmp_path / "state")
    with pytest.raises(UserError, match="different config"):
        quantize_model(tiny_llama(), ids, cfg.replace(alpha=0.5), progress=False, resume_dir=tmp_path / "state")


@pytest.mark.parametrize("cfg", [QuantConfig(group_size=32), QuantConfig(group_size=32, a_bits=4), QuantConfig(method="gptq", group_size=32)],
                         ids=["gptaq", "gptaq-w4a4", "gptq"])
def test_replay_is_bit_identical_to_recomputation(monkeypatch, cfg):
    import dataclasses

    from quantize import arch

    ids = token_batch(8, 32)
    fast = quantize_model(tiny_llama(), ids, cfg, progress=False, batch_size=3)
    monkeypatch.setattr(arch, "REGISTRY", tuple(dataclasses.replace(s, replay=()) for s in arch.REGISTRY))
    slow = quantize_model(tiny_llama(), ids, cfg, progress=False, batch_size=3)
    codes = lambda m: [x.codes for x in m.modules() if isinstance(x, QuantLinear)]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(codes(fast), codes(slow)))
    assert torch.equal(_logits(fast, ids), _logits(slow, ids))


def test_offload_gives_the_same_result():
    ids = token_batch(8, 32)
    cfg = QuantConfig(group_size=32)
    kept = quantize_model(tiny_llama(), ids, cfg, progress=False, batch_size=4)
    offloaded = quantize_model(tiny_llama(), ids, cfg, progress=False, batch_size=4, offload=True, device="cpu")
    assert torch.equal(_logits(kept, ids), _logits(offloaded, ids))


@pytest.mark.gpu
def test_cuda_calibration_with_offload_matches_cpu_closely():
    ids = token_batch(8, 32)
    cfg = QuantConfig(group_size=32)
    cpu = quantize_model(tiny_llama(), ids, cfg, progress=False)
    gpu = quantize_model(tiny_llama(), ids, cfg, progress=False, device="cuda", offload=True)
    assert next(gpu.parameters()).device.type == "cpu"  # the model comes back where it was
    agree = [(a.codes == b.codes).float().mean().item() for a, b in zip(
        (m for m in cpu.modules() if isinstance(m, QuantLinear)), (m for m in gpu.modules() if isinstance(m, QuantLinear)))]
    assert min(agree) > 0.98
