#!/bin/bash
# Fifth session, after run4.sh: the deployable builds of the run4 checkpoints side by side with
# onnxruntime-genai's model builder (INT4 RTN, blocks of 32, INT4 head; built from the same FP
# model into runs/genai_int4), then held-out perplexity of each in ORT against the FP32 export.
set -e
cd "$(dirname "$0")/../.."
C=runs/head5/checkpoints O=runs/head5/onnx
SYM=gptaq_w4g128_head_bits-4_head_group_size-32_mse_clip-True_reorder-group
.venv/bin/python -m export $C/$SYM --out runs/head5/shared --share-embedding --overwrite
.venv/bin/python -m tools bench latency \
  sym-fp32head=$O/gptaq_w4g128_mse_clip-True_reorder-group \
  sym-int4g32head=$O/$SYM \
  sym-int4g32-shared=runs/head5/shared \
  asym-fp32head=$O/gptaq_w4g128_mse_clip-True_reorder-group_sym-False \
  asym-int4g32head=$O/${SYM}_sym-False \
  genai-int4=runs/genai_int4 \
  --baseline fp32=runs/head4/fp32 --prompt-lengths 512 --cache-lengths 512 --batch-sizes 1 \
  --warmup 3 --iterations 21 --threads 2 --no-memory --no-spinning --out runs/head5/bench
for c in asym-int4g32head=$O/${SYM}_sym-False sym-int4g32-shared=runs/head5/shared genai-int4=runs/genai_int4 \
         asym-fp32head=$O/gptaq_w4g128_mse_clip-True_reorder-group_sym-False; do
  .venv/bin/python -m tools validate --reference runs/head4/fp32 --candidate ${c#*=} --limit 10 --threads 2 \
    --report runs/head5/validate_${c%%=*}.json
done
