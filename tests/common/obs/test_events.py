"""Events: stderr in every process, MX8_LOG_LEVEL on its own, levels, throttled repeats."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs
from support.eventually import assert_eventually_blocking

from mx8_common.obs.events import Throttled, configure_logging, emit, short_error


@pytest.fixture(autouse=True)
def _logging_configured() -> Iterator[None]:
    configure_logging()  # before any capture_logs block
    yield
    configure_logging()  # a test that asked for debug leaves the default behind


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MX8_LOG")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_events_of_an_unconfigured_process_go_to_stderr_never_stdout() -> None:
    out = _run(
        """
        from mx8_common.obs.events import emit
        emit("trainer", "hello_event", n=1)
        print("script output")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "script output\n"
    assert "hello_event" in out.stderr and "n=1" in out.stderr


def test_events_honour_mx8_log_level_without_mx8_log_format() -> None:
    out = _run(
        """
        from mx8_common.obs.events import emit
        emit("trainer", "quiet_event")
        emit("trainer", "loud_event", level="warning")
        """,
        MX8_LOG_LEVEL="warning",
    )
    assert out.returncode == 0, out.stderr
    assert "quiet_event" not in out.stderr
    assert "loud_event" in out.stderr


def test_events_keep_an_application_s_own_structlog_setup() -> None:
    out = _run(
        """
        import sys, structlog
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stdout))
        from mx8_common.obs.events import emit
        emit("trainer", "app_routed_event")
        """
    )
    assert "app_routed_event" in out.stdout and "app_routed_event" not in out.stderr


def test_emit_level_is_the_log_level() -> None:
    with capture_logs() as logs:
        emit("agent", "agent_failed", level="error", error="boom")
        emit("agent", "plain")
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("agent_failed", "error"),
        ("plain", "info"),
    ]


def test_throttled_folds_repeats_into_one_short_line_per_interval() -> None:
    error = "UNAVAILABLE: connection refused\n" + "detail " * 200
    throttled = Throttled(interval_s=0.2)
    configure_logging(level="debug")  # the folded lines go out at debug
    with capture_logs() as logs:
        written = [
            throttled.emit("agent", "t_retry", key="a", error=error, attempt=i) for i in range(50)
        ]
        assert written[0] and not any(written[1:])  # 50 calls at once: one line
        throttled.emit("agent", "t_retry", key="b", error=error)  # other key
        # After the interval, the next call writes again and says how many it folded.
        assert_eventually_blocking(lambda: throttled.emit("agent", "t_retry", key="a", error=error))
    lines = [e for e in logs if e["event"] == "t_retry" and e["log_level"] == "warning"]
    assert len(lines) == 3
    folded = [e for e in logs if e["event"] == "t_retry" and e["log_level"] == "debug"]
    assert len(folded) >= 49  # still there at debug level, each short
    assert all(e["error"] == "UNAVAILABLE: connection refused" for e in folded)
    first, other, later = lines
    assert first["error"] == "UNAVAILABLE: connection refused" and "repeats" not in first
    assert first["log_level"] == "warning" and first["attempt"] == 0
    assert "repeats" not in other
    assert later["repeats"] >= 49


def test_short_error_keeps_the_first_line_within_160_characters() -> None:
    assert short_error(ValueError("a\nb")) == "a"
    assert len(short_error("x" * 1000)) == 160
    assert short_error(ValueError()) == "ValueError"
