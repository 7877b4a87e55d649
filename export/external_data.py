"""Save a model with its initializers in one external data file, identical tensors stored once.

ONNX external data names a file, an offset and a length per initializer; nothing forbids two
initializers naming the same bytes. :func:`save_deduplicated` uses that for tensors that must
stay separate initializers for ONNX Runtime but hold the same values (the INT4 table an
``--share-embedding`` export reads both as LM head and as embedding).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data

#: tensors below this many bytes stay inside model.onnx
INLINE_BYTES = 1024
#: each stored tensor starts on a page boundary, so ONNX Runtime can map it directly
ALIGN = 4096


def save_deduplicated(proto: onnx.ModelProto, model_path: Path, location: str) -> int:
    """Write ``proto`` to ``model_path`` and its large initializers to ``location`` beside it.

    Initializers with the same type, shape and bytes share one stored copy. ``proto`` is
    modified (its large initializers point at the file afterwards). Returns the bytes the
    sharing saved.
    """
    stored: dict[tuple, tuple[int, int]] = {}
    saved = 0
    with open(model_path.parent / location, "wb") as fh:
        for tensor in proto.graph.initializer:
            if not tensor.HasField("raw_data") or len(tensor.raw_data) < INLINE_BYTES:
                continue
            key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).digest())
            if key in stored:
                saved += len(tensor.raw_data)
            else:
                fh.write(b"\0" * (-fh.tell() % ALIGN))
                stored[key] = (fh.tell(), len(tensor.raw_data))
                fh.write(tensor.raw_data)
            offset, length = stored[key]
            set_external_data(tensor, location, offset=offset, length=length)
            tensor.ClearField("raw_data")
    onnx.save_model(proto, str(model_path))
    return saved
