"""FP32 MatMul decode cost (M=1) over SmolLM2-135M's 30 layers of body shapes (weights [K, N])."""
import os, time, numpy as np, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto as T
rng = np.random.default_rng(0)
shapes = [(576, 960), (576, 576), (576, 3072), (1536, 576)] * 30
inits, nodes, outs, nbytes = [], [], [], 0
for i, (K, N) in enumerate(shapes):
    w = rng.standard_normal((K, N), dtype=np.float32) * 0.02
    inits.append(numpy_helper.from_array(w, f"w{i}")); nbytes += w.nbytes
    nodes.append(helper.make_node("MatMul", ["x" if K == 576 else "h", f"w{i}"], [f"y{i}"]))
    outs.append(helper.make_tensor_value_info(f"y{i}", T.FLOAT, [1, 1, N]))
g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 1, 576]),
                                   helper.make_tensor_value_info("h", T.FLOAT, [1, 1, 1536])], outs, initializer=inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]); m.ir_version = 10
o = ort.SessionOptions(); o.log_severity_level = 3; o.intra_op_num_threads = int(os.environ.get("T", 2)); o.inter_op_num_threads = 1
o.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("SPIN", "0"))
s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
feed = {"x": rng.standard_normal((1, 1, 576)).astype(np.float32), "h": rng.standard_normal((1, 1, 1536)).astype(np.float32)}
ts = []
for r in range(40):
    a = time.perf_counter(); s.run(None, feed); ts.append(time.perf_counter() - a)
med = np.median(ts[5:])
print(f"FP32 MatMul T={o.intra_op_num_threads} SPIN={os.environ.get('SPIN','0')}: {nbytes/1e6:.1f} MB, median {1000*med:.3f} ms, {nbytes/med/1e9:.1f} GB/s", flush=True)
