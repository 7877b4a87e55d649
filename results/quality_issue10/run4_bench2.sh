#!/bin/bash
# Fifth session, second latency run after run4_deploy.sh: the asymmetric head pair again, the shared
# table, and the model builder's graph now run with its cache in place (genai_config.json sets
# past_present_share_buffer, as onnxruntime-genai runs it); 41 timed iterations.
set -e
cd "$(dirname "$0")/../.."
O=runs/head5/onnx
.venv/bin/python -m tools bench latency \
  asym-fp32head=$O/gptaq_w4g128_mse_clip-True_reorder-group_sym-False \
  asym-int4g32head=$O/gptaq_w4g128_head_bits-4_head_group_size-32_mse_clip-True_reorder-group_sym-False \
  sym-int4g32-shared=runs/head5/shared \
  genai-int4=runs/genai_int4 \
  --baseline fp32=runs/head4/fp32 --prompt-lengths 512 --cache-lengths 512 --batch-sizes 1 \
  --warmup 3 --iterations 41 --threads 2 --no-memory --no-spinning --out runs/head5/bench2
