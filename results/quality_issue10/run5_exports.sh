# Sourced by the run5/run6 scripts: the three fused exports of run5.sh (float head, INT4 g32 head,
# split head), as LABEL=DIR arguments for the latency bench.
O=runs/head6/quality/onnx
B=gptaq_w4g128_mse_clip-True_reorder-group_sym-False
H=gptaq_w4g128_head_bits-4_head_group_size-32_mse_clip-True_reorder-group_sym-False
S=gptaq_w4g128_head_bits-4_head_group_size-32_head_int8_rows-4096_mse_clip-True_reorder-group_sym-False
RUN5_EXPORTS="float-head=$O/$B int4g32-head=$O/$H split-head=$O/$S"
