#!/bin/bash
# Fifth session: a rotated W4A4 GPTAQ checkpoint of SmolLM2-135M, then ORT vs PyTorch fidelity with the noise floor.
cd "$(dirname "$0")/../.."
.venv/bin/python -m quantize --method gptaq --w-bits 4 --group-size -1 --asym --mse-clip --a-bits 4 --rotate --nsamples 32 --seqlen 512 --no-progress --out runs/w4a4_rot --overwrite
.venv/bin/python -m tools.bench fidelity --checkpoint runs/w4a4_rot --export runs/w4a4_rot-onnx --eval-windows 4 --noise-floor 1.2e-7 --json runs/w4a4_fid.json

