"""runtime stage: build and run exported models behind one :class:`Session` protocol (ONNX Runtime, TensorRT).

    from runtime import BuildConfig, build_engine, open_session, generate
    build_engine("runs/llama-w4-onnx", "runs/llama-w4-trt", BuildConfig(backend="trt"))
    with open_session("runs/llama-w4-trt") as session:
        result = generate(session, ids, 32)

Nothing here imports tensorrt or onnxruntime at import time (``runtime.trt`` and
``runtime.ort`` import them when a session or build needs them).
"""

from .base import Session, TensorSpec
from .build import BuildConfig, build_engine
from .generate import GenerationResult, generate
from .load import open_session
from .ort import OrtSession

__all__ = ["Session", "TensorSpec", "OrtSession", "BuildConfig", "build_engine", "open_session", "generate",
           "GenerationResult"]
