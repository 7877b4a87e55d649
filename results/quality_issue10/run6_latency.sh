#!/bin/bash
# Seventh session, after run6_deploy.sh: the bench's new default (ORT threads spinning, artifacts
# taking turns in blocks of 5 runs after a pause) on issue 6's shapes: prefill of 512 tokens and
# decode @512, batch 1, the run5 exports beside the builder model and the FP32 export.
set -e
cd "$(dirname "$0")/../.."
. results/quality_issue10/run5_exports.sh
.venv/bin/python -m tools bench latency \
  $RUN5_EXPORTS genai-int4=runs/genai_int4 \
  --baseline fp32=runs/head4/fp32 --prompt-lengths 512 --cache-lengths 512 --batch-sizes 1 \
  --warmup 5 --iterations 41 --threads 2 --no-memory --out runs/head7/bench_default
