#!/bin/bash
# Seventh session, on a different machine (2-core AMD EPYC VM, AVX-512 VNNI), after run5.sh was
# rerun there: the FP32 export and onnxruntime-genai's builder model built from the same FP model,
# then ORT CPU decode @512 of the run5 exports (float head, INT4 g32 head, split head) beside them,
# with ORT's threads not spinning and then spinning (each artifact then a lone session in turns of
# blocks), and held-out ORT perplexity of the builder model. OUT: where the benches go
# (runs/head7/bench_{nospin,spin}). GENAI_PY: a Python with onnxruntime-genai 0.18 (an optional
# venv, never a dependency).
set -e
cd "$(dirname "$0")/../.."
FP=${FP:-$HOME/.cache/gptaq-deploy/smollm2-135m-98362432}
[ -f runs/head4/fp32/model.onnx ] || .venv/bin/python -m export "$FP" --out runs/head4/fp32 --dtype fp32
[ -f runs/genai_int4/model.onnx ] || "${GENAI_PY:-/work/venvs/genai/bin/python}" -m onnxruntime_genai.models.builder \
  -i "$FP" -o runs/genai_int4 -p int4 -e cpu -c /tmp/genai_cache
O=runs/head6/quality/onnx
B=gptaq_w4g128_mse_clip-True_reorder-group_sym-False
H=gptaq_w4g128_head_bits-4_head_group_size-32_mse_clip-True_reorder-group_sym-False
S=gptaq_w4g128_head_bits-4_head_group_size-32_head_int8_rows-4096_mse_clip-True_reorder-group_sym-False
for mode in nospin spin; do
  .venv/bin/python -m tools bench latency \
    float-head=$O/$B int4g32-head=$O/$H split-head=$O/$S genai-int4=runs/genai_int4 \
    --baseline fp32=runs/head4/fp32 --prompt-lengths 64 --cache-lengths 512 --batch-sizes 1 \
    --warmup 5 --iterations 101 --threads 2 --no-memory $([ $mode = spin ] && echo --spinning || echo --no-spinning) \
    --out ${OUT:-runs/head7/bench}_$mode
done
.venv/bin/python -m tools validate --reference runs/head4/fp32 --candidate runs/genai_int4 --limit 10 --threads 2 \
  --report runs/head6/validate_genai-int4.json
