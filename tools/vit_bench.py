"""ViT quality benchmark on real images: top-1 of FP, RTN, GPTQ and GPTAQ on scikit-learn's digits.

Data: ``sklearn.datasets.load_digits`` (1797 real 8x8 scans of handwritten digits, shipped
inside scikit-learn: nothing is downloaded), split with a fixed seed into train and test
(default 1297 / 500). Images are upsampled to ``img_size`` (bilinear), the gray channel is
repeated three times and normalized with the training set's mean and std.

Model: a small timm ``VisionTransformer`` trained from scratch on the training split with
AdamW (cosine schedule, label smoothing, random +-2 pixel shifts), everything seeded. The
trained weights are cached as safetensors under ``--cache`` keyed by the data and training
settings, so reruns skip training (bit-exactness of a retrain also depends on the thread count).

Quantization: copies of the trained model are quantized with RTN, GPTQ and GPTAQ at each
scheme, using GPTAQ's ViT settings: per-channel asymmetric weights with MSE clipping, damp
0.1, act-order; ``A4`` adds dynamic per-token asymmetric 4-bit activations (clip ratio 1.0).
Calibration: ``--calib`` seeded training images. Top-1 is measured on the test split, with
the mean KL divergence of the quantized model's test predictions from the FP model's: digits
are easy, so top-1 moves by few images (1 image = 0.2%, and the thread count alone changes a
few predictions) while the KL still separates RTN / GPTQ / GPTAQ. ``--onnx`` also exports each
quantized model and scores it in ONNX Runtime (top-1 and agreement with PyTorch).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from quantize.errors import UserError

log = logging.getLogger(__name__)

METHODS = ("rtn", "gptq", "gptaq")
DEFAULT_SCHEMES = ("W4A16", "W4A4", "W3A16", "W2A4")
TIMM_NAME = "vit_tiny_patch16_224"  # the architecture; every size below is overridden
#: Bump when the training procedure changes, so cached weights of the old one are not reused.
RECIPE = 1


@dataclass(frozen=True)
class BenchSettings:
    """Everything that determines the data split, the trained model and the calibration set."""

    img_size: int = 16
    patch_size: int = 4
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    test_size: int = 500
    train_limit: int | None = None  # use only this many training images (tests)
    calib: int = 128
    seed: int = 0

    def model_kwargs(self) -> dict[str, Any]:
        return dict(img_size=self.img_size, patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth,
                    num_heads=self.num_heads, num_classes=10)

    def training_key(self) -> str:
        """Short digest of the settings that determine the trained weights (the cache key)."""
        fields = {k: v for k, v in asdict(self).items() if k != "calib"} | {"recipe": RECIPE}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Scheme:
    name: str
    w_bits: int
    a_bits: int


@dataclass(frozen=True)
class Result:
    scheme: str
    w_bits: int
    a_bits: int
    method: str
    top1: float
    kl_fp: float  # mean KL(FP || quantized) of the test predictions: finer than top-1 on an easy task
    seconds: float
    top1_ort: float | None = None  # --onnx: the exported model in ONNX Runtime (accuracy_level 1)
    ort_agreement: float | None = None  # --onnx: fraction of test images where ORT and PyTorch agree


def parse_scheme(text: str) -> Scheme:
    """``"W4A16"`` -> ``Scheme("W4A16", 4, 16)``; weights 2..8 bits, activations 4, 8 or 16."""
    m = re.fullmatch(r"[Ww](\d)[Aa](\d+)", text.strip())
    if not m or not 2 <= int(m.group(1)) <= 8 or int(m.group(2)) not in (4, 8, 16):
        raise UserError(f"scheme {text!r} is not W<2..8>A<4|8|16> (e.g. W4A16, W4A4)")
    return Scheme(f"W{m.group(1)}A{m.group(2)}", int(m.group(1)), int(m.group(2)))


def quant_config(method: str, scheme: Scheme, seed: int = 0):
    """GPTAQ's ViT settings: per-channel asym weights + MSE clip, damp 0.1, act-order; per-token asym activations."""
    from quantize import QuantConfig

    return QuantConfig(method=method, w_bits=scheme.w_bits, group_size=-1, sym=False, mse_clip=True,
                       act_order=True, damp=0.1, a_bits=scheme.a_bits, a_sym=False, a_clip_ratio=1.0, seed=seed)


# ----------------------------------------------------------------------------- data


def load_digits_split(settings: BenchSettings):
    """``(x_train, y_train, x_test, y_test)``: float ``[n, 3, S, S]`` normalized, int64 labels."""
    import torch
    import torch.nn.functional as F

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the vit benchmark needs scikit-learn: pip install 'gptaq-deploy[vision]'") from None
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [n, 1, 8, 8] in [0, 1]
    labels = torch.tensor(digits.target, dtype=torch.int64)
    n = images.shape[0]
    if not 0 < settings.test_size < n:
        raise UserError(f"--test-size must be in 1..{n - 1} (got {settings.test_size})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))
    test_idx, train_idx = perm[: settings.test_size], perm[settings.test_size :]
    if settings.train_limit is not None:
        train_idx = train_idx[: settings.train_limit]
    if settings.img_size != 8:
        images = F.interpolate(images, size=(settings.img_size, settings.img_size), mode="bilinear", align_corners=False)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = ((images - mean) / std).repeat(1, 3, 1, 1).contiguous()
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def calibration_images(x_train, count: int, seed: int):
    import torch

    count = min(count, x_train.shape[0])
    idx = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(seed + 1))[:count]
    return x_train[idx]


def _shift(x, gen, max_shift: int = 2):
    """Random translation by up to ``max_shift`` pixels per image (background padding)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    padded = F.pad(x - background, (max_shift,) * 4) + background
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


# ----------------------------------------------------------------------------- model


def build_model(settings: BenchSettings):
    import timm
    import torch

    torch.manual_seed(settings.seed)
    model = timm.create_model(TIMM_NAME, pretrained=False, **settings.model_kwargs())
    model.quant_source = {"library": "timm", "name": TIMM_NAME, "kwargs": settings.model_kwargs()}
    return model


def train_model(settings: BenchSettings, x_train, y_train):
    """Train from scratch (seeded); returns the model in eval mode and the seconds it took."""
    import torch
    import torch.nn.functional as F

    model = build_model(settings)
    gen = torch.Generator().manual_seed(settings.seed + 2)
    steps_per_epoch = math.ceil(x_train.shape[0] / settings.batch_size)
    total = max(1, settings.epochs * steps_per_epoch)
    warmup = min(total // 10, 2 * steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    start = time.perf_counter()
    model.train()
    for epoch in range(settings.epochs):
        perm = torch.randperm(x_train.shape[0], generator=gen)
        running = 0.0
        for i in range(0, x_train.shape[0], settings.batch_size):
            idx = perm[i : i + settings.batch_size]
            loss = F.cross_entropy(model(_shift(x_train[idx], gen)), y_train[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * idx.numel()
        log.debug("epoch %d/%d loss %.4f", epoch + 1, settings.epochs, running / x_train.shape[0])
    seconds = time.perf_counter() - start
    return model.eval(), seconds


def trained_model(settings: BenchSettings, x_train, y_train, cache: Path | None):
    """The trained model from ``cache`` when present, else trained now (and cached)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = cache / f"vit_digits_{settings.training_key()}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        model = build_model(settings)
        model.load_state_dict(load_file(str(path)))
        meta = json.loads((path.with_suffix(".json")).read_text()) if path.with_suffix(".json").is_file() else {}
        log.info("loaded trained weights from %s", path)
        return model.eval(), {"cached": True, "path": str(path), "seconds": meta.get("train_seconds")}
    log.info("training %s on %d digits for %d epochs", TIMM_NAME, x_train.shape[0], settings.epochs)
    model, seconds = train_model(settings, x_train, y_train)
    info = {"cached": False, "path": str(path) if path else None, "seconds": seconds}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps({"settings": asdict(settings), "train_seconds": seconds,
                                                         "torch": torch.__version__, "threads": torch.get_num_threads()},
                                                        indent=2))
    return model, info


# ----------------------------------------------------------------------------- benchmark


def kl_to_fp(fp_logits, logits) -> float:
    """Mean over images of ``KL(softmax(fp) || softmax(q))`` (nats)."""
    import torch.nn.functional as F

    return F.kl_div(logits.log_softmax(-1), fp_logits.log_softmax(-1), log_target=True, reduction="batchmean").item()


def quantize_and_score(model, method: str, scheme: Scheme, calib, x_test, y_test, fp_logits, seed: int,
                       onnx: bool = False) -> Result:
    from quantize import quantize_model
    from quantize.evaluate import predict_logits

    qmodel = copy.deepcopy(model)
    start = time.perf_counter()
    quantize_model(qmodel, calib, quant_config(method, scheme, seed), device="cpu", progress=False, batch_size=32)
    seconds = time.perf_counter() - start
    logits = predict_logits(qmodel, x_test, batch_size=250)
    top1 = (logits.argmax(-1) == y_test).double().mean().item()
    result = Result(scheme.name, scheme.w_bits, scheme.a_bits, method, top1, kl_to_fp(fp_logits, logits), seconds)
    if not onnx:
        return result
    ort_logits = onnx_logits(qmodel, x_test)
    return dataclasses.replace(result, top1_ort=(ort_logits.argmax(-1) == y_test).double().mean().item(),
                               ort_agreement=(ort_logits.argmax(-1) == logits.argmax(-1)).double().mean().item())


def onnx_logits(model, images):
    """Logits ``[n, classes]`` fp32 of ``model`` exported to ONNX (fp32 graph) and run by ORT at accuracy level 1."""
    import tempfile

    import torch

    from export import ExportConfig, export_onnx
    from runtime.ort import OrtSession

    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, Path(tmp) / "onnx", ExportConfig())
        with OrtSession(Path(tmp) / "onnx" / "model.onnx", accuracy_level=1) as session:
            return torch.from_numpy(session.run({"pixel_values": images.numpy()})["logits"]).float()


def run_benchmark(settings: BenchSettings, schemes: Sequence[Scheme], methods: Sequence[str],
                  cache: Path | None, onnx: bool = False) -> dict[str, Any]:
    import torch

    from quantize.evaluate import predict_logits, top1_accuracy

    x_train, y_train, x_test, y_test = load_digits_split(settings)
    model, train_info = trained_model(settings, x_train, y_train, cache)
    fp_logits = predict_logits(model, x_test, batch_size=250)
    fp_top1 = (fp_logits.argmax(-1) == y_test).double().mean().item()
    train_info["train_top1"] = top1_accuracy(model, x_train, y_train, batch_size=250)
    print(f"FP top-1 {100 * fp_top1:.2f}% on {x_test.shape[0]} test digits "
          f"(train {100 * train_info['train_top1']:.2f}%, training {_seconds(train_info['seconds'])}"
          f"{', cached' if train_info['cached'] else ''})", file=sys.stderr, flush=True)
    calib = calibration_images(x_train, settings.calib, settings.seed)
    results = []
    for scheme in schemes:
        for method in methods:
            results.append(quantize_and_score(model, method, scheme, calib, x_test, y_test, fp_logits, settings.seed, onnx))
            r = results[-1]
            print(f"  {r.scheme:6s} {r.method:5s} top-1 {100 * r.top1:6.2f}%  KL {r.kl_fp:.5f}  {r.seconds:6.2f} s",
                  file=sys.stderr, flush=True)
    return {
        "dataset": {"name": "sklearn load_digits", "train": int(x_train.shape[0]), "test": int(x_test.shape[0]),
                    "calibration": int(calib.shape[0]), "image": list(x_test.shape[1:])},
        "settings": asdict(settings),
        "model": {"timm": TIMM_NAME, "kwargs": settings.model_kwargs(),
                  "params": sum(p.numel() for p in model.parameters())},
        "train": train_info,
        "fp_top1": fp_top1,
        "results": [asdict(r) for r in results],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"


def format_table(report: dict[str, Any]) -> str:
    """Markdown: one row per scheme; top-1 (%) of FP and each method, each method's KL to FP, its quantization seconds."""
    by_scheme: dict[str, dict[str, dict[str, Any]]] = {}
    for r in report["results"]:
        by_scheme.setdefault(r["scheme"], {})[r["method"]] = r
    methods = [m for m in METHODS if any(m in row for row in by_scheme.values())]
    head = ("| scheme | FP top-1 | " + " | ".join(f"{m.upper()} top-1" for m in methods) + " | "
            + " | ".join(f"{m.upper()} KL" for m in methods) + " | " + " | ".join(f"{m.upper()} s" for m in methods) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fp = f"{100 * report['fp_top1']:.2f}"
    for scheme, row in by_scheme.items():
        acc = [f"{100 * row[m]['top1']:.2f}" if m in row else "-" for m in methods]
        kls = [f"{row[m]['kl_fp']:.5f}" if m in row else "-" for m in methods]
        secs = [f"{row[m]['seconds']:.2f}" if m in row else "-" for m in methods]
        lines.append(f"| {scheme} | {fp} | " + " | ".join(acc + kls + secs) + " |")
    ort = [r for r in report["results"] if r.get("top1_ort") is not None]
    if ort:
        lines += ["", "| scheme | method | top-1 PyTorch | top-1 ORT | ORT/PyTorch top-1 agreement |", "|---|---|---|---|---|"]
        lines += [f"| {r['scheme']} | {r['method'].upper()} | {100 * r['top1']:.2f} | {100 * r['top1_ort']:.2f} | "
                  f"{100 * r['ort_agreement']:.2f} % |" for r in ort]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """The ``vit`` subcommand's options (called by :mod:`tools.bench`)."""
    parser.add_argument("--schemes", nargs="+", default=list(DEFAULT_SCHEMES), metavar="WxAy",
                        help="bit widths (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="what to compare (default: all)")
    parser.add_argument("--cache", default="runs/vit_digits", metavar="DIR", help="trained weights cache (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="always train, write nothing")
    parser.add_argument("--epochs", type=int, default=BenchSettings.epochs, help="training epochs (default: %(default)s)")
    parser.add_argument("--calib", type=int, default=BenchSettings.calib, help="calibration images (default: %(default)s)")
    parser.add_argument("--test-size", type=int, default=BenchSettings.test_size, help="test images (default: %(default)s)")
    parser.add_argument("--train-limit", type=int, default=None, help="use only this many training images")
    parser.add_argument("--img-size", type=int, default=BenchSettings.img_size, help="(default: %(default)s)")
    parser.add_argument("--patch-size", type=int, default=BenchSettings.patch_size, help="(default: %(default)s)")
    parser.add_argument("--embed-dim", type=int, default=BenchSettings.embed_dim, help="(default: %(default)s)")
    parser.add_argument("--depth", type=int, default=BenchSettings.depth, help="(default: %(default)s)")
    parser.add_argument("--heads", type=int, default=BenchSettings.num_heads, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="split, training and calibration seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--onnx", action="store_true",
                        help="also export each quantized model and score it in ONNX Runtime (fidelity to PyTorch)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("-v", "--verbose", action="store_true")


def main(args) -> int:
    """Entry for ``python -m tools.bench vit`` (``args`` from :mod:`tools.bench`)."""
    import torch

    try:
        import timm  # noqa: F401
    except ImportError:
        raise UserError("the vit benchmark needs timm: pip install 'gptaq-deploy[vision]'") from None
    schemes = [parse_scheme(s) for s in args.schemes]
    for name in ("epochs", "calib", "embed_dim", "depth", "heads", "img_size", "patch_size", "train_limit"):
        value, low = getattr(args, name), 0 if name == "epochs" else 1
        if value is not None and value < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low} (got {value})")
    if args.img_size % args.patch_size or args.embed_dim % args.heads:
        raise UserError("--img-size must be a multiple of --patch-size and --embed-dim a multiple of --heads")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, schemes)
    finally:
        torch.set_num_threads(threads)  # main() may run inside a larger process (tests)


def _run(args, schemes: list[Scheme]) -> int:
    settings = BenchSettings(img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim,
                             depth=args.depth, num_heads=args.heads, epochs=args.epochs, test_size=args.test_size,
                             train_limit=args.train_limit, calib=args.calib, seed=args.seed)
    cache = None if args.no_cache else Path(args.cache)
    report = run_benchmark(settings, schemes, args.methods, cache, args.onnx)
    print(format_table(report))
    train = report["train"]
    print(f"\nFP: {100 * report['fp_top1']:.2f}% test / {100 * train['train_top1']:.2f}% train top-1; "
          f"training {_seconds(train['seconds'])}{' (cached)' if train['cached'] else ''}; "
          f"{report['model']['params']} parameters; {report['threads']} threads")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
