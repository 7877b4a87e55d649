"""export stage: (quantized) model -> ``model.onnx`` with INT4 DequantizeLinear blocks + ``export.json``.

    from export import ExportConfig, export_onnx
    export_onnx("runs/llama-w4", "runs/llama-w4-onnx", ExportConfig(target="trt", dtype="fp16"))
"""

from .config import ExportConfig
from .to_onnx import export_onnx

__all__ = ["ExportConfig", "export_onnx"]
