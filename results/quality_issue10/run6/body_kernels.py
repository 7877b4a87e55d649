"""Seventh session: decode cost (M = 1) of SmolLM2-135M's 30 layers of body weights (q|k|v 576x960, o 576x576,
gate|up 576x3072, down 1536x576) in ORT CPU, one node per matrix, per layout: `fp32` (MatMul) or
`int4:BLOCK:ASYM:ACCURACY_LEVEL` (MatMulNBits, K padded to whole blocks as ORT stores it). Layouts are timed in
ROUNDS interleaved rounds (median of 35 runs each). Env: T threads (2), SPIN 0|1 (1), ROUNDS (3).
Usage: python body_kernels.py fp32 int4:128:1:4 int4:128:0:4 ..."""
import os, sys, time, numpy as np, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto as T
SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576)] * 30


def weight_node(i, K, N, layout, rng):
    """(initializers, node, bytes) of one matrix in ``layout``."""
    x = "x" if K == 576 else "h"
    if layout == "fp32":
        w = numpy_helper.from_array(rng.standard_normal((K, N), dtype=np.float32) * 0.02, f"w{i}")
        return [w], helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]), K * N * 4
    _, blk, asym, acc = layout.split(":")
    blk, nb = int(blk), -(-K // int(blk))
    arrays = {f"w{i}": rng.integers(0, 256, (N, nb, blk // 2), dtype=np.uint8),
              f"s{i}": rng.random(N * nb, dtype=np.float32) * 0.01 + 0.001}
    if int(asym):
        arrays[f"z{i}"] = rng.integers(0, 256, N * ((nb + 1) // 2), dtype=np.uint8)
    node = helper.make_node("MatMulNBits", [x, *arrays], [f"y{i}"], domain="com.microsoft", K=K, N=N, bits=4,
                            block_size=blk, accuracy_level=int(acc))
    return [numpy_helper.from_array(a, n) for n, a in arrays.items()], node, sum(a.nbytes for a in arrays.values())


def session(layout):
    rng = np.random.default_rng(0)
    inits, nodes, outs, nbytes = [], [], [], 0
    for i, (K, N) in enumerate(SHAPES):
        ws, node, size = weight_node(i, K, N, layout, rng)
        inits += ws; nodes.append(node); nbytes += size
        outs.append(helper.make_tensor_value_info(f"y{i}", T.FLOAT, [1, 1, N]))
    ins = [helper.make_tensor_value_info("x", T.FLOAT, [1, 1, 576]), helper.make_tensor_value_info("h", T.FLOAT, [1, 1, 1536])]
    m = helper.make_model(helper.make_graph(nodes, "g", ins, outs, initializer=inits),
                          opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    o = ort.SessionOptions(); o.log_severity_level = 3; o.intra_op_num_threads = int(os.environ.get("T", 2))
    o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("SPIN", "1"))
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"]), nbytes


rng = np.random.default_rng(1)
feed = {"x": rng.standard_normal((1, 1, 576)).astype(np.float32), "h": rng.standard_normal((1, 1, 1536)).astype(np.float32)}
sessions = {layout: session(layout) for layout in sys.argv[1:]}
for r in range(int(os.environ.get("ROUNDS", 3))):
    for layout, (s, nbytes) in sessions.items():
        time.sleep(0.05)
        ts = []
        for _ in range(40):
            a = time.perf_counter(); s.run(None, feed); ts.append(time.perf_counter() - a)
        med = np.median(ts[5:])
        print(f"round {r} {layout:14s} {nbytes / 1e6:6.1f} MB  median {1000 * med:.3f} ms  {nbytes / med / 1e9:5.1f} GB/s", flush=True)
