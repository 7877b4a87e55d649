"""Head sweep, step 1 (results/quality_issue10/head_sweep): cache final-norm features of a checkpoint and its FP model.

Usage: python feats.py CHECKPOINT OUT.pt (run from the repository root, in its venv)."""
import sys, torch
from quantize.loading import load_model
from quantize.checkpoint import load_quantized
from quantize.data import CalibConfig, calibration_tokens, eval_tokens
torch.manual_seed(0)
ckpt, out = sys.argv[1], sys.argv[2]
loaded = load_model(None)
fp, tok = loaded.model.eval(), loaded.tokenizer
q = load_quantized(ckpt).eval()
calib = calibration_tokens(CalibConfig(None, 32, 512, 0), tok)
ev = eval_tokens(None, tok)
ev = ev.view(-1)[: 10 * 2048].view(10, 2048)
def feats(model, ids, bs):
    outs = []
    grab = {}
    h = model.model.norm.register_forward_hook(lambda m, i, o: grab.__setitem__("x", o.detach()))
    with torch.no_grad():
        for s in range(0, ids.shape[0], bs):
            model.model(input_ids=ids[s:s+bs], use_cache=False)
            outs.append(grab["x"].clone())
    h.remove()
    return torch.cat(outs)
torch.save({"calib_fp": feats(fp, calib, 4), "calib_q": feats(q, calib, 4), "eval_q": feats(q, ev, 1),
            "eval_ids": ev, "W": fp.lm_head.weight.detach().clone(),
            "Wq_head": q.lm_head.weight.detach().clone() if hasattr(q.lm_head, "weight") else None}, out)
print("saved", out)
