"""Shared, session-scoped artifacts of the export tests: tiny quantized checkpoints and their exports.

Every export costs seconds (torch.onnx dynamo tracing), so each (scheme, config) pair is
exported once per session and shared by the tests that inspect it.
"""

from __future__ import annotations

import numpy as np
import pytest

from export import ExportConfig, export_onnx
from quantize import QuantConfig, load_quantized, quantize_model, save_quantized
from tiny_models import save_tiny_llama, tiny_llama, tiny_tokenizer, token_batch

SCHEMES = {
    "sym": QuantConfig(method="rtn", group_size=32),
    "asym": QuantConfig(method="rtn", group_size=32, sym=False),
    "w4a4": QuantConfig(method="rtn", group_size=32, a_bits=4),
    # Hadamard-rotated (online Hadamards before o_proj and down_proj); GPTAQ A->W for W4A4.
    "rot_w4a4": QuantConfig(method="gptaq", group_size=32, rotate=True, a_bits=4),
    "rot_w4a16": QuantConfig(method="rtn", group_size=32, rotate=True),
    # Quantized LM heads (tied embeddings: the head is untied, the embedding stays float).
    "head8": QuantConfig(method="gptq", group_size=32, reorder="group", head_bits=8),
    "head4": QuantConfig(method="rtn", group_size=32, head_bits=4, head_group_size=32),
    # Split head: token ids < 40 INT8 per channel, the rest INT4 g32 (asymmetric: uint8 + uint4).
    "head_split": QuantConfig(method="gptaq", group_size=32, sym=False, head_bits=4, head_group_size=32,
                              head_int8_rows=40),
}
#: Rotated schemes use a non-power-of-two intermediate size (96 = 12 x 8, a Paley factor) and
#: tied embeddings (rotation unties them).
MODEL_KWARGS = {"rot_w4a4": {"intermediate_size": 96, "tie_word_embeddings": True},
                "rot_w4a16": {"intermediate_size": 96, "tie_word_embeddings": True},
                "head8": {"tie_word_embeddings": True}, "head4": {"tie_word_embeddings": True},
                "head_split": {"tie_word_embeddings": True}}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def checkpoint(workdir):
    """``checkpoint(scheme)`` -> directory of a quantized tiny Llama (with tokenizer); ``"fp"`` -> FP model dir."""
    made = {}

    def get(scheme: str):
        if scheme not in made:
            if scheme == "fp":
                made[scheme] = save_tiny_llama(workdir / "fp_llama")
            else:
                model = quantize_model(tiny_llama(**MODEL_KWARGS.get(scheme, {})), token_batch(), SCHEMES[scheme],
                                       progress=False)
                made[scheme] = save_quantized(model, workdir / f"ckpt_{scheme}", tokenizer=tiny_tokenizer())
        return made[scheme]

    return get


@pytest.fixture(scope="session")
def reference(checkpoint):
    """``reference(scheme)`` -> the PyTorch model the export must reproduce."""
    made = {}

    def get(scheme: str):
        if scheme not in made:
            made[scheme] = tiny_llama() if scheme == "fp" else load_quantized(checkpoint(scheme))
        return made[scheme]

    return get


@pytest.fixture(scope="session")
def exported(workdir, checkpoint):
    """``exported(scheme, **ExportConfig fields)`` -> export directory (made once per session)."""
    made = {}

    def get(scheme: str, **fields):
        key = (scheme, tuple(sorted(fields.items())))
        if key not in made:
            tag = "_".join(f"{k}-{v}" for k, v in sorted(fields.items())) or "default"
            made[key] = export_onnx(checkpoint(scheme), workdir / f"onnx_{scheme}_{tag}", ExportConfig(**fields))
        return made[key]

    return get


@pytest.fixture(scope="session")
def llm_feeds():
    """``llm_feeds(ids, session, past_len=0, past=None)`` -> feeds for an exported LLM."""
    return _llm_feeds


def _llm_feeds(ids: np.ndarray, session, past_len: int = 0, past=None) -> dict[str, np.ndarray]:
    """Full attention mask, positions after ``past_len``, an empty or the given cache."""
    batch, seq = ids.shape
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((batch, past_len + seq), np.int64)}
    specs = session.input_metadata()
    if "position_ids" in specs:
        feeds["position_ids"] = np.tile(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, 1))
    for name, spec in specs.items():
        if name.startswith("past_key_values."):
            feeds[name] = past[name] if past is not None else np.zeros((batch, spec.shape[1], 0, spec.shape[3]), spec.dtype)
    return feeds
