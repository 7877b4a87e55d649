"""What a measurement ran on: CPU / GPU name, driver, CUDA, TensorRT / ORT / torch versions.

Recorded in ``report.json`` and ``bench.json`` so results from different machines can be told
apart and merged. Nothing here initialises CUDA unless torch already sees a GPU, and TensorRT is
imported only where a GPU exists (the PyPI stub of ``tensorrt`` reaches for NVIDIA's index when
imported without its libraries).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that determine the numbers."""
    out = {"python": platform.python_version()}
    for name in ("gptaq-deploy", "torch", "transformers", "numpy", "onnx", "onnxruntime"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # not installed: simply absent from the record
            continue
    return out


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s model name on Linux, else ``platform.processor()``)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _nvidia_smi() -> dict[str, str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    name, driver, memory = (part.strip() for part in (out.stdout.strip().splitlines()[0].split(",") + ["", ""])[:3])
    return {"gpu": name, "driver": driver, "gpu_memory": memory}


def gpu_facts() -> dict[str, Any]:
    """GPU name, compute capability, driver, CUDA and TensorRT versions (``{}`` without a GPU)."""
    facts: dict[str, Any] = {}
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            facts.update({"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
                          "cuda": torch.version.cuda})
    except ImportError:
        pass
    facts.update({k: v for k, v in _nvidia_smi().items() if k not in facts})
    if facts.get("gpu") and importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt

            facts["tensorrt"] = tensorrt.__version__
        except Exception as exc:  # a broken TensorRT install is a fact worth recording, not a crash
            facts["tensorrt"] = f"unavailable ({type(exc).__name__})"
    return facts


def capture() -> dict[str, Any]:
    """The whole environment record (JSON-ready)."""
    env: dict[str, Any] = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
                           "os": platform.platform(), "versions": versions()}
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    env.update(gpu_facts())
    return env


def device_label(env: dict[str, Any], backend: str, providers: list[str] | None = None) -> str:
    """A short title: ``"CPU: AMD EPYC (2 cores), ONNX Runtime 1.32 CPU"`` or the GPU's name."""
    runtime = {"ort": f"ONNX Runtime {env['versions'].get('onnxruntime', '?')}",
               "trt": f"TensorRT {env.get('tensorrt', '?')}", "torch": f"PyTorch {env['versions'].get('torch', '?')}"}
    on_gpu = backend == "trt" or any("CUDA" in p or "Tensorrt" in p for p in providers or [])
    if on_gpu and env.get("gpu"):
        return f"GPU: {env['gpu']}, {runtime.get(backend, backend)}"
    return f"CPU: {env['cpu']} ({env['cpu_count']} cores), {runtime.get(backend, backend)} CPU"
