"""A trainer pointed at an address where no agent can be fails at once, in one line."""

from __future__ import annotations

import socket
import time
import traceback
from pathlib import Path

import pytest

import mx8
from mx8_common.errors import AgentError, ConfigError


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


@pytest.mark.parametrize(
    ("url", "error", "says"),
    [
        ("unix:{tmp}/missing.sock", AgentError, "no mx8d-agent socket at"),
        ("http://127.0.0.1:9", ConfigError, "is not one mx8d-agent listens on"),
        ("127.0.0.1:{port}", AgentError, "refused the connection"),
    ],
    ids=["missing_socket", "http_scheme", "refused_port"],
)
def test_load_with_a_wrong_agent_address_fails_at_once_in_one_line(
    tmp_path: Path, url: str, error: type[Exception], says: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"x")
    agent = url.format(tmp=tmp_path, port=_refused_port())
    started = time.monotonic()
    with pytest.raises(error, match=says) as caught:
        mx8.load(str(data), agent=agent)
    assert time.monotonic() - started < 5  # not the 60 s channel wait
    assert agent in str(caught.value) or "missing.sock" in str(caught.value)
    printed = "".join(traceback.format_exception(caught.value))
    assert printed.count("Error:") == 1  # one exception, no chained internals
