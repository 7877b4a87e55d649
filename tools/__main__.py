"""``python -m tools COMMAND ...``: the release tools.

Commands:
    validate   accuracy gate of a candidate artifact against a reference (exit 0 pass, 1 fail, 2 error)
    bench      latency of artifacts against an FP baseline (bench.json / .csv / .png); also the
               solver / quality / vit / rotation benchmarks (``python -m tools bench solver ...``)
    pipeline   quantize -> export -> build -> validate -> bench in one command (finished stages skipped)
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from quantize.cli import EXIT_ERROR, run_cli

COMMANDS = {"validate": "tools.validate", "bench": "tools.bench", "pipeline": "tools.pipeline"}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else EXIT_ERROR
    if args[0] not in COMMANDS:
        print(f"python -m tools: error: unknown command {args[0]!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_ERROR
    module = importlib.import_module(COMMANDS[args[0]])
    return module.main(args[1:])


if __name__ == "__main__":
    sys.exit(run_cli(main))
