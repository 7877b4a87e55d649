"""The ``Session`` protocol every backend implements (ONNX Runtime now, TensorRT later).

A session is a context manager with named numpy inputs and outputs::

    with OrtSession("out/model.onnx") as s:
        s.input_metadata()          # {"input_ids": TensorSpec(dtype=int64, shape=("batch", "sequence")), ...}
        outputs = s.run({"input_ids": ids, ...})   # {"logits": ndarray, ...}

:meth:`Session.run` validates the feeds before the backend sees them — missing or unknown
names, wrong dtypes, wrong ranks, wrong static dimensions — and raises a one-line
:class:`~quantize.errors.UserError` naming the input.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Collection, Mapping

import numpy as np

from quantize.errors import UserError


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of an input or output; dynamic dims are names (str) or None."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"


class Session(abc.ABC):
    """A loaded model that maps named numpy arrays to named numpy arrays.

    Backends whose decoder graphs can update a preallocated KV cache in place (ONNX Runtime on
    a fused export) also implement :meth:`allocate_cache` / :meth:`run_in_place`; the default
    says they cannot, and callers fall back to :meth:`run` with the cache copied each step.
    """

    #: whether :meth:`allocate_cache` / :meth:`run_in_place` work for this session's graph
    supports_in_place_cache: bool = False

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend's resources (idempotent)."""

    @abc.abstractmethod
    def input_metadata(self) -> dict[str, TensorSpec]:
        """Inputs in graph order."""

    @abc.abstractmethod
    def output_metadata(self) -> dict[str, TensorSpec]:
        """Outputs in graph order."""

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Backend call on validated feeds."""

    def allocate_cache(self, batch: int, max_len: int) -> Any:
        """A KV cache of ``max_len`` positions for ``batch`` rows that :meth:`run_in_place` updates."""
        raise UserError(f"{type(self).__name__} cannot keep the KV cache in place for this graph")

    def run_in_place(self, feeds: Mapping[str, np.ndarray], cache: Any) -> dict[str, np.ndarray]:
        """Run with ``feeds`` (every input but the cache) and the cache of :meth:`allocate_cache`.

        The graph reads the cache's first ``attention_mask.shape[1] - input_ids.shape[1]``
        positions as the past and writes the new tokens' keys and values after them, in place;
        returns the outputs that are not cache (``logits``).
        """
        raise UserError(f"{type(self).__name__} cannot keep the KV cache in place for this graph")

    def validate(self, feeds: Mapping[str, np.ndarray], skip: Collection[str] = ()) -> dict[str, np.ndarray]:
        """Check ``feeds`` against :meth:`input_metadata` (less the names in ``skip``); returns them as contiguous arrays."""
        specs = {n: s for n, s in self.input_metadata().items() if n not in skip}
        missing = [n for n in specs if n not in feeds]
        unknown = [n for n in feeds if n not in specs]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown input(s) {', '.join(unknown)}")
            raise UserError(f"{'; '.join(parts)}; the model takes {', '.join(specs)}")
        out = {}
        for name, spec in specs.items():
            value = feeds[name]
            if not isinstance(value, np.ndarray):
                raise UserError(f"input {name} must be a numpy array, got {type(value).__name__}")
            if value.dtype != spec.dtype:
                raise UserError(f"input {name} has dtype {value.dtype.name}, expected {spec.dtype.name} ({spec.describe()})")
            if value.ndim != len(spec.shape):
                raise UserError(f"input {name} has shape {list(value.shape)}, expected rank {len(spec.shape)} ({spec.describe()})")
            for axis, (have, want) in enumerate(zip(value.shape, spec.shape)):
                if isinstance(want, int) and want >= 0 and have != want:
                    raise UserError(f"input {name} has size {have} on axis {axis}, expected {want} ({spec.describe()})")
            out[name] = np.ascontiguousarray(value)
        return out

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (all inputs, exact dtypes); returns every output by name."""
        return self._run(self.validate(feeds))
