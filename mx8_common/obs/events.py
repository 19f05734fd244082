"""Structured events: structlog, JSON lines when ``MX8_LOG_FORMAT=json``.

Events are the proof of behaviour (``snapshot_index_summary``, ``lease_started``,
``manifest_stream_truncated``): tests read them from ``structlog.testing.capture_logs``
in-process, or from a daemon's stderr as JSON lines.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import structlog

from mx8_common.config_fields import load_env, setting

__all__ = ["LoggingConfig", "configure_logging", "emit", "get_logger"]

_configured = False


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    """How every mx8 process logs its events."""

    format: str | None = setting(
        None, env="MX8_LOG_FORMAT", help="json for JSON lines on stderr, else console"
    )
    level: str = setting("info", env="MX8_LOG_LEVEL", help="debug, info, warning or error")


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Configure structlog once per process (daemons call it at start-up)."""
    global _configured
    env = load_env(LoggingConfig)
    fmt = (fmt or env.format or "console").lower()
    level_name = (level or env.level).upper()
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
    if not _configured and not structlog.is_configured() and load_env(LoggingConfig).format:
        configure_logging()
    return structlog.get_logger().bind(component=component)


def emit(component: str, event: str, **fields: Any) -> None:
    """Log one event at info level."""
    get_logger(component).info(event, **fields)
