#!/bin/bash
# Sixth session, after run5.sh: held-out perplexity in ORT (ORT's default accuracy level, 10 x 2048
# windows) of the run5 exports against the FP32 export.
set -e
cd "$(dirname "$0")/../.."
. results/quality_issue10/run5_exports.sh
for c in $RUN5_EXPORTS; do
  .venv/bin/python -m tools validate --reference runs/head4/fp32 --candidate ${c#*=} --limit 10 --threads 2 \
    --report runs/head6/validate_${c%%=*}.json
done
