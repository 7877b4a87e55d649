"""Post-training quantization of transformers: GPTAQ, GPTQ and RTN.

    from quantize import QuantConfig, quantize_model, save_quantized, load_quantized

Importing this package pulls in torch, transformers' light modules and safetensors only (no
onnx, onnxruntime or tensorrt) and does not initialise CUDA.
"""

from .api import quantize_model
from .checkpoint import load_quantized, save_quantized
from .config import QuantConfig
from .errors import ConfigError, NumericalError, UserError

__all__ = ["QuantConfig", "quantize_model", "save_quantized", "load_quantized", "ConfigError", "NumericalError", "UserError"]
