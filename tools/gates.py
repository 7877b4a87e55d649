"""Accuracy thresholds (flags or a YAML / JSON gate file) and the verdict they give.

A gate file is a flat mapping of threshold names to values::

    # gate.yaml
    max_ppl_increase: 3%        # candidate perplexity at most 3 % above the reference
    min_top1_agreement: 0.99    # next-token (lm) / class (image) top-1 agreement with the reference
    max_kl: 0.05                # mean KL(reference || candidate) in nats
    max_top1_drop: 1.0          # image: top-1 at most 1.0 percentage point below the reference

Percentages may be written ``3%`` or ``3`` (the unit is percent); agreement as ``0.99`` or
``99%``. Flags given on the command line override the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from quantize.errors import UserError


@dataclass(frozen=True)
class Threshold:
    """One gate: ``metric`` compared with ``op`` (``"max"``: value <= limit, ``"min"``: value >= limit)."""

    name: str
    metric: str
    op: str
    tasks: tuple[str, ...]
    unit: str
    help: str


THRESHOLDS: dict[str, Threshold] = {t.name: t for t in (
    Threshold("max_ppl_increase", "ppl_increase_pct", "max", ("lm",), "%",
              "largest candidate perplexity increase over the reference, percent (e.g. 3%%)"),
    Threshold("min_top1_agreement", "top1_agreement", "min", ("lm", "image"), "fraction",
              "smallest top-1 agreement with the reference, 0..1 (next token for lm, class for image)"),
    Threshold("max_kl", "kl", "max", ("lm", "image"), "nats",
              "largest mean KL(reference || candidate) of the predicted distributions, nats"),
    Threshold("max_top1_drop", "top1_drop_pts", "max", ("image",), "points",
              "largest top-1 drop below the reference, percentage points (e.g. 1.0)"),
)}


def parse_value(name: str, value: Any) -> float:
    """A threshold value from a flag or a gate file (``"3%"``, ``3``, ``"0.99"``, ``"99%"``)."""
    spec = THRESHOLDS[name]
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text.rstrip("%").strip()) if not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    if math.isnan(number) or math.isinf(number):
        raise UserError(f"threshold {name}={value!r} is not a number (e.g. {'3%' if spec.unit == '%' else '0.99'})")
    if spec.unit == "fraction":
        number = number / 100.0 if percent else number
        if not 0.0 <= number <= 1.0:
            raise UserError(f"threshold {name}={value!r} must be a fraction in 0..1 (or a percentage like 99%)")
    elif number < 0:
        raise UserError(f"threshold {name}={value!r} must not be negative")
    return number


def load_gate_file(path: str | Path) -> dict[str, float]:
    """Thresholds of a ``.yaml`` / ``.yml`` / ``.json`` gate file (one-line errors for anything wrong)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"gate file {p} does not exist")
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"reading {p} needs PyYAML (pip install pyyaml), or write the gate as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"gate file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    elif p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"gate file {p} is not valid JSON: {exc}") from None
    else:
        raise UserError(f"gate file {p} must be .yaml, .yml or .json")
    if not isinstance(data, dict) or not data:
        raise UserError(f"gate file {p} must be a non-empty mapping of thresholds ({', '.join(THRESHOLDS)})")
    unknown = sorted(set(data) - set(THRESHOLDS))
    if unknown:
        raise UserError(f"gate file {p}: unknown threshold {unknown[0]!r}; known: {', '.join(THRESHOLDS)}")
    return {name: parse_value(name, value) for name, value in data.items()}


def resolve_thresholds(task: str, gate_file: str | None, flags: Mapping[str, Any]) -> dict[str, float]:
    """Gate-file thresholds overridden by the flags that were given; refuses ones for another task."""
    thresholds = load_gate_file(gate_file) if gate_file else {}
    thresholds.update({name: parse_value(name, v) for name, v in flags.items() if v is not None})
    for name in thresholds:
        if task not in THRESHOLDS[name].tasks:
            raise UserError(f"threshold {name} applies to --task {'/'.join(THRESHOLDS[name].tasks)}, not {task}")
    return thresholds


@dataclass(frozen=True)
class Check:
    """One metric row: reference and candidate values, their delta, and the gate on ``value``.

    ``value`` is the number the threshold is compared with (the delta for perplexity and
    top-1, the candidate's own value for agreement and KL); ``threshold`` / ``limit`` are
    ``None`` when the metric is reported but not gated.
    """

    metric: str
    reference: float | None
    candidate: float | None
    delta: float | None
    value: float
    threshold: str | None = None
    limit: float | None = None

    @property
    def passed(self) -> bool | None:
        """``True`` / ``False`` when gated (NaN fails), ``None`` when not gated."""
        if self.threshold is None or self.limit is None:
            return None
        if math.isnan(self.value):
            return False
        op = THRESHOLDS[self.threshold].op
        return self.value <= self.limit if op == "max" else self.value >= self.limit


@dataclass(frozen=True)
class GateResult:
    """All checks; truthy when every gated check passed."""

    checks: tuple[Check, ...]

    def __bool__(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def verdict(self) -> str:
        return "pass" if self else "fail"

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]
