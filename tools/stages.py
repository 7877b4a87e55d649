"""Stage bookkeeping of :mod:`tools.pipeline`: fingerprints, completeness, ``pipeline.json``.

A :class:`Stage` knows how to run itself, which files make its output complete, and how to
digest that output cheaply (metadata files' bytes; large files' sizes and mtimes). Its
fingerprint hashes its settings and the digests of the outputs it reads, so a change anywhere
upstream reruns everything after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger("tools.pipeline")

STATE_FILE = "pipeline.json"


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped"
    output: Path
    seconds: float
    note: str = ""


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def output_digest(path: Path, metadata: Sequence[str], large: Sequence[str] = ()) -> str:
    """Digest of an output: its metadata files' bytes and its large files' sizes and mtimes."""
    h = hashlib.sha256()
    for name in metadata:
        h.update(name.encode() + b"\0" + (path / name).read_bytes())
    for name in large:
        stat = (path / name).stat()
        h.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()


@dataclass
class Stage:
    """How to run one stage, how to tell it finished, and how to fingerprint its output."""

    name: str
    output: Path
    settings: dict[str, Any]
    deps: tuple[str, ...]
    metadata: tuple[str, ...]
    large: Callable[[Path], list[str]]
    work: Callable[[], None]
    inputs: tuple[str, ...] = ()  # digests of the deps' outputs, set just before the stage runs

    def fingerprint(self) -> str:
        return _hash({"stage": self.name, "settings": self.settings, "inputs": list(self.inputs)})

    def complete(self) -> bool:
        return self.output.is_dir() and all((self.output / n).is_file() for n in self.metadata) and \
            all((self.output / n).is_file() for n in self.large(self.output))

    def digest(self) -> str:
        return output_digest(self.output, self.metadata, self.large(self.output))


class State:
    """``pipeline.json``: the fingerprint and output digest of every finished stage."""

    def __init__(self, out: Path, config: Any) -> None:
        self.path = out / STATE_FILE
        data = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                log.warning("%s is corrupt; every stage runs again", self.path)
        self.stages: dict[str, dict[str, Any]] = data.get("stages", {}) if isinstance(data, dict) else {}
        self.config = config

    def reason_to_run(self, stage: Stage) -> str | None:
        """Why ``stage`` must run (``None``: it may be skipped)."""
        if not stage.output.exists():
            return "no output yet"
        if not stage.complete():
            return "its output is incomplete"
        record = self.stages.get(stage.name)
        if record is None:
            return f"{STATE_FILE} has no record of it"
        if record.get("fingerprint") != stage.fingerprint():
            return "its settings or inputs changed"
        if record.get("digest") != stage.digest():
            return "its output changed since it was made"
        return None

    def record(self, stage: Stage, seconds: float) -> None:
        from quantize.atomic import write_bytes

        self.stages[stage.name] = {"fingerprint": stage.fingerprint(), "digest": stage.digest(),
                                   "output": str(stage.output), "seconds": round(seconds, 1), "finished": time.time()}
        body = {"config": self.config.to_dict(), "stages": self.stages}
        write_bytes(self.path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())


def run_stage(state: State, stage: Stage) -> StageResult:
    reason = state.reason_to_run(stage)
    if reason is None:
        log.info("%s: up to date, skipped (%s)", stage.name, stage.output)
        made = state.stages[stage.name]["seconds"]
        return StageResult(stage.name, "skipped", stage.output, 0.0, f"made earlier in {made:.1f} s")
    log.info("%s: running (%s)", stage.name, reason)
    start = time.perf_counter()
    stage.work()
    seconds = time.perf_counter() - start
    state.record(stage, seconds)
    return StageResult(stage.name, "ran", stage.output, seconds)
