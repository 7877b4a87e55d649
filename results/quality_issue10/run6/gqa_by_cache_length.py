"""GQA decode cost vs cached length P (30 layers, SmolLM2 shape, cache bound in place)."""
import os, sys, time, numpy as np, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto as T
H, KV, D, N = 9, 3, 64, 30
rng = np.random.default_rng(0)
def model(P, buf):
    ins = [helper.make_tensor_value_info("qkv", T.FLOAT, [1, 1, (H + 2 * KV) * D]),
           helper.make_tensor_value_info("seqlens", T.INT32, [1]), helper.make_tensor_value_info("total", T.INT32, []),
           helper.make_tensor_value_info("bias", T.FLOAT, [1, 1, 1, P + 1])]
    past = [helper.make_tensor_value_info(f"past{i}{k}", T.FLOAT, [1, KV, buf, D]) for i in range(N) for k in "kv"]
    outs = [helper.make_tensor_value_info(f"out{i}", T.FLOAT, [1, 1, H * D]) for i in range(N)]
    pres = [helper.make_tensor_value_info(f"present{i}{k}", T.FLOAT, [1, KV, buf, D]) for i in range(N) for k in "kv"]
    inits = [numpy_helper.from_array(rng.standard_normal((4096, D // 2)).astype(np.float32), c) for c in ("cos", "sin")]
    nodes = [helper.make_node("GroupQueryAttention", ["qkv", "", "", f"past{i}k", f"past{i}v", "seqlens", "total",
                              "cos", "sin", "", "bias"],
                              [f"out{i}", f"present{i}k", f"present{i}v"], domain="com.microsoft", num_heads=H,
                              kv_num_heads=KV, scale=D ** -0.5, do_rotary=1) for i in range(N)]
    g = helper.make_graph(nodes, "g", ins + past, outs + pres, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]); m.ir_version = 10
    return m.SerializeToString()
for P, buf in [(int(a), int(b)) for a, b in (x.split(":") for x in sys.argv[1:])]:
    o = ort.SessionOptions(); o.log_severity_level = 3; o.intra_op_num_threads = int(os.environ.get("T", 2)); o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("SPIN", "0"))
    s = ort.InferenceSession(model(P, buf), o, providers=["CPUExecutionProvider"])
    b = s.io_binding()
    for i in range(N):
        for kk in "kv":
            v = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((1, KV, buf, D)).astype(np.float32) * 0.1)
            b.bind_ortvalue_input(f"past{i}{kk}", v); b.bind_ortvalue_output(f"present{i}{kk}", v)
        b.bind_output(f"out{i}", "cpu")
    b.bind_cpu_input("qkv", rng.standard_normal((1, 1, (H + 2 * KV) * D)).astype(np.float32))
    b.bind_cpu_input("seqlens", np.array([P], np.int32)); b.bind_cpu_input("total", np.array(P + 1, np.int32))
    b.bind_cpu_input("bias", np.zeros((1, 1, 1, P + 1), np.float32))
    ts = []
    for r in range(80):
        a = time.perf_counter(); s.run_with_iobinding(b); ts.append(time.perf_counter() - a)
    print(f"P={P:5d} buf={buf:5d} T={o.intra_op_num_threads} spin={os.environ.get('SPIN','0')}: median {1000*np.median(ts[10:]):.3f} ms ({1000*np.median(ts[10:])/N:.3f}/layer)", flush=True)
