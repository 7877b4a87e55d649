"""Sixth session: ORT CPU decode steps of a fused export at a 512-token cache bound in place, timed (median of 55
steps) and, with PROF=1, profiled per operator type (profiling itself slows small nodes). Env: SPIN=0|1, L=buffer length.
Usage: python decode_profile.py EXPORT_DIR ACCURACY_LEVEL"""
import sys, json, collections, numpy as np, onnxruntime as ort, os, tempfile
path, acc = sys.argv[1], sys.argv[2]
o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
o.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("SPIN", "0"))
o.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", acc)
o.enable_profiling = os.environ.get("PROF") == "1"; o.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "p"); o.log_severity_level = 3
s = ort.InferenceSession(path + "/model.onnx", o, providers=["CPUExecutionProvider"])
ins = {i.name: i for i in s.get_inputs()}
L = int(os.environ.get("L", 513)); P = 512
b = s.io_binding()
vals = {}
for n, i in ins.items():
    if n.startswith("past"):
        h = np.random.randn(1, i.shape[1], L, i.shape[3]).astype(np.float32) * 0.1
        vals[n] = ort.OrtValue.ortvalue_from_numpy(h)
        b.bind_ortvalue_input(n, vals[n]); b.bind_ortvalue_output(n.replace("past_key_values", "present"), vals[n])
b.bind_output("logits", "cpu")
import time
ts = []
for step in range(60):
    t = P
    b.bind_cpu_input("input_ids", np.array([[100]], np.int64))
    b.bind_cpu_input("attention_mask", np.ones((1, t + 1), np.int64))
    b.bind_cpu_input("position_ids", np.array([[t]], np.int64))
    t0 = time.perf_counter(); s.run_with_iobinding(b); ts.append(time.perf_counter() - t0)
print("median step ms", 1000 * np.median(ts[5:]))
if not o.enable_profiling: sys.exit()
f = s.end_profiling()
ev = json.load(open(f))
by_type = collections.defaultdict(float); by_node = collections.defaultdict(float); n_steps = collections.Counter()
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        by_type[e["args"]["op_name"]] += e["dur"]; by_node[e["name"][:-12]] += e["dur"]
    if e.get("cat") == "Session" and e["name"] == "model_run": n_steps["run"] += 1
runs = n_steps["run"]
print("runs", runs)
tot = sum(by_type.values()) / runs / 1000
print(f"kernel total ms/step {tot:.2f}")
for k, v in sorted(by_type.items(), key=lambda x: -x[1]): print(f"  {k:40s} {v/runs/1000:.3f} ms")
print("top nodes")
for k, v in sorted(by_node.items(), key=lambda x: -x[1])[:8]: print(f"  {k:60s} {v/runs/1000:.3f} ms")
os.remove(f)
