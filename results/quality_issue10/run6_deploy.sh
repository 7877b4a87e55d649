#!/bin/bash
# Seventh session, on a different machine (2-core AMD EPYC VM, AVX-512 VNNI), after run5.sh was
# rerun there: the FP32 export and onnxruntime-genai's builder model built from the same FP model,
# then run5_latency.sh (ORT CPU decode @512 of the run5 exports beside them, threads sleeping and
# then spinning), and held-out ORT perplexity of the builder model. OUT: where the benches go
# (OUT_nospin, OUT_spin; default runs/head7/bench). FP: the FP model directory (default: the demo
# model's cache). GENAI_PY: a Python with onnxruntime-genai 0.18 (an optional venv, never a
# dependency), needed only while runs/genai_int4 is missing.
set -e
cd "$(dirname "$0")/../.."
FP=${FP:-$HOME/.cache/gptaq-deploy/smollm2-135m-98362432}
[ -f runs/head4/fp32/model.onnx ] || .venv/bin/python -m export "$FP" --out runs/head4/fp32 --dtype fp32
[ -f runs/genai_int4/model.onnx ] || "${GENAI_PY:?set GENAI_PY to the python of a venv with onnxruntime-genai 0.18}" \
  -m onnxruntime_genai.models.builder -i "$FP" -o runs/genai_int4 -p int4 -e cpu -c runs/genai_cache
OUT=${OUT:-runs/head7/bench} bash results/quality_issue10/run5_latency.sh
.venv/bin/python -m tools validate --reference runs/head4/fp32 --candidate runs/genai_int4 --limit 10 --threads 2 \
  --report runs/head6/validate_genai-int4.json
