"""The ``robustopt`` command: one subcommand per module of this package.

Each subcommand is a module ``robustopt/cli/<name>.py`` exposing ``add_parser(subparsers)`` (it adds its
parser, usually with the shared options of :mod:`robustopt.cli.options`, and sets ``run=`` as default) and
``run(args) -> int`` (the exit code). Adding a subcommand is one new module plus one entry in
:data:`SUBCOMMANDS`; a listed module that does not exist is skipped.

Errors the user can fix (bad paths, bad flags, bad values, unsupported models, missing optional packages)
print one line ``robustopt <command>: error: ...`` on stderr and exit with code 2 (bad flags) or 1 (the
rest), without a traceback; ``--traceback`` (or ``ROBUSTOPT_TRACEBACK=1``) shows it.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from importlib import import_module

from .options import CommandError, Parser

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

SUBCOMMANDS = ["demo", "train", "attack", "certify", "compare", "linear", "vnn"]

# exceptions that mean "the input was wrong", reported in one line
USER_ERRORS = (CommandError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError, ImportError,
               NotImplementedError)


def build_parser() -> Parser:
    from .. import __version__

    parser = Parser(prog="robustopt",
                    description="Adversarial robustness by convex optimization: attack, certify and compare "
                                "bounds on ReLU networks; exact robust linear models.")
    parser.add_argument("--version", action="version", version=f"robustopt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for name in SUBCOMMANDS:
        try:
            module = import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name == f"{__name__}.{name}":  # not written yet: skip it
                continue
            raise
        module.add_parser(subparsers)
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, KeyError):  # KeyError's str() quotes its argument
        text = f"missing key {text}"
    return " ".join(text.split())


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _sigterm_as_interrupt():
    """SIGTERM (``kill``, a batch system's time limit) ends a run like Ctrl-C: files closed, local cluster shut."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def main(argv=None) -> int:
    """Run ``robustopt`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"robustopt {args.command}"
    show = getattr(args, "traceback", False) or os.environ.get("ROBUSTOPT_TRACEBACK", "") not in ("", "0")
    _sigterm_as_interrupt()
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `robustopt ... | head`
        return 0
    except USER_ERRORS as err:
        if show:
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: still one line, with the way to see more
        if show:
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {_one_line(err)} (rerun with --traceback for "
              f"details)", file=sys.stderr)
        return 1
