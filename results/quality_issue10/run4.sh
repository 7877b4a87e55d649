#!/bin/bash
# The fourth session's head run (issue 10, target 3): the best symmetric (TensorRT-compatible)
# setting, GPTAQ + group-aware reordering + MSE scale search, with a float head and with an
# INT4 g32 head calibrated by the same solver (the head reuses the body's reorder / MSE / sym),
# and the asymmetric best with the same head; --decode exports each pair and times ORT CPU decode.
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m tools.bench quality --out runs/head5 \
  --schemes --methods fp \
  --case "gptaq w4g128 reorder=group mse_clip=1" \
  --case "gptaq w4g128 reorder=group mse_clip=1 head_bits=4 head_group_size=32" \
  --case "gptaq w4g128 reorder=group sym=0 mse_clip=1" \
  --case "gptaq w4g128 reorder=group sym=0 mse_clip=1 head_bits=4 head_group_size=32" \
  --decode -v
