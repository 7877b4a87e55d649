"""Latency of deployable artifacts against an FP baseline, on the same backend, in one run.

    python -m tools bench runs/w4-ort --baseline runs/fp-ort --out runs/bench
    python -m tools bench --compare h100/bench.json l4/bench.json --out runs/compare

LLMs (the flat KV cache signature of our exports, or any ``.onnx`` whose inputs follow it:
``input_ids``, ``attention_mask``, optional ``position_ids``, ``past_key_values.{i}.key/value``
-> ``logits``, ``present.{i}.*``; head counts and sizes are read from the graph's inputs):

* prefill: one run of a prompt of L tokens with an empty cache, batch b;
* decode: one step of 1 new token per row on a cache of C tokens (the latency of one
  generated token: ms/token at batch 1), batch b. Where the session keeps the cache in place
  (fused exports in ONNX Runtime) the step runs on a preallocated cache as generation does
  (``kv_cache: in_place`` in the artifact's entry); otherwise the cache is fed and returned
  as arrays (``copied``).

ViTs: one run of ``pixel_values [b, 3, H, W]``; images/s.

Timing: every artifact is loaded once; per shape each runs ``warmup`` untimed iterations, then
``iterations`` timed rounds in which the artifacts take turns (the order rotates every round),
so machine drift and thermal state hit all of them alike. Median, p90 and p99 of the rounds;
speedup = baseline median / artifact median per shape. Peak host memory: a separate process
per artifact loads it and runs every shape once (``ru_maxrss``: its own peak).
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quantize.config import _JsonConfig
from quantize.errors import ConfigError, UserError

from tools.artifacts import kv_layout

log = logging.getLogger("tools.bench")

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LatencyConfig(_JsonConfig):
    """What to time and how.

    Attributes:
        artifacts: ``PATH`` or ``LABEL=PATH`` of each artifact (ONNX file, export / build dir, plan).
        baseline: the FP artifact speedups are relative to (``PATH`` or ``LABEL=PATH``), or ``None``.
        prompt_lengths: LLM prefill prompt lengths L.
        cache_lengths: LLM decode cache lengths C.
        batch_sizes: batch sizes b (LLM and ViT).
        warmup / iterations: untimed and timed runs per artifact and shape.
        backend: ``"ort"`` / ``"trt"`` or ``None`` (what each artifact is); all must agree.
        provider / threads / accuracy_level: ONNX Runtime session options.
        memory: measure each artifact's peak host memory in its own process.
        spinning: let ONNX Runtime's idle intra-op threads spin-wait between runs: ORT's own
            default, and what a session of :mod:`runtime` gets, so on by default. The artifacts
            then take turns in blocks with a pause between (:func:`time_shape`), which times
            each as a lone session: interleaved run by run, the spinning threads of the session
            that just ran slowed the next one's decode step about 2x. Off, they take turns run
            by run with sleeping threads, and every parallel kernel pays a thread wake-up: on
            2-core VMs, 10-57 % more per INT4 decode step, varying from run to run.
        seed: seed of the token ids, cache contents and pixels.
    """

    artifacts: tuple[str, ...]
    baseline: str | None = None
    prompt_lengths: tuple[int, ...] = (128, 512)
    cache_lengths: tuple[int, ...] = (128, 512)
    batch_sizes: tuple[int, ...] = (1,)
    warmup: int = 3
    iterations: int = 20
    backend: str | None = None
    provider: str | None = None
    threads: int | None = None
    accuracy_level: int | None = None
    memory: bool = True
    spinning: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "artifacts", tuple(self.artifacts))
        if not self.artifacts and self.baseline is None:
            raise ConfigError(owner, "artifacts", self.artifacts, "at least one artifact (or a --baseline)")
        for name, low in (("prompt_lengths", 1), ("cache_lengths", 0), ("batch_sizes", 1)):
            values = tuple(getattr(self, name))
            object.__setattr__(self, name, values)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
                raise ConfigError(owner, name, values, f"a non-empty list of integers >= {low}")
        for name, low in (("warmup", 0), ("iterations", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(owner, name, value, f"an integer >= {low}")
        if self.backend not in (None, "ort", "trt"):
            raise ConfigError(owner, "backend", self.backend, "null, ort or trt")


@dataclass(frozen=True)
class Shape:
    """One timed case: ``phase`` prefill / decode (``length`` = L / C) or images (``length`` 0)."""

    phase: str
    batch: int
    length: int

    @property
    def label(self) -> str:
        if self.phase == "prefill":
            return f"prefill b{self.batch} L{self.length}"
        if self.phase == "decode":
            return f"decode b{self.batch} C{self.length}"
        return f"images b{self.batch}"


def split_label(text: str) -> tuple[str, str]:
    """``"LABEL=PATH"`` -> ``(LABEL, PATH)``; a plain path is labelled by its name."""
    if "=" in text and not Path(text).exists():
        label, path = text.split("=", 1)
        if label and path:
            return label, path
    return Path(text.rstrip("/")).name or text, text


# ----------------------------------------------------------------------------- model facts


@dataclass
class Model:
    """A loaded artifact: session, feeds layout and what bench.json records about it."""

    label: str
    path: str
    session: Any
    info: dict[str, Any]
    kind: str  # "llm" | "vit"
    kv: list[tuple[str, np.dtype, int, int]]  # (past input name, dtype, kv heads, head dim)
    vocab: int
    max_seq_len: int | None


def open_model(label: str, path: str, config: LatencyConfig) -> Model:
    """Open ``path`` with :func:`runtime.open_session` and read its signature (one-line errors)."""
    from runtime.generate import read_export_meta
    from runtime.load import open_session, resolve_artifact
    from tools.artifacts import TORCH_KINDS, classify

    if classify(path) in TORCH_KINDS:
        raise UserError(f"{path} is a PyTorch checkpoint / model; bench times deployable artifacts: export it "
                        "(python -m export) and optionally build it (python -m runtime build)")
    resolved = resolve_artifact(path)
    session = open_session(path, backend=config.backend, provider=config.provider, threads=config.threads,
                           accuracy_level=config.accuracy_level, spinning=config.spinning)
    specs = session.input_metadata()
    meta = read_export_meta(resolved.directory)
    kind = "llm" if "input_ids" in specs else "vit" if "pixel_values" in specs else None
    if kind is None or "logits" not in session.output_metadata():
        raise UserError(f"{path} takes {', '.join(specs)}; bench needs an LLM (input_ids, attention_mask[, position_ids], "
                        "past_key_values.N.key/value -> logits) or a ViT (pixel_values -> logits)")
    kv = kv_layout(path, specs) if kind == "llm" else []
    logits = session.output_metadata()["logits"]
    vocab = meta.get("vocab_size") or (logits.shape[-1] if isinstance(logits.shape[-1], int) else 32)
    info = _artifact_info(label, path, resolved, meta, session, config)
    return Model(label, path, session, info, kind, kv, int(vocab), meta.get("max_seq_len"))


def _artifact_info(label, path, resolved, meta, session, config: LatencyConfig) -> dict[str, Any]:
    files = [resolved.model_file] + [f for f in (resolved.model_file.parent / "model.onnx.data",) if f.is_file()]
    build = resolved.build or {}
    level = (build.get("config") or {}).get("accuracy_level") if build else config.accuracy_level
    return {"label": label, "path": str(path), "kind": resolved.kind, "backend": resolved.backend,
            "dtype": meta.get("dtype") or session.output_metadata()["logits"].dtype.name,
            "scheme": (meta.get("scheme") or {}).get("name"), "size_bytes": sum(f.stat().st_size for f in files),
            "accuracy_level": level, "providers": getattr(session, "active_providers", None),
            "kv_cache": "in_place" if session.supports_in_place_cache else "copied",
            "ops": _op_counts(resolved.model_file) if resolved.backend == "ort" else None}


def _op_counts(path: Path) -> dict[str, int]:
    """How many MatMulNBits / DequantizeLinear / MatMul nodes the file holds (weights not loaded)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in ("MatMulNBits", "DequantizeLinear", "MatMul"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# ----------------------------------------------------------------------------- feeds


def plan_shapes(kind: str, config: LatencyConfig) -> list[Shape]:
    if kind == "vit":
        return [Shape("images", b, 0) for b in config.batch_sizes]
    return ([Shape("prefill", b, n) for b in config.batch_sizes for n in config.prompt_lengths]
            + [Shape("decode", b, n) for b in config.batch_sizes for n in config.cache_lengths])


def make_feeds(model: Model, shape: Shape, seed: int) -> dict[str, np.ndarray]:
    """Inputs of ``shape`` for ``model``; the same seed gives every artifact the same token ids / pixels."""
    rng = np.random.default_rng(seed)
    specs = model.session.input_metadata()
    if model.kind == "vit":
        pix = specs["pixel_values"]
        h, w = pix.shape[2], pix.shape[3]
        if not isinstance(h, int) or not isinstance(w, int):
            raise UserError(f"{model.path}: pixel_values needs static height and width, got {pix.describe()}")
        return {"pixel_values": rng.standard_normal((shape.batch, pix.shape[1], h, w)).astype(pix.dtype)}
    new = shape.length if shape.phase == "prefill" else 1
    past = 0 if shape.phase == "prefill" else shape.length
    if model.max_seq_len and past + new > model.max_seq_len:
        raise UserError(f"{shape.label} needs {past + new} positions; {model.path} was exported for max_seq_len "
                        f"{model.max_seq_len}")
    feeds = {"input_ids": rng.integers(0, model.vocab, (shape.batch, new), dtype=np.int64),
             "attention_mask": np.ones((shape.batch, past + new), np.int64)}
    if "position_ids" in specs:
        feeds["position_ids"] = np.tile(np.arange(past, past + new, dtype=np.int64), (shape.batch, 1))
    for name, dtype, heads, head_dim in model.kv:
        feeds[name] = (rng.standard_normal((shape.batch, heads, past, head_dim)) * 0.5).astype(dtype)
    return feeds


# ----------------------------------------------------------------------------- timing


def summarize(samples_s: list[float]) -> dict[str, float]:
    """Median, p90, p99, mean and min in milliseconds of per-run seconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min())}


def throughput(shape: Shape, median_ms: float) -> tuple[float, str]:
    seconds = median_ms / 1e3
    if shape.phase == "prefill":
        return shape.batch * shape.length / seconds, "tokens/s"
    if shape.phase == "decode":
        return shape.batch / seconds, "tokens/s"
    return shape.batch / seconds, "images/s"


def step_runner(model: Model, shape: Shape, seed: int) -> Callable[[], Any]:
    """The call timed for ``model`` on ``shape``: the backend's run on feeds validated once.

    A decode step on a session that keeps the KV cache in place (a fused export in ORT) runs
    on a preallocated cache holding the same ``C`` past tokens, as generation serves it; every
    other shape feeds the cache as arrays and gets ``present.*`` back.
    """
    feeds = make_feeds(model, shape, seed)
    session = model.session
    if shape.phase == "decode" and session.supports_in_place_cache:
        past = {name: feeds.pop(name) for name, *_ in model.kv}
        cache = session.allocate_cache(shape.batch, shape.length + 1, initial=past)
        feeds = session.validate(feeds, skip=cache.values)
        return lambda: session._run_in_place(feeds, cache)
    feeds = session.validate(feeds)
    return lambda: session._run(feeds)


#: With spinning on, artifacts take turns in blocks of this many timed runs ...
SPIN_BLOCK = 5
#: ... each after a pause that lets the previous session's spinning threads go to sleep, and an untimed run.
SPIN_SETTLE_S = 0.05


def turn_order(labels: list[str], iterations: int, block: int) -> list[tuple[str, int]]:
    """``(label, runs)`` turns: rotating rounds of ``block`` runs each until every label has ``iterations``.

    Round ``r`` starts at label ``r mod n``, so no artifact always follows the same one.
    """
    turns, done, r = [], dict.fromkeys(labels, 0), 0
    while any(v < iterations for v in done.values()):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            runs = min(block, iterations - done[label])
            if runs:
                turns.append((label, runs))
                done[label] += runs
        r += 1
    return turns


def time_shape(models: list[Model], shape: Shape, config: LatencyConfig, progress) -> dict[str, list[float]]:
    """Seconds per run of each model on ``shape``: warm-up, then interleaved rounds.

    Spinning on (default; ONNX Runtime's own, what a lone deployed session gets): the models take
    turns in blocks of :data:`SPIN_BLOCK` runs, each after a :data:`SPIN_SETTLE_S` pause and one untimed run,
    so the threads of the session that ran before have stopped spinning and do not share the
    cores with the one being timed. Spinning off: the models take turns run by run.
    """
    runs = {m.label: step_runner(m, shape, config.seed) for m in models}
    for m in models:
        for _ in range(config.warmup):
            runs[m.label]()
    samples: dict[str, list[float]] = {m.label: [] for m in models}
    block = SPIN_BLOCK if config.spinning else 1
    for label, count in turn_order([m.label for m in models], config.iterations, block):
        if config.spinning:
            time.sleep(SPIN_SETTLE_S)
            runs[label]()
        for _ in range(count):
            start = time.perf_counter()
            runs[label]()
            samples[label].append(time.perf_counter() - start)
        progress.update(count / len(models))  # the bar counts rounds: one timed run of every model
    return samples


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux: ``VmHWM`` of ``/proc/self/status`` — the high-water mark of this process's own address
    space. ``ru_maxrss`` is not used there because Linux carries it over fork and exec, so a
    spawned worker would report its parent's peak (e.g. the pipeline's quantize stage).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_worker(path: str, config_json: str, shapes: list[tuple[str, int, int]]) -> float:
    """In a fresh process: load ``path``, run every shape once; peak RSS in MB."""
    config = LatencyConfig.from_json(config_json)
    model = open_model("memory", path, config)
    for phase, batch, length in shapes:
        step_runner(model, Shape(phase, batch, length), config.seed)()
    return peak_rss_mb()


def peak_memory(path: str, config: LatencyConfig, shapes: list[Shape]) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(peak_memory_worker, path, config.to_json(),
                           [(s.phase, s.batch, s.length) for s in shapes]).result()


# ----------------------------------------------------------------------------- entry


def run_latency(config: LatencyConfig) -> dict[str, Any]:
    """Time every artifact (baseline first) on every shape; returns the ``bench.json`` content."""
    from tqdm.auto import tqdm

    from tools.environment import capture, device_label

    entries = ([split_label(config.baseline)] if config.baseline else []) + [split_label(a) for a in config.artifacts]
    labels = [label for label, _ in entries]
    if len(set(labels)) != len(labels):
        raise UserError(f"artifact labels must differ (got {', '.join(labels)}); name them LABEL=PATH")
    start = time.perf_counter()
    models = [open_model(label, path, config) for label, path in entries]
    try:
        kinds = {m.kind for m in models}
        backends = {m.info["backend"] for m in models}
        if len(kinds) > 1 or len(backends) > 1:
            raise UserError("all artifacts must be the same kind of model on the same backend "
                            "(got " + ", ".join(f"{m.label}: {m.kind} on {m.info['backend']}" for m in models) + ")")
        shapes = plan_shapes(models[0].kind, config)
        results = []
        with tqdm(total=len(shapes) * config.iterations, desc="bench", unit="round", disable=None, leave=False) as bar:
            for shape in shapes:
                samples = time_shape(models, shape, config, bar)
                results += _shape_results(models, shape, samples, config.baseline is not None)
        providers = models[0].info.get("providers")
        artifacts = [m.info | {"baseline": bool(config.baseline) and i == 0} for i, m in enumerate(models)]
    finally:
        for m in models:
            m.session.close()
    if config.memory:
        for art in artifacts:
            art["peak_host_mb"] = round(peak_memory(art["path"], config, shapes), 1)
    env = capture()
    device = device_label(env, artifacts[0]["backend"], providers)
    return {"schema_version": SCHEMA_VERSION, "tool": "bench", "model_kind": models[0].kind, "device": device,
            "environment": env, "config": config.to_dict(), "baseline": labels[0] if config.baseline else None,
            "baseline_note": _baseline_note(artifacts, device) if config.baseline else None,
            "artifacts": artifacts, "results": results, "elapsed_s": round(time.perf_counter() - start, 1)}


def _shape_results(models: list[Model], shape: Shape, samples, has_baseline: bool) -> list[dict[str, Any]]:
    out = []
    base = summarize(samples[models[0].label])["median_ms"] if has_baseline else None
    for m in models:
        stats = summarize(samples[m.label])
        rate, unit = throughput(shape, stats["median_ms"])
        out.append({"artifact": m.label, "phase": shape.phase, "batch": shape.batch, "length": shape.length,
                    "shape": shape.label, **{k: round(v, 4) for k, v in stats.items()}, "iterations": len(samples[m.label]),
                    "throughput": round(rate, 2), "throughput_unit": unit,
                    "speedup": round(base / stats["median_ms"], 3) if base else None})
    return out


def _baseline_note(artifacts: list[dict[str, Any]], device: str) -> str:
    base = artifacts[0]
    dtype = str(base.get("dtype"))
    if device.startswith("CPU") and dtype in ("fp32", "float32"):
        return f"baseline {base['label']} is FP32: on CPU the FP baseline is FP32 (FP16 is the GPU baseline)"
    return f"baseline {base['label']} is {dtype.upper().replace('FLOAT', 'FP')}"
