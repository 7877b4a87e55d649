"""TensorRT backend: build a plan from ``model.onnx`` and run it behind the Session protocol.

The only module of the toolchain that imports ``tensorrt``, and only inside functions, so
``import runtime`` works without it. Written against the documented TensorRT 10.x and 11.x
Python API (``trt.Builder``, ``OnnxParser``, ``IBuilderConfig``, optimization profiles, timing
cache, ``Runtime.deserialize_cuda_engine``, execution context with ``set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3``); see ``reference/deploy.md`` §3.

Typing:

* TensorRT 11 networks are always strongly typed: the ONNX graph's own types decide the
  precision, so the graph must be fp16 (``python -m export --dtype fp16``); an fp32 graph is
  refused before the build.
* TensorRT 10: an fp16 graph is built strongly typed (INT4 weight-only GEMMs with fp16
  scales, as exported); an fp32 graph is built weakly typed with ``BuilderFlag.FP16`` (unless
  ``BuildConfig.fp16`` is off), letting TensorRT pick fp16 kernels.

Device buffers are torch CUDA tensors; the session copies numpy feeds in and outputs out,
like ONNX Runtime does, so :mod:`runtime.generate` and the tools run unchanged.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from quantize.atomic import write_bytes
from quantize.errors import UserError

from .base import Session, TensorSpec

if TYPE_CHECKING:  # pragma: no cover
    from .build import BuildConfig

log = logging.getLogger(__name__)

INSTALL_HINT = ('install it with pip install -e ".[trt]" on a machine that can reach NVIDIA\'s package index '
                "(pypi.nvidia.com), with a CUDA GPU and driver")


class TensorRTUnavailable(UserError):
    """No TensorRT Python package, or no CUDA GPU, on this machine."""


def tensorrt_installed() -> bool:
    """Whether a ``tensorrt`` package is importable (without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def import_tensorrt():
    """``tensorrt`` or a one-line :class:`TensorRTUnavailable` saying how to install it."""
    if not tensorrt_installed():
        raise TensorRTUnavailable(f"TensorRT is not installed here (no tensorrt Python package); {INSTALL_HINT}")
    try:
        import tensorrt
    except Exception as exc:  # a broken wheel or a missing libnvinfer raises ImportError / OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TensorRTUnavailable(f"TensorRT cannot be imported ({first}); {INSTALL_HINT}") from None
    return tensorrt


def _require_gpu():
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU and there is none here (torch.cuda.is_available() is "
                                  "False); build and run TensorRT engines on the GPU machine, or use --backend ort")
    return torch


def _driver_version() -> str | None:
    """The NVIDIA driver version (from nvidia-smi; ``None`` when it cannot be asked)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def probe_environment(device: int = 0) -> dict[str, Any]:
    """What a plan is tied to, on this machine: TensorRT version, GPU, compute capability, driver, CUDA.

    Raises :class:`TensorRTUnavailable` (one line, how to install) without a GPU or TensorRT.
    """
    trt = import_tensorrt()  # first: the install hint matters more than the GPU question
    torch = _require_gpu()
    major, minor = torch.cuda.get_device_capability(device)
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(device),
            "compute_capability": f"{major}.{minor}", "driver": _driver_version(), "cuda": torch.version.cuda,
            "torch": torch.__version__}


def tensorrt_major(version: str) -> int:
    return int(str(version).split(".")[0])


def choose_typing(config: "BuildConfig", graph_dtype: str, major: int) -> tuple[bool, bool]:
    """``(strongly typed, FP16 builder flag)`` for a graph of ``graph_dtype`` on TensorRT ``major``.

    Refuses (one line) an fp32 graph or a weakly typed request on TensorRT 11 and later.
    """
    if major >= 11:
        if graph_dtype != "fp16":
            raise UserError(f"TensorRT {major} builds strongly typed networks only, so the graph's own types set the "
                            "precision and this graph is fp32; export it with --dtype fp16 "
                            "(python -m export SRC --target trt --dtype fp16)")
        if config.strongly_typed is False:
            raise UserError(f"strongly_typed=False is impossible on TensorRT {major}: it only builds strongly typed networks")
        return True, False
    strongly = config.strongly_typed if config.strongly_typed is not None else graph_dtype == "fp16"
    return strongly, (not strongly) and config.fp16


def _make_logger(trt, errors: list[str]):
    """A TensorRT logger that forwards to :mod:`logging` and keeps error lines for one-line messages."""
    levels = {trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR, trt.ILogger.Severity.ERROR: logging.ERROR,
              trt.ILogger.Severity.WARNING: logging.WARNING, trt.ILogger.Severity.INFO: logging.DEBUG,
              trt.ILogger.Severity.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                errors.append(str(msg).strip().splitlines()[0] if str(msg).strip() else "")
            log.log(level, "TensorRT: %s", msg)

    return _Logger()


def _parse(trt, builder, logger, model_path: Path, strongly_typed: bool):
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data (model.onnx.data) relative to the model.
    if not parser.parse_from_file(str(model_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else "unknown error"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"TensorRT's ONNX parser rejected {model_path.name}: {first}{more}")
    return network, parser


def build_plan(model_path: Path, plan_path: Path, config: "BuildConfig", shapes: Mapping[str, tuple] | None, *,
               graph_dtype: str) -> dict[str, Any]:
    """Build ``model_path`` into ``plan_path`` (atomically); returns the facts ``build.json`` records.

    Args:
        shapes: ``{input: (min shape, opt shape, max shape)}`` for the dynamic inputs
            (:func:`runtime.profiles.profile_shapes`); one optimization profile.
        graph_dtype: ``"fp16"`` / ``"fp32"`` (:func:`export.check.graph_dtype`).
    """
    environment = probe_environment()
    trt = import_tensorrt()
    major = tensorrt_major(trt.__version__)
    strongly, fp16_flag = choose_typing(config, graph_dtype, major)
    errors: list[str] = []
    logger = _make_logger(trt, errors)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, model_path, strongly)
    bconfig = builder.create_builder_config()
    if config.workspace_gb is not None:
        bconfig.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gb * (1 << 30)))
    if fp16_flag:
        bconfig.set_flag(trt.BuilderFlag.FP16)
    if config.optimization_level is not None:
        bconfig.builder_optimization_level = config.optimization_level
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
        bconfig.add_optimization_profile(profile)
    cache_path = Path(config.timing_cache) if config.timing_cache else None
    cache, cache_loaded = None, False
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = bconfig.create_timing_cache(data)
        if not bconfig.set_timing_cache(cache, False):
            raise UserError(f"timing cache {cache_path} does not fit this TensorRT / GPU; delete it or pass another file")
        cache_loaded = bool(data)
    serialized = builder.build_serialized_network(network, bconfig)
    if serialized is None:
        reason = next((e for e in errors if e), "no reason given; rerun with --verbose for TensorRT's log")
        raise UserError(f"TensorRT could not build {model_path.name}: {reason}")
    write_bytes(plan_path, bytes(serialized))
    if cache is not None:  # the build added its new timings to the cache object
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(cache_path, bytes(cache.serialize()))
    return {
        "environment": environment,
        "flags": {"strongly_typed": strongly, "fp16": fp16_flag,
                  "workspace_bytes": int(config.workspace_gb * (1 << 30)) if config.workspace_gb else None,
                  "optimization_level": config.optimization_level,
                  "timing_cache": str(cache_path) if cache_path else None, "timing_cache_loaded": cache_loaded},
    }


class TrtSession(Session):
    """A deserialised TensorRT plan behind the :class:`~runtime.base.Session` protocol.

    Inputs and outputs are numpy arrays; device buffers are torch CUDA tensors allocated per
    call with the shapes TensorRT infers from the inputs. Shapes outside the plan's
    optimization profile are refused naming the input and its range.

    Args:
        plan_path: ``model.plan`` (the caller checked the environment, see
            :func:`runtime.load.open_session`).
        build: its ``build.json`` (dynamic dim names for :meth:`input_metadata`).
    """

    def __init__(self, plan_path: str | os.PathLike, build: Mapping[str, Any] | None = None, device: int = 0) -> None:
        trt = import_tensorrt()
        torch = _require_gpu()
        self._torch, self._trt = torch, trt
        self.path = Path(plan_path)
        self._device = torch.device("cuda", device)
        errors: list[str] = []
        self._logger = _make_logger(trt, errors)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            reason = next((e for e in errors if e), "the plan is corrupt or from another TensorRT version")
            raise UserError(f"TensorRT cannot load {self.path}: {reason}")
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise UserError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
        dim_names = {s["name"]: s["shape"] for s in [*(build or {}).get("inputs", []), *(build or {}).get("outputs", [])]}
        self._inputs: dict[str, TensorSpec] = {}
        self._outputs: dict[str, TensorSpec] = {}
        self._ranges: dict[str, tuple] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            named = dim_names.get(name, [])
            shape = tuple(d if d >= 0 else (named[k] if k < len(named) and isinstance(named[k], str) else None)
                          for k, d in enumerate(engine.get_tensor_shape(name)))
            spec = TensorSpec(name, dtype, shape)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs[name] = spec
                if any(not isinstance(d, int) for d in shape):
                    self._ranges[name] = tuple(tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
            else:
                self._outputs[name] = spec
        self._scratch = torch.empty(256, dtype=torch.uint8, device=self._device)  # address for empty tensors
        self._stream = torch.cuda.Stream(device=self._device)

    def input_metadata(self) -> dict[str, TensorSpec]:
        return dict(self._inputs)

    def output_metadata(self) -> dict[str, TensorSpec]:
        return dict(self._outputs)

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self._ranges:
            return
        low, _, high = self._ranges[name]
        if any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
            raise UserError(f"input {name} has shape {list(shape)}, outside the engine's profile {list(low)}..{list(high)}; "
                            "rebuild with wider --profile ranges")

    def _address(self, tensor) -> int:
        return tensor.data_ptr() if tensor.numel() else self._scratch.data_ptr()

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._context is None:
            raise UserError("the session is closed")
        torch, ctx = self._torch, self._context
        keep = []
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            for name, value in feeds.items():
                self._check_profile(name, value.shape)
                tensor = torch.from_numpy(value).to(self._device, non_blocking=False)
                keep.append(tensor)
                if not ctx.set_input_shape(name, tuple(value.shape)):
                    raise UserError(f"TensorRT refused shape {list(value.shape)} for input {name}")
                ctx.set_tensor_address(name, self._address(tensor))
            outputs = {}
            for name, spec in self._outputs.items():
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise UserError(f"TensorRT could not infer the shape of output {name} from the inputs")
                tensor = torch.empty(shape, dtype=_torch_dtype(torch, spec.dtype), device=self._device)
                ctx.set_tensor_address(name, self._address(tensor))
                outputs[name] = tensor
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise UserError(f"TensorRT failed to run {self.path.name} (see the log with --verbose)")
            self._stream.synchronize()
        return {name: t.cpu().numpy() for name, t in outputs.items()}

    def close(self) -> None:
        self._context = None
        self._engine = None


def _torch_dtype(torch, dtype: np.dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16, np.dtype(np.int64): torch.int64,
            np.dtype(np.int32): torch.int32, np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8,
            np.dtype(np.bool_): torch.bool}[np.dtype(dtype)]
