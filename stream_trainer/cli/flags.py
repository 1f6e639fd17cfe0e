"""Env-aware flags: every flag can also come from an environment variable, named in
``--help`` (``STREAM_TRAINER_<FLAG>``, or ``STREAM_TRAINER_<COMMAND>_<FLAG>``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from stream_trainer import domains

ENV = "STREAM_TRAINER_"
KINDS = domains.KINDS  # the built-in domains


def env_name(flag: str, scope: str = "") -> str:
    """``--drift-at`` of ``produce`` -> ``STREAM_TRAINER_PRODUCE_DRIFT_AT``.

    >>> env_name("--drift-at", "produce")
    'STREAM_TRAINER_PRODUCE_DRIFT_AT'
    """
    name = (f"{scope}_" if scope else "") + flag.lstrip("-")
    return ENV + name.replace("-", "_").upper()


def add_flag(
    p: argparse.ArgumentParser, flag: str, *, env: str | None = None, scope: str = "", **kw: Any
) -> None:
    """Add ``flag`` whose default comes from its environment variable when set."""
    env = env or env_name(flag, scope)
    help_text = kw.pop("help", "")
    default = kw.pop("default", None)
    if env in os.environ:
        raw = os.environ[env]
        if kw.get("action") == "store_true":
            default = raw.strip().lower() in ("1", "true", "yes", "on")
        else:
            default = raw
        kw.pop("required", None)
    shown = f" (default: {default})" if default not in (None, False, "") else ""
    p.add_argument(flag, default=default, help=f"{help_text}{shown} [env: {env}]", **kw)


def add_logging_flags(p: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, which every command has."""
    add_flag(
        p,
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity",
    )
    add_flag(p, "--log-format", default="text", choices=["text", "json"], help="log line format")
