#!/bin/bash
# Sixth session, after run5.sh: ORT CPU decode @512 of the run5 exports (float head, INT4 g32 head,
# split head) beside onnxruntime-genai's builder and the FP32 export, twice: ORT threads not
# spinning with the artifacts taking turns run by run (the bench's default then), and spinning (ORT's
# default for a lone session) with the artifacts taking turns in blocks of runs. 101 timed runs.
set -e
cd "$(dirname "$0")/../.."
O=runs/head6/quality/onnx
B=gptaq_w4g128_mse_clip-True_reorder-group_sym-False
H=gptaq_w4g128_head_bits-4_head_group_size-32_mse_clip-True_reorder-group_sym-False
S=gptaq_w4g128_head_bits-4_head_group_size-32_head_int8_rows-4096_mse_clip-True_reorder-group_sym-False
for mode in nospin spin; do
  .venv/bin/python -m tools bench latency \
    float-head=$O/$B int4g32-head=$O/$H split-head=$O/$S genai-int4=runs/genai_int4 \
    --baseline fp32=runs/head4/fp32 --prompt-lengths 64 --cache-lengths 512 --batch-sizes 1 \
    --warmup 5 --iterations 101 --threads 2 --no-memory $([ $mode = spin ] && echo --spinning || echo --no-spinning) \
    --out runs/head6/bench_$mode
done
