"""``stream-trainer`` command line. Every flag can also come from an environment variable,
named in ``--help`` (``STREAM_TRAINER_<FLAG>``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from stream_trainer import stopping
from stream_trainer.cli.checkpoint import cmd_checkpoint
from stream_trainer.cli.commands import (
    cmd_broker,
    cmd_check_config,
    cmd_demo,
    cmd_produce,
    cmd_report,
    cmd_run,
)
from stream_trainer.cli.evaluate import cmd_evaluate
from stream_trainer.cli.parsers import build_parser
from stream_trainer.errors import StreamTrainerError
from stream_trainer.log import setup_logging

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "broker": cmd_broker,
    "produce": cmd_produce,
    "run": cmd_run,
    "check-config": cmd_check_config,
    "demo": cmd_demo,
    "report": cmd_report,
    "evaluate": cmd_evaluate,
    "checkpoint": cmd_checkpoint,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging, run the command; errors are one line and an exit code."""
    # first of all: a SIGTERM while the daemon starts (imports take seconds) is a stop
    stopping.install()
    args = build_parser().parse_args(argv)
    if args.command != "run":  # the other commands take signals as Python does
        stopping.uninstall()
    setup_logging(args.log_level, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except StreamTrainerError as err:
        print(f"stream-trainer {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
