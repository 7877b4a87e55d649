"""runtime stage: run exported models behind one :class:`Session` protocol (ONNX Runtime; TensorRT later).

    from runtime import OrtSession, generate
"""

from .base import Session, TensorSpec
from .generate import GenerationResult, generate
from .ort import OrtSession

__all__ = ["Session", "TensorSpec", "OrtSession", "generate", "GenerationResult"]
