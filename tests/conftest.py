"""Test-wide setup: the ``gpu``, ``trt`` and ``gptqmodel`` markers are skipped here, in one place.

``gptqmodel`` tests run a GPTQ reader from another virtual environment (GPTQModel 7.7 +
optimum + transformers, never a dependency of this package): set ``GPTQMODEL_PYTHON`` to its
python to run them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def _has_tensorrt() -> bool:
    # find_spec only: importing the PyPI stub of tensorrt would try to reach NVIDIA's index.
    return _has_cuda() and importlib.util.find_spec("tensorrt") is not None


def gptqmodel_python() -> str | None:
    """The python of a GPTQModel venv named by ``GPTQMODEL_PYTHON``, or ``None``."""
    path = os.environ.get("GPTQMODEL_PYTHON")
    return path if path and Path(path).is_file() else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_trt = pytest.mark.skip(reason="needs TensorRT and a CUDA device")
    skip_gptqmodel = pytest.mark.skip(reason="needs GPTQMODEL_PYTHON: a venv with gptqmodel 7.7, optimum, transformers")
    cuda, trt, gptqmodel = _has_cuda(), _has_tensorrt(), gptqmodel_python()
    for item in items:
        if "gptqmodel" in item.keywords and not gptqmodel:
            item.add_marker(skip_gptqmodel)
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not trt:
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
