#!/usr/bin/env python3
"""Microbench: ORT CPU time of the LM-head matmul [1,576] x [576,49152] in several encodings."""
import tempfile, time, numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, TensorProto as T, numpy_helper as nh
K, N = 576, 49152  # SmolLM2-135M head: hidden 576, vocabulary 49152
WORK = tempfile.mkdtemp()
rng = np.random.default_rng(0)
W = rng.standard_normal((K, N)).astype(np.float32) * 0.05
x = rng.standard_normal((1, 1, K)).astype(np.float32)

def model(nodes, inits, opset=21):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 1, K])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 1, N])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset), h.make_opsetid("com.microsoft", 1)], ir_version=10)

def qdq(bits, block):
    qmax = 2 ** (bits - 1) - 1
    nb = -(-K // block)
    Wp = np.zeros((nb * block, N), np.float32); Wp[:K] = W
    Wg = Wp.reshape(nb, block, N)
    s = np.abs(Wg).max(1) / qmax
    q = np.clip(np.round(Wg / s[:, None]), -qmax - 1, qmax).reshape(nb * block, N)[:K]
    dt = T.INT4 if bits == 4 else T.INT8
    qi = h.make_tensor("q", dt, [K, N], q.astype(np.int8).flatten().tolist() if bits == 4 else q.astype(np.int8).tobytes(), raw=bits != 4)
    si = nh.from_array(s.astype(np.float32), "s")
    nodes = [h.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0, block_size=block),
             h.make_node("MatMul", ["x", "w"], ["y"])]
    return model(nodes, [qi, si])

def fp():
    return model([h.make_node("MatMul", ["x", "w"], ["y"])], [nh.from_array(W, "w")])

def dqmm():
    s = np.abs(W).max(0) / 127
    q = np.clip(np.round(W / s), -128, 127).astype(np.int8)
    nodes = [h.make_node("DynamicQuantizeMatMul", ["x", "q", "s"], ["y"], domain="com.microsoft")]
    return model(nodes, [nh.from_array(q, "q"), nh.from_array(s.astype(np.float32), "s")])

def run(name, m, level=None, iters=300):
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    if level is not None:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level))
    so.optimized_model_filepath = f"{WORK}/{name}.opt.onnx"
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = sorted({n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node})
    y = s.run(None, {"x": x})[0]
    for _ in range(30): s.run(None, {"x": x})
    ts = []
    for _ in range(iters):
        t = time.perf_counter(); s.run(None, {"x": x}); ts.append(time.perf_counter() - t)
    ref = x[0] @ W
    err = float(np.abs(y[0] - ref).max() / np.abs(ref).max())
    print(f"{name:28s} median {np.median(ts)*1e3:7.3f} ms  p90 {np.percentile(ts,90)*1e3:7.3f}  ops {ops}  relerr {err:.3g}", flush=True)

cases = [("fp32", fp(), None)]
for bits in (4, 8):
    for block in (32, 128, 576, 1024) if bits == 8 else (32, 64, 128, 1024):
        for lvl in (0, 1, 4):
            cases.append((f"int{bits}_b{block}_lvl{lvl}", qdq(bits, block), lvl))
cases.append(("dynquant_matmul_int8", dqmm(), None))
for rnd in range(2):
    for name, m, lvl in cases:
        run(name, m, lvl)
