"""Structured events: structlog on stderr, JSON lines when ``MX8_LOG_FORMAT=json``.

Events are the proof of behaviour (``snapshot_index_summary``, ``lease_started``,
``manifest_stream_truncated``): tests read them from ``structlog.testing.capture_logs``
in-process, or from a daemon's stderr as JSON lines.

Every process logs to stderr at ``MX8_LOG_LEVEL`` (default info): daemons configure that
at start-up, and a trainer's first event does it lazily, so events never land in a
training script's stdout. An application that configured structlog itself keeps its setup.
``Throttled`` is for lines that repeat while something retries: one short line per
interval, with how many were folded into it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from mx8_common.config_fields import load_env, setting

__all__ = [
    "Level",
    "LoggingConfig",
    "Throttled",
    "configure_logging",
    "emit",
    "get_logger",
    "short_error",
]

Level = Literal["debug", "info", "warning", "error"]

_configured = False
#: Longest ``error`` text a throttled line carries: the rest is detail of one attempt.
_ERROR_CHARS = 160


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    """How every mx8 process logs its events."""

    format: str | None = setting(
        None, env="MX8_LOG_FORMAT", help="json for JSON lines on stderr, else console"
    )
    level: str = setting("info", env="MX8_LOG_LEVEL", help="debug, info, warning or error")


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Configure structlog once per process: stderr, ``MX8_LOG_FORMAT``, ``MX8_LOG_LEVEL``."""
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
    # (or an embedding app's own setup) must not be replaced by the first event. structlog's
    # own default would print to stdout, into the training script's output.
    if not _configured and not structlog.is_configured():
        configure_logging()
    return structlog.get_logger().bind(component=component)


def emit(component: str, event: str, *, level: Level = "info", **fields: Any) -> None:
    """Log one event (at info unless ``level`` says otherwise: fatal errors are "error")."""
    getattr(get_logger(component), level)(event, **fields)


def short_error(error: object) -> str:
    """The first line of ``error``'s text, cut to a length a repeated log line can carry."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


class Throttled:
    """Emits an event that repeats (a retry loop) at ``level`` at most once per interval per key.

    Owned by the object that retries (a reader, an agent), so one retry storm is one short
    line every ``interval_s`` seconds: ``error`` is cut to its first line (``short_error``)
    and a line after quiet ones carries ``repeats``, how many were folded into it. The folded
    ones still go out at level debug (``MX8_LOG_LEVEL=debug`` shows every retry).
    """

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}

    def _admit(self, key: tuple[str, str, str]) -> int | None:
        """None to stay quiet, else how many repeats were folded into this line."""
        now = time.monotonic()
        with self._lock:
            last, folded = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.interval_s:
                self._seen[key] = (last, folded + 1)
                return None
            self._seen[key] = (now, 0)
            return folded

    def emit(
        self, component: str, event: str, *, key: str = "", level: Level = "warning", **fields: Any
    ) -> bool:
        """``emit`` at ``level`` unless this (component, event, key) was, within the interval.

        Returns whether it was written at ``level`` (else at debug).
        """
        folded = self._admit((component, event, key))
        if "error" in fields:
            fields["error"] = short_error(fields["error"])
        if folded is None:
            emit(component, event, level="debug", **fields)
            return False
        if folded:
            fields["repeats"] = folded
        emit(component, event, level=level, **fields)
        return True
