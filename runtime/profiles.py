"""Optimization-profile shapes from an export's dynamic axes (pure functions, no TensorRT).

An exported graph names its dynamic dimensions (``export.json`` ``inputs``)::

    input_ids              [batch, sequence]
    attention_mask         [batch, total_sequence]        total = past + sequence
    position_ids           [batch, sequence]
    past_key_values.i.key  [batch, kv_heads, past_sequence, head_dim]
    pixel_values           [batch, 3, 224, 224]           (vision: batch only)

A TensorRT optimization profile needs a (min, opt, max) shape for every input. Here each
dimension *name* gets a range, and the shapes follow: static dims stay as they are, named
dims take their range. Defaults come from the export (``max_seq_len``, KV cache on/off, task);
user ranges (``--profile NAME=MIN:OPT:MAX``) override them. ``total_sequence`` is derived from
``sequence`` and ``past_sequence`` unless given.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from quantize.errors import UserError

Range = tuple[int, int, int]
Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

#: Short names accepted on the command line for the dims the exporter writes.
DIM_ALIASES = {"past": "past_sequence", "total": "total_sequence", "seq": "sequence"}
#: Default batch range of a build (min, opt, max).
DEFAULT_BATCH: Range = (1, 1, 4)
#: Sequence / past length the builder tunes for (capped by max_seq_len).
DEFAULT_OPT_LENGTH = 128


def canonical_dim(name: str) -> str:
    """``"past"`` -> ``"past_sequence"``, ...; other names unchanged."""
    return DIM_ALIASES.get(name, name)


def parse_profile(text: str) -> tuple[str, int, int, int]:
    """``"batch=1:1:8"`` -> ``("batch", 1, 1, 8)``; ``"batch=4"`` is a fixed size ``(4, 4, 4)``."""
    name, sep, values = text.partition("=")
    parts = values.split(":")
    try:
        numbers = [int(v) for v in parts]
    except ValueError:
        numbers = []
    if not sep or not name.strip() or len(numbers) not in (1, 3):
        raise UserError(f"--profile {text!r} is invalid: expected NAME=MIN:OPT:MAX or NAME=SIZE, e.g. batch=1:1:8")
    low, opt, high = numbers * 3 if len(numbers) == 1 else numbers
    return canonical_dim(name.strip()), low, opt, high


def check_range(name: str, value: Sequence[int]) -> Range:
    """Validate ``(min, opt, max)``: non-negative integers, ``min <= opt <= max``, ``max >= 1``."""
    if (len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
            or not 0 <= value[0] <= value[1] <= value[2] or value[2] < 1):
        raise UserError(f"profile range {name}={':'.join(str(v) for v in value)} is invalid: expected integers "
                        "0 <= MIN <= OPT <= MAX with MAX >= 1")
    return int(value[0]), int(value[1]), int(value[2])


def default_ranges(meta: Mapping[str, Any]) -> dict[str, Range]:
    """Ranges of the exporter's dims from ``export.json`` (``{}`` without one).

    LLM: batch 1..4 (opt 1); sequence 1..max_seq_len (opt 128); with the KV cache also
    past 0..max_seq_len-1 (opt 128). Vision: batch 1..4.
    """
    if not meta:
        return {}
    ranges: dict[str, Range] = {"batch": DEFAULT_BATCH}
    if meta.get("task") == "causal-lm":
        longest = int(meta.get("max_seq_len") or 0)
        if longest < 1:
            raise UserError("export.json has no max_seq_len; pass --profile sequence=MIN:OPT:MAX")
        ranges["sequence"] = (1, min(DEFAULT_OPT_LENGTH, longest), longest)
        if meta.get("kv_cache"):
            ranges["past_sequence"] = (0, min(DEFAULT_OPT_LENGTH, longest - 1), longest - 1)
    return ranges


def resolve_ranges(meta: Mapping[str, Any], overrides: Sequence[Sequence[Any]] = ()) -> dict[str, Range]:
    """Default ranges updated with ``overrides`` ``[(name, min, opt, max), ...]`` plus derived ``total_sequence``.

    ``total_sequence`` (the attention mask's length, past + new tokens) is the sum of the
    sequence and past ranges, its max capped at ``max_seq_len``, unless given explicitly.
    """
    ranges = default_ranges(meta)
    given = {}
    for name, *values in overrides:
        name = canonical_dim(name)
        given[name] = check_range(name, values)
    ranges.update(given)
    if ranges.get("batch", (1,))[0] < 1 or ranges.get("sequence", (1,))[0] < 1:
        bad = "batch" if ranges.get("batch", (1,))[0] < 1 else "sequence"
        raise UserError(f"profile range {bad} must start at 1 or more, got {':'.join(map(str, ranges[bad]))}")
    if "total_sequence" not in given and "sequence" in ranges and "past_sequence" in ranges:
        seq, past = ranges["sequence"], ranges["past_sequence"]
        high = seq[2] + past[2]
        longest = meta.get("max_seq_len") if meta else None
        if longest:
            high = max(seq[2], past[2] + 1, min(high, int(longest)))
        low, opt = seq[0] + past[0], seq[1] + past[1]
        ranges["total_sequence"] = (low, min(opt, high), high)
    return ranges


def profile_shapes(inputs: Sequence[Mapping[str, Any]], ranges: Mapping[str, Range]) -> dict[str, Shapes]:
    """``{input name: (min shape, opt shape, max shape)}`` for every input with a dynamic dim.

    Args:
        inputs: ``[{"name": ..., "shape": [int | str | None, ...]}, ...]`` (``export.json``
            ``inputs`` or read from the graph); strings name dynamic dims.
        ranges: ``{dim name: (min, opt, max)}``.

    Raises:
        UserError naming the input and the dim when a dynamic dim has no range, or when it is
        unnamed (pass ``--profile`` for it).
    """
    shapes: dict[str, Shapes] = {}
    for spec in inputs:
        dims = list(spec["shape"])
        if all(isinstance(d, int) and d >= 0 for d in dims):
            continue
        low, opt, high = [], [], []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim >= 0:
                low.append(dim), opt.append(dim), high.append(dim)
                continue
            if not isinstance(dim, str) or dim not in ranges:
                label = f"dimension {dim!r}" if isinstance(dim, str) else "an unnamed dynamic dimension"
                flag = f"--profile {dim}=MIN:OPT:MAX" if isinstance(dim, str) else "a re-export with named dynamic axes"
                raise UserError(f"input {spec['name']} has {label} on axis {axis} with no profile range; pass {flag}")
            r = ranges[dim]
            low.append(r[0]), opt.append(r[1]), high.append(r[2])
        shapes[spec["name"]] = (tuple(low), tuple(opt), tuple(high))
    return shapes


def unused_ranges(inputs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
    """The given range names that no input dimension uses (a typo, or a ViT given a sequence)."""
    used = {d for spec in inputs for d in spec["shape"] if isinstance(d, str)}
    return [n for n in names if n not in used]
