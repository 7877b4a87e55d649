"""A GPTQ reader that is not ours (transformers' GPTQ loader via GPTQModel) loads our checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from quantize import QuantConfig, load_quantized, quantize_model, save_quantized
from tiny_models import tiny_llama, tiny_tokenizer, token_batch

READER = Path(__file__).with_name("gptq_reader.py")


@pytest.mark.gptqmodel
@pytest.mark.parametrize("reorder", ["group", "none"])
def test_transformers_loads_our_checkpoint_to_the_same_logits(reorder, tmp_path):
    """Group-aware reordering keeps ``g_idx`` contiguous, so a plain GPTQ kernel reads it as is."""
    model = quantize_model(tiny_llama(), token_batch(), QuantConfig(method="gptaq", group_size=32, reorder=reorder),
                           progress=False)
    ckpt = save_quantized(model, tmp_path / "ckpt", tokenizer=tiny_tokenizer())
    ids = token_batch(2, 8, seed=1)
    with torch.no_grad():
        ours = load_quantized(ckpt)(ids).logits.numpy()
    np.save(tmp_path / "ids.npy", ids.numpy())
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ""}
    proc = subprocess.run([os.environ["GPTQMODEL_PYTHON"], str(READER), str(ckpt), str(tmp_path / "ids.npy"),
                           str(tmp_path / "theirs.npy")], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["quant_modules"]  # Linears were replaced by a GPTQ kernel
    theirs = np.load(tmp_path / "theirs.npy")
    np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-3)
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
