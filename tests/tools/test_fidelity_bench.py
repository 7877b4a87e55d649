import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime")

from quantize.__main__ import main as quantize_main  # noqa: E402
from quantize.cli import run_cli  # noqa: E402
from quantize.errors import UserError  # noqa: E402
from tiny_models import save_tiny_llama, tiny_llama, tiny_text  # noqa: E402
from tools import bench  # noqa: E402
from tools.fidelity_bench import compare_window, perturbed_embeddings, summarize  # noqa: E402


def test_compare_window_errors_agreement_and_nll():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(6, 11, generator=gen)
    ids = torch.randint(0, 11, (6,), generator=gen)
    same = compare_window(ref.numpy(), ref.numpy(), ids.numpy())
    assert same.rel_error == 0.0 and same.agree == 6 and same.positions == 6
    assert same.nll_torch == pytest.approx(F.cross_entropy(ref[:-1], ids[1:]).item(), rel=1e-6)

    cand = ref.clone()
    cand[2] = -cand[2]  # flips that row's argmax
    other = compare_window(ref.numpy(), cand.numpy(), ids.numpy())
    assert other.agree == 5
    assert other.rel_error == pytest.approx((2 * ref[2].norm() / ref.norm()).item(), rel=1e-5)
    summary = summarize([same, other])
    assert summary["top1_agreement"] == 11 / 12 and summary["rel_logit_error_max"] == other.rel_error
    assert summary["ppl_torch"] == pytest.approx(np.exp(same.nll_torch), rel=1e-9)

    with pytest.raises(UserError, match="differ in shape"):
        compare_window(ref.numpy(), ref[:, :5].numpy(), ids.numpy())


def test_fidelity_of_a_tiny_w4_export(tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "tiny")
    calib = tmp_path / "calib.txt"
    calib.write_text(tiny_text())
    ckpt = tmp_path / "q"
    assert run_cli(quantize_main, [str(model), "--calib", str(calib), "--nsamples", "4", "--seqlen", "16",
                                   "--group-size", "32", "--no-progress", "--out", str(ckpt)]) == 0
    capsys.readouterr()
    report, dump = tmp_path / "fidelity.json", tmp_path / "optimized.onnx"
    assert bench.main(["fidelity", "--checkpoint", str(ckpt), "--eval-seqlen", "32", "--eval-windows", "2",
                       "--dump-optimized", str(dump), "--noise-floor", "1e-6", "--json", str(report)]) == 0
    assert capsys.readouterr().out.startswith("W4A16 (accuracy_level 1, 2 x 32 tokens)")
    row = json.loads(report.read_text())["llm"]
    assert (tmp_path / "q-onnx" / "model.onnx").is_file() and row["windows"] == 2
    assert row["top1_agreement"] >= 0.99 and row["rel_logit_error_max"] < 1e-3
    assert abs(row["ppl_rel_diff"]) < 1e-3
    floor = row["noise_floor"]  # W4A16 is well conditioned: a 1e-6 input jitter stays about 1e-6
    assert floor["rel_perturbation"] == 1e-6 and 0 < floor["rel_logit_error_max"] < 1e-4
    assert floor["top1_agreement"] >= 0.99
    # the default export is the fused ORT decoder: q|k|v and gate|up are one INT4 block each (8 of 14 Linears)
    assert row["optimized_ops"]["MatMulNBits"] == 8 and "DequantizeLinear" not in row["optimized_ops"]


def test_fidelity_refuses_a_non_checkpoint(tmp_path, capsys):
    assert run_cli(bench.main, ["fidelity", "--checkpoint", str(tmp_path)]) == 2
    assert "is not a quantized checkpoint" in capsys.readouterr().err


def test_perturbed_embeddings_jitter_only_inside_the_block():
    model = tiny_llama().eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with perturbed_embeddings(model, 0.0):
            zero = model(input_ids=ids).logits
        with perturbed_embeddings(model, 1e-3):
            first = model(input_ids=ids).logits
        with perturbed_embeddings(model, 1e-3):
            second = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.equal(zero, ref) and torch.equal(after, ref)
    assert torch.equal(first, second)  # the same signs every time: the floor is reproducible
    rel = ((first - ref).norm() / ref.norm()).item()
    assert 1e-6 < rel < 1e-1


def test_fidelity_refuses_a_bad_noise_floor(tmp_path, capsys):
    (tmp_path / "quant_config.json").write_text("{}")
    assert run_cli(bench.main, ["fidelity", "--checkpoint", str(tmp_path), "--noise-floor", "2"]) == 2
    assert "--noise-floor 2.0 is invalid" in capsys.readouterr().err
