"""Shared behaviour of every ``python -m ...`` entry point: one-line errors, exit codes, logging.

Exit codes: 0 success, 1 a gate failed (tools only), 2 bad input or error. A
:class:`~quantize.errors.UserError` prints ``error: <message>`` on one line; ``--verbose``
(or ``GPTAQ_TRACEBACK=1``) shows the traceback as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from .errors import UserError

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (argparse's own convention) and no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and turn user errors into one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or "-v" in args or os.environ.get("GPTAQ_TRACEBACK") == "1"
    try:
        return main(args)
    except UserError as exc:
        if verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2, message already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
