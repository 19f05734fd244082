"""Structured events: structlog, JSON lines when ``MX8_LOG_FORMAT=json``.

Events are the proof of behaviour (``snapshot_index_summary``, ``lease_started``,
``manifest_stream_truncated``): tests read them from ``structlog.testing.capture_logs``
in-process, or from a daemon's stderr as JSON lines.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

__all__ = ["configure_logging", "emit", "get_logger"]

_configured = False


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Configure structlog once per process (daemons call it at start-up)."""
    global _configured
    fmt = (fmt or os.environ.get("MX8_LOG_FORMAT", "console")).lower()
    level_name = (level or os.environ.get("MX8_LOG_LEVEL", "info")).upper()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(component: str) -> Any:
    """A logger bound to ``component`` (e.g. ``"coordinator"``)."""
    # Configure lazily only when nobody else did: a test's structlog.testing.capture_logs()
    # (or an embedding app's own setup) must not be replaced by the first event.
    if not _configured and os.environ.get("MX8_LOG_FORMAT") and not structlog.is_configured():
        configure_logging()
    return structlog.get_logger().bind(component=component)


def emit(component: str, event: str, **fields: Any) -> None:
    """Log one event at info level."""
    get_logger(component).info(event, **fields)
