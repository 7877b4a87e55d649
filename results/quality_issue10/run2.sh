#!/bin/bash
# The second session's issue-10 run (one process, resumable with the same --out): the FP row, GPTAQ
# W4 g128 plain / with its LM head quantized (INT8 per channel, INT4 g128) / with group-aware
# reordering, and GPTQModel 7.7's GPTAQ and default GPTQ on the same data; --decode times ORT CPU
# decode of each head case and its float-head twin on the fused ORT export.
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m tools.bench quality --out runs/quality_issue10b \
  --schemes --methods fp \
  --case "gptaq w4g128" \
  --case "gptaq w4g128 head_bits=8" \
  --case "gptaq w4g128 reorder=group" \
  --case "gptqmodel-gptaq w4g128" \
  --case "gptaq w4g128 head_bits=4 head_group_size=128" \
  --case "gptqmodel-gptq w4g128" \
  --gptqmodel-python "${GPTQMODEL_PYTHON:?set GPTQMODEL_PYTHON to the python of a venv with gptqmodel 7.7}" --decode -v
