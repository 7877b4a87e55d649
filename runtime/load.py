"""Open any artifact of the toolchain as a :class:`~runtime.base.Session`.

    with open_session("runs/llama-w4-trt") as session:      # build dir: build.json picks TensorRT
        logits = session.run(feeds)["logits"]

Accepted paths (:func:`resolve_artifact`):

* a ``.onnx`` file, or an export directory (``model.onnx`` + ``export.json``): ONNX Runtime;
* a build directory (``build.json`` + ``model.onnx`` or ``model.plan``): the backend it was
  built for;
* a ``model.plan`` next to its ``build.json``: TensorRT, after checking that this machine has
  the GPU, compute capability and TensorRT version the plan was built with.

Errors are one-line :class:`~quantize.errors.UserError`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantize.errors import UserError

from .base import Session
from .build import BUILD_JSON, ONNX_FILE, PLAN_FILE, environment_mismatch, read_json, sha256_file

log = logging.getLogger(__name__)

BACKENDS = ("ort", "trt")


@dataclass(frozen=True)
class Artifact:
    """A resolved model path.

    Attributes:
        kind: ``"onnx"`` (a bare ONNX file), ``"export"`` (export directory) or ``"build"``.
        backend: ``"ort"`` or ``"trt"``.
        model_file: the file a session loads (``model.onnx`` or ``model.plan``).
        directory: where ``export.json``, the tokenizer and ``build.json`` live.
        build: ``build.json`` (``{}`` when none).
    """

    kind: str
    backend: str
    model_file: Path
    directory: Path
    build: dict[str, Any] = field(default_factory=dict)


def _from_build_dir(directory: Path) -> Artifact:
    build = read_json(directory / BUILD_JSON)
    backend, name = build.get("backend"), build.get("model_file")
    if backend not in BACKENDS or not isinstance(name, str):
        raise UserError(f"{directory / BUILD_JSON} is corrupt: expected a backend (ort or trt) and a model_file")
    model = directory / name
    if not model.is_file():
        raise UserError(f"{model} is missing (named by {directory / BUILD_JSON})")
    return Artifact("build", backend, model, directory, build)


def resolve_artifact(path: str | os.PathLike) -> Artifact:
    """What ``path`` is (ONNX file, export dir, build dir, plan) and which backend runs it."""
    p = Path(path)
    if p.is_dir():
        if (p / BUILD_JSON).is_file():
            return _from_build_dir(p)
        if (p / ONNX_FILE).is_file():
            return Artifact("export", "ort", p / ONNX_FILE, p)
        raise UserError(f"{p} holds neither {ONNX_FILE} nor {BUILD_JSON} (expected an export or a build directory)")
    if not p.is_file():
        raise UserError(f"{p} does not exist (expected {ONNX_FILE}, {PLAN_FILE}, an export directory or a build directory)")
    build_json = p.parent / BUILD_JSON
    if build_json.is_file() and read_json(build_json).get("model_file") == p.name:
        return _from_build_dir(p.parent)
    if p.suffix == ".plan" or p.suffix == ".engine":
        raise UserError(f"{p} has no {BUILD_JSON} beside it: a TensorRT plan is only loaded with the record of the GPU "
                        "and TensorRT version it was built for; build it with python -m runtime build --backend trt")
    return Artifact("onnx", "ort", p, p.parent)


def open_session(path: str | os.PathLike, *, backend: str | None = None, provider: str | None = None,
                 threads: int | None = None, accuracy_level: int | None = None,
                 spinning: bool | None = None) -> Session:
    """A session on ``path`` (see the module docstring); ``backend`` must agree with the artifact.

    Args:
        backend: ``"ort"``, ``"trt"`` or ``None`` (what the artifact is).
        provider: ORT provider (``"cpu"``, ``"cuda"``, ...); default: the build's provider, else
            CUDA when available, else CPU. TensorRT accepts only ``None`` or ``"cuda"``.
        threads: ORT intra-op threads.
        accuracy_level: ORT MatMulNBits accuracy level for a model fused at load time (an ORT
            build has it baked in already).
        spinning: ORT only: whether idle intra-op threads spin-wait for the next run
            (``None``: ORT's default, on). Several sessions taking turns on the same cores
            should turn it off: one session's spinning threads slow the next one's run.
    """
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"backend {backend!r} is invalid: expected one of {', '.join(BACKENDS)}")
    art = resolve_artifact(path)
    if backend is not None and backend != art.backend:
        if backend == "trt":
            raise UserError(f"{art.model_file} is not a TensorRT engine; build one first: "
                            f"python -m runtime build {art.model_file} --backend trt --out DIR")
        source = art.build.get("source", {}).get("onnx", "its source model.onnx")
        raise UserError(f"{art.model_file} is a TensorRT engine; for ONNX Runtime open {source}, or build with --backend ort")
    if art.backend == "trt":
        return _open_trt(art, provider)
    if art.kind == "build":
        recorded = art.build.get("environment", {}).get("onnxruntime")
        import onnxruntime

        if recorded and recorded != onnxruntime.__version__:
            log.warning("%s was optimized by ONNX Runtime %s, this is %s; rebuild it if loading fails",
                        art.model_file, recorded, onnxruntime.__version__)
        if provider is None:
            provider = (art.build.get("config") or {}).get("provider")
    from .ort import OrtSession

    config = {} if spinning is None else {"session.intra_op.allow_spinning": "1" if spinning else "0"}
    return OrtSession(art.model_file, providers=provider, accuracy_level=accuracy_level, threads=threads,
                      session_config=config)


def _open_trt(art: Artifact, provider: str | None) -> Session:
    if provider not in (None, "cuda"):
        raise UserError(f"provider {provider!r} does not apply to a TensorRT engine (it runs on the CUDA GPU)")
    from . import trt

    here = trt.probe_environment()
    mismatch = environment_mismatch(art.build.get("environment", {}), here)
    if mismatch:
        source = art.build.get("source", {}).get("onnx", "MODEL.onnx")
        raise UserError(f"{art.model_file}: {mismatch}; rebuild it here: python -m runtime build {source} --backend trt --out DIR")
    recorded = art.build.get("model_sha256")
    if recorded and sha256_file(art.model_file) != recorded:
        raise UserError(f"{art.model_file} does not match its {BUILD_JSON} (sha256 differs): the plan was modified or truncated")
    return trt.TrtSession(art.model_file, art.build)
