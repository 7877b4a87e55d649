"""Run by a *foreign* python (a GPTQModel venv): load a GPTQ checkpoint with transformers' loader.

    python gptq_reader.py CKPT IDS.npy OUT.npy   ->  OUT.npy: logits [B, S, V] float32;
    prints a JSON line with the classes of the modules holding a ``qweight`` (the GPTQ kernels).
"""

import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM

ckpt, ids_path, out_path = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(ckpt, device_map="cpu", dtype=torch.float32)
kinds = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "qweight")})
with torch.no_grad():
    logits = model(torch.from_numpy(np.load(ids_path))).logits.float().numpy()
np.save(out_path, logits)
print(json.dumps({"quant_modules": kinds}))
