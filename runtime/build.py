"""Build a deployable artifact from ``model.onnx``: a TensorRT plan, or an ONNX Runtime "build".

    from runtime import BuildConfig, build_engine, open_session
    build_engine("runs/llama-w4-onnx", "runs/llama-w4-ort", BuildConfig(backend="ort"))
    build_engine("runs/llama-w4-onnx", "runs/llama-w4-trt", BuildConfig(backend="trt", workspace_gb=8))
    with open_session("runs/llama-w4-trt") as session: ...

A build directory holds:

* ``model.plan`` (TensorRT) or ``model.onnx`` (ONNX Runtime: the graph after ORT's
  optimisations, INT4 ``DequantizeLinear + MatMul`` already fused into ``MatMulNBits``);
* ``build.json``: backend, :class:`BuildConfig`, the source ONNX's sha256, the optimization
  profile, build flags, build seconds and the environment it was built in (TensorRT version,
  GPU, compute capability, driver and CUDA versions; or the ORT version and providers). A
  plan is only loaded where that environment matches (:func:`environment_mismatch`);
* the export's ``export.json`` and tokenizer files, so ``runtime generate`` and the tools
  work on a build directory as on an export directory.

Before anything is built, the export's capability rules (:mod:`export.check`) run again on
the ONNX itself: TensorRT refuses asymmetric INT4 weights and quantized activations, naming
the layer and the W4A16 alternative. Everything is written into a temporary sibling directory
renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from quantize.atomic import replace_dir
from quantize.config import _check_type, _JsonConfig
from quantize.errors import ConfigError, UserError

from . import profiles as prof

log = logging.getLogger(__name__)

BACKENDS = ("ort", "trt")
ORT_PROVIDERS = ("cpu", "cuda")
ORT_OPTIMIZATION = ("basic", "extended", "all")
BUILD_JSON = "build.json"
PLAN_FILE = "model.plan"
ONNX_FILE = "model.onnx"
ONNX_DATA = "model.onnx.data"
EXPORT_JSON = "export.json"
FORMAT_VERSION = 1
#: Keys of the recorded environment that must match before a plan is deserialised.
ENGINE_KEYS = (("tensorrt", "TensorRT"), ("compute_capability", "compute capability"), ("gpu", "GPU"))


@dataclass(frozen=True)
class BuildConfig(_JsonConfig):
    """How ``model.onnx`` becomes an engine (validated on construction, recorded in ``build.json``).

    Attributes:
        backend: ``"ort"`` (ONNX Runtime: optimized model + session options; no GPU needed) or
            ``"trt"`` (TensorRT plan; needs TensorRT and a CUDA GPU).
        provider: ORT only: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available, else CPU).
        profile: optimization-profile ranges ``((dim name, min, opt, max), ...)`` overriding the
            defaults derived from ``export.json`` (:mod:`runtime.profiles`): ``batch``,
            ``sequence``, ``past_sequence`` (alias ``past``), ``total_sequence`` or any named
            dynamic dimension of the graph. ORT records them; TensorRT builds with them.
        workspace_gb: TensorRT workspace memory-pool limit in GiB (``None``: TensorRT's default,
            the device memory).
        timing_cache: TensorRT timing-cache file, read when present and written back after the
            build (rebuilds of similar graphs skip kernel timing).
        strongly_typed: TensorRT network typing. ``None``: strongly typed for an fp16 graph and
            always on TensorRT 11 (which only has strong typing); weakly typed for an fp32 graph
            on TensorRT 10. ``False`` is refused on TensorRT 11.
        fp16: TensorRT 10 weakly typed builds of an fp32 graph: allow fp16 kernels
            (``BuilderFlag.FP16``). Ignored by strongly typed builds, where the graph's types rule.
        optimization_level: TensorRT ``builder_optimization_level`` 0..5 (``None``: default 3).
        ort_optimization: ORT graph optimisation level saved into the optimized model:
            ``"basic"``, ``"extended"`` (default; fuses INT4 DQ+MatMul into MatMulNBits and
            stays portable across machines) or ``"all"`` (adds layout changes specific to this CPU).
        accuracy_level: ORT ``MatMulNBits`` accuracy level baked into the fused nodes: 1 fp32
            (faithful), 4 int8 activations (fast); ``None``: ORT's default.
    """

    backend: str = "ort"
    provider: str | None = None
    profile: tuple[tuple[str, int, int, int], ...] = ()
    workspace_gb: float | None = None
    timing_cache: str | None = None
    strongly_typed: bool | None = None
    fp16: bool = True
    optimization_level: int | None = None
    ort_optimization: str = "extended"
    accuracy_level: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.backend not in BACKENDS:
            raise ConfigError(owner, "backend", self.backend, f"one of {', '.join(BACKENDS)}")
        if self.provider is not None:
            if self.backend != "ort":
                raise ConfigError(owner, "provider", self.provider, "null for backend trt (providers are ONNX Runtime's)")
            if self.provider not in ORT_PROVIDERS:
                raise ConfigError(owner, "provider", self.provider, f"null or one of {', '.join(ORT_PROVIDERS)}")
        object.__setattr__(self, "profile", self._normalised_profile(owner))
        if self.workspace_gb is not None:
            _check_type(owner, "workspace_gb", self.workspace_gb, float, "null or a positive number of GiB")
            if not 0 < self.workspace_gb <= 4096:
                raise ConfigError(owner, "workspace_gb", self.workspace_gb, "null or a positive number of GiB (<= 4096)")
        if self.timing_cache is not None:
            _check_type(owner, "timing_cache", self.timing_cache, str, "null or a file path")
            if not self.timing_cache:
                raise ConfigError(owner, "timing_cache", self.timing_cache, "null or a file path")
        if self.strongly_typed is not None:
            _check_type(owner, "strongly_typed", self.strongly_typed, bool, "null (automatic), true or false")
        _check_type(owner, "fp16", self.fp16, bool, "true or false")
        if self.optimization_level is not None:
            _check_type(owner, "optimization_level", self.optimization_level, int, "null or an integer in 0..5")
            if not 0 <= self.optimization_level <= 5:
                raise ConfigError(owner, "optimization_level", self.optimization_level, "null or an integer in 0..5")
        if self.ort_optimization not in ORT_OPTIMIZATION:
            raise ConfigError(owner, "ort_optimization", self.ort_optimization, f"one of {', '.join(ORT_OPTIMIZATION)}")
        if self.accuracy_level is not None:
            _check_type(owner, "accuracy_level", self.accuracy_level, int, "null or 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16), 4 (int8)")
            if self.accuracy_level not in (0, 1, 2, 3, 4):
                raise ConfigError(owner, "accuracy_level", self.accuracy_level, "null or 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16), 4 (int8)")

    def _normalised_profile(self, owner: str) -> tuple[tuple[str, int, int, int], ...]:
        allowed = "a list of [dim name, min, opt, max] with integers 0 <= min <= opt <= max, max >= 1, each name once"
        if not isinstance(self.profile, (tuple, list)):
            raise ConfigError(owner, "profile", self.profile, allowed)
        entries, seen = [], set()
        for entry in self.profile:
            if (not isinstance(entry, (tuple, list)) or len(entry) != 4 or not isinstance(entry[0], str) or not entry[0]):
                raise ConfigError(owner, "profile", self.profile, allowed)
            name = prof.canonical_dim(entry[0])
            try:
                values = prof.check_range(name, tuple(entry[1:]))
            except UserError:
                raise ConfigError(owner, "profile", self.profile, allowed) from None
            if name in seen:
                raise ConfigError(owner, "profile", self.profile, allowed)
            seen.add(name)
            entries.append((name, *values))
        return tuple(entries)


# ---------------------------------------------------------------------------------------
# source and metadata
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CapabilityTarget:
    """What :func:`export.check.check_capability` reads of an export config."""

    target: str
    dtype: str
    opset: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON metadata file (``{}`` when absent; one-line error when corrupt)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is corrupt: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is corrupt: expected a JSON object")
    return data


def resolve_onnx(path: str | os.PathLike) -> Path:
    """``path`` (a ``.onnx`` file) or ``path/model.onnx`` of an export directory."""
    p = Path(path)
    if p.is_dir():
        if (p / BUILD_JSON).is_file():
            raise UserError(f"{p} is a build directory; build from the export directory (or its {ONNX_FILE})")
        p = p / ONNX_FILE
    if not p.is_file():
        raise UserError(f"{p} does not exist (expected an ONNX file or an export directory holding {ONNX_FILE})")
    return p


def _load_graph(path: Path):
    """The ONNX graph without external weight data (enough for the capability rules and the I/O)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends for a corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read ONNX model {path}: {first}") from None


def graph_io(proto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``[{"name", "dtype", "shape"}]`` of the graph's inputs and outputs (dim names for dynamic dims)."""
    from onnx import helper

    def spec(values):
        out = []
        for v in values:
            tt = v.type.tensor_type
            dims = [d.dim_param if d.HasField("dim_param") else (int(d.dim_value) if d.HasField("dim_value") else None)
                    for d in tt.shape.dim]
            out.append({"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "shape": dims})
        return out

    inits = {t.name for t in proto.graph.initializer}
    return spec([v for v in proto.graph.input if v.name not in inits]), spec(proto.graph.output)


def check_build_capability(proto, model_path: Path, backend: str) -> tuple[str, list]:
    """Run the export capability rules again on the graph; returns ``(graph dtype, layers)``.

    For TensorRT the graph dtype rule is left to :mod:`runtime.trt`, which knows the TensorRT
    version (TensorRT 10 may build an fp32 graph with the FP16 flag; TensorRT 11 may not).
    """
    from export.check import check_capability, check_contrib_ops, graph_dtype, layers_from_onnx

    if backend == "trt":
        check_contrib_ops(proto)
    dtype = graph_dtype(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    layers = layers_from_onnx(proto, model_path.parent)
    check_capability(layers, _CapabilityTarget(backend, "fp16" if backend == "trt" else dtype, opset))
    return dtype, layers


def environment_mismatch(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> str | None:
    """What differs between the environment a plan was built in and this one (``None``: compatible).

    TensorRT plans are tied to the TensorRT version and the GPU (compute capability, model).
    """
    diffs = [label for key, label in ENGINE_KEYS if str(recorded.get(key)) != str(here.get(key))]
    if not diffs:
        return None

    def describe(env: Mapping[str, Any]) -> str:
        return (f"{env.get('gpu', '?')} (compute capability {env.get('compute_capability', '?')}) "
                f"with TensorRT {env.get('tensorrt', '?')}")

    return f"built for {describe(recorded)}, this machine has {describe(here)} ({', '.join(diffs)} differ)"


def _copy_export_files(source_dir: Path, meta: Mapping[str, Any], tmp: Path) -> list[str]:
    """Carry ``export.json`` and the tokenizer files over, so a build dir works like an export dir."""
    copied = []
    names = [EXPORT_JSON, *meta.get("tokenizer_files", [])] if meta else []
    for name in names:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, tmp / name)
            copied.append(name)
    return copied


def _versions() -> dict[str, str]:
    import numpy

    v = {"python": platform.python_version(), "numpy": numpy.__version__}
    for name in ("onnx", "onnxruntime", "torch"):
        try:
            v[name] = __import__(name).__version__
        except ImportError:  # pragma: no cover - optional
            pass
    return v


# ---------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------


def _build_ort(model_path: Path, tmp: Path, config: BuildConfig, external: bool) -> dict[str, Any]:
    """Save ORT's optimized graph as ``tmp/model.onnx``; returns the environment facts."""
    import onnxruntime as ort

    from .ort import OrtSession

    entries = {}
    if external:
        entries = {"session.optimized_model_external_initializers_file_name": ONNX_DATA,
                   "session.optimized_model_external_initializers_min_size_in_bytes": "1024"}
    with OrtSession(model_path, providers=config.provider, accuracy_level=config.accuracy_level, threads=1,
                    optimized_model_path=tmp / ONNX_FILE, optimization=config.ort_optimization,
                    session_config=entries) as session:
        providers = session.active_providers
    if not (tmp / ONNX_FILE).is_file():
        raise UserError(f"ONNX Runtime did not write the optimized model of {model_path}")
    ops = _op_counts(tmp / ONNX_FILE)
    return {"environment": {"onnxruntime": ort.__version__, "providers": providers, "machine": platform.machine(),
                            "processor": platform.processor() or None},
            "optimized_ops": {k: ops[k] for k in ("MatMulNBits", "DequantizeLinear", "MatMul") if k in ops}}


def _op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in _load_graph(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output directory {out} already exists; pass --overwrite to replace it")


def build_engine(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, config: BuildConfig | None = None, *,
                 overwrite: bool = False) -> Path:
    """Build ``onnx_path`` (a ``model.onnx`` or an export directory) into ``out_dir``; returns ``out_dir``.

    Raises:
        UserError (one line): missing or corrupt input, an existing ``out_dir`` without
        ``overwrite``, a scheme the backend cannot run (:class:`~export.check.CapabilityError`),
        a dynamic dimension without a profile range, no TensorRT / GPU for ``backend="trt"``,
        a failed build.
    """
    config = config or BuildConfig()
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    model_path = resolve_onnx(onnx_path)
    meta = read_json(model_path.parent / EXPORT_JSON) if model_path.name == ONNX_FILE else {}
    proto = _load_graph(model_path)
    dtype, layers = check_build_capability(proto, model_path, config.backend)
    inputs, outputs = graph_io(proto)
    ranges = prof.resolve_ranges(meta, config.profile)
    unused = prof.unused_ranges(inputs, [name for name, *_ in config.profile])
    if unused:
        dims = sorted({d for spec in inputs for d in spec["shape"] if isinstance(d, str)})
        raise UserError(f"--profile {unused[0]} names no dynamic dimension of {model_path.name}; its dims are "
                        f"{', '.join(dims) or 'all static'}")
    shapes = prof.profile_shapes(inputs, ranges) if config.backend == "trt" else None
    del proto
    external = (model_path.parent / ONNX_DATA).is_file() or bool(meta.get("external_data"))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        start = time.perf_counter()
        if config.backend == "trt":
            from . import trt

            result = trt.build_plan(model_path, tmp / PLAN_FILE, config, shapes, graph_dtype=dtype)
            artifact = PLAN_FILE
        else:
            result = _build_ort(model_path, tmp, config, external)
            artifact = ONNX_FILE
        seconds = time.perf_counter() - start
        copied = _copy_export_files(model_path.parent, meta, tmp)
        build = {
            "format_version": FORMAT_VERSION,
            "backend": config.backend,
            "model_file": artifact,
            "model_sha256": sha256_file(tmp / artifact),
            "config": config.to_dict(),
            "source": {"onnx": str(model_path.resolve()), "onnx_sha256": sha256_file(model_path),
                       "graph_dtype": dtype, "quantized_layers": len(layers),
                       "scheme": (meta.get("scheme") or {}).get("name"), "task": meta.get("task")},
            "inputs": inputs,
            "outputs": outputs,
            "dims": {name: list(r) for name, r in sorted(ranges.items())},
            "profiles": [{name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in shapes.items()}]
            if shapes is not None else None,
            "copied_files": copied,
            "build_seconds": round(seconds, 3),
            "versions": _versions(),
            **result,
        }
        (tmp / BUILD_JSON).write_text(json.dumps(build, indent=2, sort_keys=True))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built %s (%s) into %s in %.1f s", model_path, config.backend, out / artifact, seconds)
    return out
