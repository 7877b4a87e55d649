#!/bin/bash
# Seventh session, after run6_deploy.sh: the bench's new default (ORT threads spinning, artifacts
# taking turns in blocks of 5 runs after a pause) on issue 6's shapes: prefill of 512 tokens and
# decode @512, batch 1, the run5 exports beside the builder model and the FP32 export.
set -e
cd "$(dirname "$0")/../.."
O=runs/head6/quality/onnx
B=gptaq_w4g128_mse_clip-True_reorder-group_sym-False
H=gptaq_w4g128_head_bits-4_head_group_size-32_mse_clip-True_reorder-group_sym-False
S=gptaq_w4g128_head_bits-4_head_group_size-32_head_int8_rows-4096_mse_clip-True_reorder-group_sym-False
.venv/bin/python -m tools bench latency \
  float-head=$O/$B int4g32-head=$O/$H split-head=$O/$S genai-int4=runs/genai_int4 \
  --baseline fp32=runs/head4/fp32 --prompt-lengths 512 --cache-lengths 512 --batch-sizes 1 \
  --warmup 5 --iterations 41 --threads 2 --no-memory --out runs/head7/bench_default
