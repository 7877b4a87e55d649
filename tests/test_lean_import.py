import subprocess
import sys

CHECK = """
import sys, torch
import quantize, quantize.gptq, quantize.primitives, quantize.hessian, quantize.config
heavy = [m for m in ("onnx", "onnxruntime", "tensorrt", "timm", "datasets") if m in sys.modules]
assert not heavy, heavy
assert not torch.cuda.is_initialized()
print("lean")
"""


def test_import_quantize_is_lean():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lean"
