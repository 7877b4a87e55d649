"""Sixth session: the LM head alone (K=576, N=49152, M=1, random codes) in ORT CPU, 2 threads, each layout as its own
session, interleaved over 200 runs: FP32 MatMul vs INT4 / INT8 DequantizeLinear+MatMul (fused to MatMulNBits) and the
split heads (INT8 per channel for ids < n, INT4 g32 asym for the rest, Concat). Usage: python head_latency.py [ACCURACY_LEVEL]"""
import os, sys, tempfile, time, numpy as np, onnx, ml_dtypes, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto as T
K, N = 576, 49152
rng = np.random.default_rng(0)
def model(kind, g=32, asym=False, bits=4, parts=None):
    x = helper.make_tensor_value_info("x", T.FLOAT, [1, 1, K]); y = helper.make_tensor_value_info("y", T.FLOAT, [1, 1, N])
    inits, nodes = [], []
    if kind == "fp32":
        inits.append(numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w"))
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
    else:
        outs = []
        for i, (n, b, gg) in enumerate(parts or [(N, bits, g)]):
            if b == 4:
                dt = ml_dtypes.uint4 if asym else ml_dtypes.int4
                q = rng.integers(0, 16, (K, n)) if asym else rng.integers(-8, 8, (K, n))
            else:
                dt = np.uint8 if asym else np.int8
                q = rng.integers(0, 256, (K, n)) if asym else rng.integers(-128, 128, (K, n))
            gk = 64 if gg == -1 else gg
            inits.append(numpy_helper.from_array(q.astype(dt), f"q{i}"))
            inits.append(numpy_helper.from_array((rng.random((-(-K // gk), n)) * 0.01).astype(np.float32), f"s{i}"))
            ins = [f"q{i}", f"s{i}"]
            if asym:
                inits.append(numpy_helper.from_array(np.full((-(-K // gk), n), 8 if b == 4 else 128).astype(dt), f"z{i}")); ins.append(f"z{i}")
            nodes.append(helper.make_node("DequantizeLinear", ins, [f"w{i}"], axis=0, block_size=gk))
            outs.append(f"m{i}" if parts else "y")
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [outs[-1]]))
        if parts:
            nodes.append(helper.make_node("Concat", outs, ["y"], axis=-1))
    g = helper.make_graph(nodes, "h", [x], [y], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]); m.ir_version = 10
    return m.SerializeToString()
variants = {
    "fp32": model("fp32"), "int4 g32 asym": model("q", 32, True), "int4 g16 asym": model("q", 16, True),
    "int8 perchan asym": model("q", -1, True, bits=8),
    **{f"split {n} int8pc + int4 g32 asym": model("q", asym=True, parts=[(n, 8, -1), (N - n, 4, 32)]) for n in (2048, 4096, 8192)},
}
acc = sys.argv[1] if len(sys.argv) > 1 else "4"
tmp = tempfile.mkdtemp()
sess = {}
for k, b in variants.items():
    o = ort.SessionOptions(); o.log_severity_level = 3; o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    o.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", acc)
    o.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
    sess[k] = ort.InferenceSession(b, o, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(os.path.join(tmp, "opt.onnx")).graph.node]
    print(f"{k:36s} ops {ops}", flush=True)
xv = rng.standard_normal((1, 1, K)).astype(np.float32)
t = {k: [] for k in sess}
for k, s in sess.items():
    for _ in range(5): s.run(None, {"x": xv})
for r in range(200):
    for k, s in sess.items():
        a = time.perf_counter(); s.run(None, {"x": xv}); t[k].append(time.perf_counter() - a)
for k in sess: print(f"{k:36s} median {1000*np.median(t[k]):.3f} ms  p90 {1000*np.percentile(t[k],90):.3f}")
