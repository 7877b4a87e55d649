"""Head sweep, step 2: quantize only the LM head in several ways on cached features and score each (see output.txt)."""
import sys, math, time, torch, torch.nn.functional as F
from quantize.gptq import solve, rtn
from quantize.hessian import HessianAccumulator
torch.set_num_threads(2)
d = torch.load(sys.argv[1])
W = d["W"].float()
def acc(asym):
    a = HessianAccumulator(576, asym=asym)
    for i in range(d["calib_q"].shape[0]):
        a.add(d["calib_q"][i:i+1], d["calib_fp"][i:i+1] if asym else None)
    return a
A = acc(True)
def ppl(Wh):
    nll = []
    for i in range(d["eval_q"].shape[0]):
        logits = d["eval_q"][i, :-1] @ Wh.t()
        nll.append(F.cross_entropy(logits, d["eval_ids"][i, 1:]).item())
    return math.exp(sum(nll) / len(nll))
base = ppl(W)
print(f"float head ppl {base:.4f}", flush=True)
def q(method, bits, g, sym=True, mse=False, reorder="none", alpha=0.25, rows=None):
    Wr = W if rows is None else W[rows]
    if method == "rtn":
        return rtn(Wr, bits=bits, group_size=g, sym=sym, mse_clip=mse).weight
    return solve(Wr, A.H, bits=bits, group_size=g, sym=sym, mse_clip=mse, reorder=reorder,
                 dXXT=A.dXXT if method == "gptaq" else None, alpha=alpha).weight
def report(name, Wh):
    p = ppl(Wh); print(f"{name:40s} ppl {p:.4f}  cost {100*(p/base-1):+.2f}%", flush=True)
cases = sys.argv[2].split(",")
def options(opts):
    kw = {}
    for o in opts:
        if o == "asym": kw["sym"] = False
        elif o == "mse": kw["mse"] = True
        elif o.startswith("a="): kw["alpha"] = float(o[2:])
        else: kw["reorder"] = o
    return kw
for c in cases:
    if c.startswith("split"):  # split:N:G[:opts]  ids < N at INT8 per channel, the rest INT4 gG; opts apply to both
        _, n, g, *opts = c.split(":"); n, g = int(n), int(g)
        kw = options(opts)
        hi = q("gptaq", 8, -1, rows=slice(0, n), **kw); lo = q("gptaq", 4, g, rows=slice(n, None), **kw)
        report(c, torch.cat([hi, lo]))
        continue
    m, bits, g, *opts = c.split(":")
    report(c, q(m, int(bits), int(g), **options(opts)))
