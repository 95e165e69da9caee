"""structlog setup: JSON lines under a service manager or a pipe, readable on a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str = "info", json: bool | None = None, stream=None) -> None:
    stream = stream or sys.stderr
    if json is None:
        # systemd sets INVOCATION_ID / JOURNAL_STREAM; a non-tty means a pipe or a file.
        json = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM")) or not stream.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if json else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
