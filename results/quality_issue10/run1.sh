#!/bin/bash
# One run of the issue-10 quality table (cases in priority order; resumable with the same --out).
# Run from anywhere; results go to runs/quality_issue10 in the repository.
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m tools.bench quality --out runs/quality_issue10 \
  --schemes --methods fp \
  --case "gptaq w4g128 reorder=group mse_clip=1" \
  --case "gptaq w4g128" \
  --case "gptaq w4g128 reorder=group" \
  --case "gptq w4g128" \
  --case "gptq w4g128 reorder=group" \
  --case "gptaq w4g128 reorder=group mse_clip=1 head_bits=4 head_group_size=128" \
  --case "gptqmodel-gptq w4g128" \
  --case "gptqmodel-gptaq w4g128" \
  --case "gptaq w3g128 reorder=group mse_clip=1" \
  --case "gptq w3g128 mse_clip=1" \
  --case "gptaq w4g128 reorder=group mse_clip=1 head_bits=8 head_group_size=128" \
  --case "gptaq w4g128 mse_clip=1" \
  --case "gptq w4g128 mse_clip=1" \
  --case "gptq w4g128 reorder=group mse_clip=1" \
  --case "gptaq w3g128 mse_clip=1" \
  --case "gptq w3g128 reorder=group mse_clip=1" \
  --case "rtn w3g128 mse_clip=1" \
  --case "rtn w4g128" \
  --case "rtn w4g128 mse_clip=1" \
  --case "gptq w4g128 reorder=act" \
  --case "gptaq w4g128 reorder=act" \
  --case "gptq w4g128 reorder=act mse_clip=1" \
  --case "gptaq w4g128 reorder=act mse_clip=1" \
  --case "gptaq w4g128 reorder=group mse_clip=1 sym=0" \
  --case "gptaq w4g128 reorder=group mse_clip=1 damp=0.05" \
  --case "gptaq w3g128 reorder=group" \
  --case "gptaq w3g128" \
  --gptqmodel-python "${GPTQMODEL_PYTHON:?set GPTQMODEL_PYTHON to the python of a venv with gptqmodel 7.7}" --decode -v
