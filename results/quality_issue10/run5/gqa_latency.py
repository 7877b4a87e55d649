"""Sixth session: ORT CPU GroupQueryAttention decode steps of SmolLM2-135M's shape (9 query heads, 3 KV heads,
head size 64, 512 cached tokens, cache bound in place), 30 layers in one graph, with and without the padding bias
and the rotary tables. Env: T=threads (2), SPIN=0|1. Usage: python gqa_latency.py"""
import os, time, numpy as np, onnx, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto as T
H, KV, D, P, MAXL = 9, 3, 64, 512, 2048
rng = np.random.default_rng(0)
def model(bias, rotary, n=1):
    ins = [helper.make_tensor_value_info("qkv", T.FLOAT, [1, 1, (H + 2 * KV) * D]),
           helper.make_tensor_value_info("seqlens", T.INT32, [1]), helper.make_tensor_value_info("total", T.INT32, []),
           helper.make_tensor_value_info("bias", T.FLOAT, [1, 1, 1, P + 1])]
    past = [helper.make_tensor_value_info(f"past{i}{k}", T.FLOAT, [1, KV, P + 1, D]) for i in range(n) for k in "kv"]
    outs = [helper.make_tensor_value_info(f"out{i}", T.FLOAT, [1, 1, H * D]) for i in range(n)]
    pres = [helper.make_tensor_value_info(f"present{i}{k}", T.FLOAT, [1, KV, P + 1, D]) for i in range(n) for k in "kv"]
    inits = [numpy_helper.from_array(rng.standard_normal((MAXL, D // 2)).astype(np.float32), c) for c in ("cos", "sin")]
    nodes = [helper.make_node("GroupQueryAttention", ["qkv", "", "", f"past{i}k", f"past{i}v", "seqlens", "total",
                              "cos" if rotary else "", "sin" if rotary else "", "", "bias" if bias else ""],
                              [f"out{i}", f"present{i}k", f"present{i}v"], domain="com.microsoft", num_heads=H,
                              kv_num_heads=KV, scale=D ** -0.5, do_rotary=int(rotary)) for i in range(n)]
    g = helper.make_graph(nodes, "g", ins + past, outs + pres, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]); m.ir_version = 10
    return m.SerializeToString()
N = 30
var = {f"bias={b} rotary={r}": model(b, r, N) for b in (True, False) for r in (True, False)}
res = {}
for k, mb in var.items():
    o = ort.SessionOptions(); o.log_severity_level = 3; o.intra_op_num_threads = int(os.environ.get("T", 2)); o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("SPIN", "0"))
    s = ort.InferenceSession(mb, o, providers=["CPUExecutionProvider"])
    b = s.io_binding(); vals = []
    for i in range(N):
        for kk in "kv":
            v = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((1, KV, P + 1, D)).astype(np.float32) * 0.1); vals.append(v)
            b.bind_ortvalue_input(f"past{i}{kk}", v); b.bind_ortvalue_output(f"present{i}{kk}", v)
        b.bind_output(f"out{i}", "cpu")
    b.bind_cpu_input("qkv", rng.standard_normal((1, 1, (H + 2 * KV) * D)).astype(np.float32))
    b.bind_cpu_input("seqlens", np.array([P], np.int32)); b.bind_cpu_input("total", np.array(P + 1, np.int32))
    if "bias=True" in k: b.bind_cpu_input("bias", np.zeros((1, 1, 1, P + 1), np.float32))
    ts = []
    for r in range(60):
        a = time.perf_counter(); s.run_with_iobinding(b); ts.append(time.perf_counter() - a)
    print(f"{k:28s} {N} layers: median {1000*np.median(ts[10:]):.3f} ms ({1000*np.median(ts[10:])/N:.3f}/layer)", flush=True)
