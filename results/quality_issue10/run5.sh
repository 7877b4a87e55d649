#!/bin/bash
# Sixth session's head run (issue 10, target 3), one run: the best asymmetric setting (GPTAQ +
# group-aware reordering + MSE scale search) with a float head, an INT4 g32 head, and the split
# head (token ids < 4096 INT8 per channel, the rest INT4 g32; --head-int8-rows 4096), each head
# calibrated by the same solver; --decode saves and exports each checkpoint and times ORT decode.
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m tools.bench quality --out runs/head6/quality \
  --schemes --methods fp \
  --case "gptaq w4g128 reorder=group sym=0 mse_clip=1" \
  --case "gptaq w4g128 reorder=group sym=0 mse_clip=1 head_bits=4 head_group_size=32" \
  --case "gptaq w4g128 reorder=group sym=0 mse_clip=1 head_bits=4 head_group_size=32 head_int8_rows=4096" \
  --decode -v
