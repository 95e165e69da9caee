"""structlog setup: JSON lines under a service manager or a pipe, readable on a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str = "info", json: bool | None = None, stream=None) -> None:
    fixed = stream
    probe = stream or sys.stderr
    if json is None:
        # systemd sets INVOCATION_ID / JOURNAL_STREAM; a non-tty means a pipe or a file.
        json = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM")) or not probe.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=probe.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if json else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        # Resolve sys.stderr at each use, not once: it may be replaced (tests, daemonizing).
        logger_factory=(lambda *_: structlog.PrintLogger(fixed if fixed is not None else sys.stderr)),
        cache_logger_on_first_use=False,
    )
