"""Session-scoped tiny artifacts for the release-tool tests (each export costs seconds, so once).

* ``fp_dir``: a tiny seeded Llama + word-level tokenizer as a transformers directory;
* ``tiny_checkpoint(bits)``: RTN checkpoints of it (8 bits: faithful; 2 bits: damaged);
* ``tiny_onnx(name)``: ONNX exports (``"fp"`` or a checkpoint's bits) with the KV cache;
* ``text_file``: word salad from the tokenizer's vocabulary (test input only).
"""

from __future__ import annotations

import pytest

from tiny_models import save_tiny_llama, tiny_llama, tiny_text, tiny_tokenizer, token_batch


@pytest.fixture(scope="session")
def tools_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tools")


@pytest.fixture(scope="session")
def fp_dir(tools_workdir):
    return save_tiny_llama(tools_workdir / "fp")


@pytest.fixture(scope="session")
def tiny_checkpoint(tools_workdir):
    from quantize import QuantConfig, quantize_model, save_quantized

    made = {}

    def get(bits: int):
        if bits not in made:
            model = quantize_model(tiny_llama(), token_batch(), QuantConfig(method="rtn", w_bits=bits, group_size=32),
                                   progress=False)
            made[bits] = save_quantized(model, tools_workdir / f"rtn_w{bits}", tokenizer=tiny_tokenizer())
        return made[bits]

    return get


@pytest.fixture(scope="session")
def tiny_onnx(tools_workdir, fp_dir, tiny_checkpoint):
    from export import ExportConfig, export_onnx

    made = {}

    def get(name):
        if name not in made:
            src = fp_dir if name == "fp" else tiny_checkpoint(name)
            made[name] = export_onnx(src, tools_workdir / f"onnx_{name}", ExportConfig(max_seq_len=256))
        return made[name]

    return get


@pytest.fixture(scope="session")
def text_file(tools_workdir):
    path = tools_workdir / "text.txt"
    path.write_text(tiny_text(6000))
    return path
