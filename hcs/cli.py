"""The single ``hcs`` command line. Each component contributes one subcommand module.

A subcommand module exposes ``register(subparsers) -> None`` which adds its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).

Every way a command can fail ends in one line on stderr (``hcs COMMAND: error: ...``) and a non-zero
exit: errors users cause are ``HcsError``; a closed output pipe exits 141 like other Unix tools; any
other exception is reported in one line, with the traceback only at ``--log-level debug``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from hcs import __version__
from hcs.errors import HcsError
from hcs.logs import LEVELS, setup_logging

#: Subcommand modules, in help order. Each provides ``register(subparsers)``.
SUBCOMMAND_MODULES = (
    "hcs.devices.cli",  # inspect
    "hcs.node.cli",  # node
    "hcs.allocator.cli",  # allocator, alloc
    "hcs.allocator.replay_cli",  # replay
    "hcs.webhook.cli",  # webhook
    "hcs.demo.cli",  # demo
    "hcs.checkpoint.cli",  # migrate, checkpoint
)

#: exit status for a closed output pipe (128 + SIGPIPE), as `head` users expect from Unix tools.
EXIT_PIPE = 141

log = logging.getLogger("hcs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcs",
        description="Hetero-Compute-Router: place abstract accelerator requests on NVIDIA, Ascend, "
        "Hygon and Cambricon devices in Kubernetes. Start with `hcs demo`.",
        epilog="Shell completion: `hcs --print-completion bash > /etc/bash_completion.d/hcs` (or zsh).",
    )
    parser.add_argument("-V", "--version", action="version", version=f"hcs {__version__}")
    parser.add_argument("--log-level", default=None, type=str.lower, choices=LEVELS, metavar="LEVEL",
                        help=f"{'|'.join(LEVELS)} (env HCS_LOG_LEVEL; default info)")
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines (env HCS_LOG_JSON=1)")
    _add_completion(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # component not built yet
            raise
        module.register(subparsers)
    _describe_subcommands(subparsers)
    return parser


def _add_completion(parser: argparse.ArgumentParser) -> None:
    try:
        # optional: shell completion when shtab is installed
        import shtab
    except ImportError:  # pragma: no cover - installed by `make dev`
        return
    shtab.add_argument_to(parser, ["--print-completion"], help="print a bash/zsh/tcsh completion script and exit")


def _describe_subcommands(subparsers: Any) -> None:
    """A subcommand without a description shows its one-line help at the top of its ``--help``."""
    for action in subparsers._choices_actions:
        sub = subparsers.choices.get(action.dest)
        if sub is not None and not sub.description and action.help:
            sub.description = action.help[0].upper() + action.help[1:] + "."


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "command", None) or ""
    prefix = f"hcs {command}".strip()
    try:
        level = setup_logging(args.log_level, args.log_json)
    except HcsError as exc:
        print(f"hcs: error: {exc}", file=sys.stderr)
        return 2
    args.effective_log_level = level
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
        return code
    except HcsError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _silence_stdout()
        print(f"{prefix}: output closed early (broken pipe); the rest was not written", file=sys.stderr)
        return EXIT_PIPE
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except UnicodeDecodeError as exc:  # an input file that is not text; the message names no file, say so
        print(f"{prefix}: error: an input file is not UTF-8 text ({exc.reason} at byte {exc.start}); "
              "check the files passed to this command", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. disk full or permission denied while writing an output
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{prefix}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if level == "debug":
            log.exception("%s failed", prefix)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"{prefix}: error: unexpected {type(exc).__name__}{': ' + detail if detail else ''} "
              "(run with --log-level debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
