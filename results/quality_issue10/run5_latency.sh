#!/bin/bash
# Sixth session, after run5.sh: ORT CPU decode @512 of the run5 exports (float head, INT4 g32 head,
# split head) beside onnxruntime-genai's builder and the FP32 export, twice: ORT threads not
# spinning with the artifacts taking turns run by run (the bench's default then), and spinning (ORT's
# default for a lone session) with the artifacts taking turns in blocks of runs. 101 timed runs.
# OUT: where the benches go (OUT_nospin, OUT_spin; default runs/head6/bench).
set -e
cd "$(dirname "$0")/../.."
. results/quality_issue10/run5_exports.sh
for mode in nospin spin; do
  .venv/bin/python -m tools bench latency \
    $RUN5_EXPORTS genai-int4=runs/genai_int4 \
    --baseline fp32=runs/head4/fp32 --prompt-lengths 64 --cache-lengths 512 --batch-sizes 1 \
    --warmup 5 --iterations 101 --threads 2 --no-memory $([ $mode = spin ] && echo --spinning || echo --no-spinning) \
    --out ${OUT:-runs/head6/bench}_$mode
done
