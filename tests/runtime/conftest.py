"""Session-scoped tiny exports for the build / load tests (each export costs seconds, so once)."""

from __future__ import annotations

import pytest

from export import ExportConfig, export_onnx
from quantize import QuantConfig, quantize_model, save_quantized
from tiny_models import save_tiny_llama, tiny_llama, tiny_tokenizer, token_batch

SCHEMES = {
    "sym": QuantConfig(method="rtn", group_size=32),
    "asym": QuantConfig(method="rtn", group_size=32, sym=False),
    "w4a4": QuantConfig(method="rtn", group_size=32, a_bits=4),
}


@pytest.fixture(scope="session")
def runtime_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="session")
def tiny_export(runtime_workdir):
    """``tiny_export(scheme, **ExportConfig fields)`` -> export directory of a tiny Llama ("fp": unquantized)."""
    made = {}

    def get(scheme: str, **fields):
        key = (scheme, tuple(sorted(fields.items())))
        if key not in made:
            tag = "_".join(f"{k}-{v}" for k, v in sorted(fields.items())) or "default"
            if scheme == "fp":
                src = save_tiny_llama(runtime_workdir / "ckpt_fp")
            else:
                model = quantize_model(tiny_llama(), token_batch(), SCHEMES[scheme], progress=False)
                src = save_quantized(model, runtime_workdir / f"ckpt_{scheme}_{tag}", tokenizer=tiny_tokenizer())
            made[key] = export_onnx(src, runtime_workdir / f"onnx_{scheme}_{tag}", ExportConfig(**fields))
        return made[key]

    return get
