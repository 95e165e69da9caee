"""structlog setup: JSON lines under a service manager or a pipe, readable on a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def masking(secrets: list[str] | tuple[str, ...] = ()):
    """A structlog processor: every URL's password and every known secret value masked, in every
    field of every log line (messages, errors, tracebacks), before it is rendered."""
    from daemon.redact import redact

    known = tuple(secrets)

    def mask(value):
        if isinstance(value, str):
            return redact(value, known) if ("://" in value or known) else value
        if isinstance(value, (list, tuple)):
            return [mask(v) for v in value]
        if isinstance(value, dict):
            return {k: mask(v) for k, v in value.items()}
        return value

    def processor(_logger, _name, event_dict):
        return {k: mask(v) for k, v in event_dict.items()}

    return processor


def configure_logging(level: str = "info", json: bool | None = None, stream=None,
                      secrets: list[str] | tuple[str, ...] = ()) -> None:
    """`secrets`: values never to print (the store's password); URLs are masked in any case."""
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
            structlog.processors.StackInfoRenderer(),
            # Tracebacks become text here, so the masking below sees them too.
            structlog.processors.format_exc_info,
            masking(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        # Resolve sys.stderr at each use, not once: it may be replaced (tests, daemonizing).
        logger_factory=(lambda *_: structlog.PrintLogger(fixed if fixed is not None else sys.stderr)),
        cache_logger_on_first_use=False,
    )
