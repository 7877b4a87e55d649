#!/bin/bash
# Sixth session, after run5.sh: held-out perplexity in ORT (ORT's default accuracy level, 10 x 2048
# windows) of the run5 exports against the FP32 export.
set -e
cd "$(dirname "$0")/../.."
O=runs/head6/quality/onnx
for c in float-head=$O/gptaq_w4g128_mse_clip-True_reorder-group_sym-False \
         int4g32-head=$O/gptaq_w4g128_head_bits-4_head_group_size-32_mse_clip-True_reorder-group_sym-False \
         split-head=$O/gptaq_w4g128_head_bits-4_head_group_size-32_head_int8_rows-4096_mse_clip-True_reorder-group_sym-False; do
  .venv/bin/python -m tools validate --reference runs/head4/fp32 --candidate ${c#*=} --limit 10 --threads 2 \
    --report runs/head6/validate_${c%%=*}.json
done
