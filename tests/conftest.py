"""Test-wide setup: the ``gpu`` and ``trt`` markers are skipped here, in one place."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def _has_tensorrt() -> bool:
    # find_spec only: importing the PyPI stub of tensorrt would try to reach NVIDIA's index.
    return _has_cuda() and importlib.util.find_spec("tensorrt") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_trt = pytest.mark.skip(reason="needs TensorRT and a CUDA device")
    cuda, trt = _has_cuda(), _has_tensorrt()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not trt:
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
