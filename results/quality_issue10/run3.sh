#!/bin/bash
# The third session's issue-10 run (one process, resumable with the same --out), cases in priority
# order: FP; GPTAQ W4 g128 plain and with group-aware reordering (GAR); GPTQModel 7.7's default GPTQ
# (GAR on) and its GPTAQ on the same data; our GPTQ with and without GAR; RTN; the damping /
# asymmetric / MSE-clip levers on top of GPTAQ + GAR; then W3 g128.
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m tools.bench quality --out runs/quality_issue10c \
  --schemes --methods fp \
  --case "gptaq w4g128" \
  --case "gptaq w4g128 reorder=group" \
  --case "gptqmodel-gptq w4g128" \
  --case "gptqmodel-gptaq w4g128" \
  --case "gptq w4g128 reorder=group" \
  --case "gptq w4g128" \
  --case "rtn w4g128" \
  --case "gptaq w4g128 reorder=group damp=0.05" \
  --case "gptaq w4g128 reorder=group sym=0" \
  --case "gptaq w4g128 reorder=group mse_clip=1" \
  --case "gptaq w3g128 reorder=group" \
  --case "gptaq w3g128" \
  --case "gptq w3g128 reorder=group" \
  --case "gptqmodel-gptq w3g128" \
  --case "rtn w3g128" \
  --gptqmodel-python "${GPTQMODEL_PYTHON:?set GPTQMODEL_PYTHON to the python of a venv with gptqmodel 7.7}" -v
