"""The single ``hcs`` command line. Each component contributes one subcommand module.

A subcommand module exposes ``register(subparsers) -> None`` which adds its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hcs import __version__
from hcs.errors import HcsError
from hcs.logs import setup_logging

#: Subcommand modules, in help order. Each provides ``register(subparsers)``.
SUBCOMMAND_MODULES = (
    "hcs.devices.cli",  # inspect
    "hcs.node.cli",  # node
    "hcs.allocator.cli",  # allocator, alloc
    "hcs.allocator.replay_cli",  # replay
    "hcs.webhook.cli",  # webhook
    "hcs.demo.cli",  # demo
)

log = logging.getLogger("hcs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcs",
        description="Hetero-Compute-Router: place abstract accelerator requests on NVIDIA, Ascend, "
        "Hygon and Cambricon devices in Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"hcs {__version__}")
    parser.add_argument("--log-level", default=None, help="debug|info|warning|error (env HCS_LOG_LEVEL)")
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines (env HCS_LOG_JSON=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # component not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_json)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except HcsError as exc:
        print(f"hcs {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
