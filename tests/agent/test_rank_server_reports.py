"""The rank server's progress reports when the coordinator refuses them: a coordinator
that restarted does not know the node, or holds a token the agent has not received yet;
both wait for the heartbeat to register again (the trainers are not failed); any other
refusal stands."""

from __future__ import annotations

from typing import Any

import pytest
from support.logs import Events

from mx8_agent.work.rank_server import RankServer
from mx8_common.errors import (
    Mx8Error,
    NodeNotRegisteredError,
    RegistrationTokenError,
    RequestError,
)
from mx8_common.rpc.proto import coordinator_pb2 as cpb
from mx8_common.storage.fetch_pipeline import FetchConfig


class RefusingOnce:
    """``report_ranks`` raises ``error`` once, then answers that the job is drained."""

    def __init__(self, error: Mx8Error) -> None:
        self.error: Mx8Error | None = error
        self.calls = 0

    async def report_ranks(self, job_id: str, node_id: str, ranks: Any) -> Any:
        self.calls += 1
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return cpb.ReportRanksResponse(job_drained=True)


def _server(client: RefusingOnce) -> RankServer:
    return RankServer(
        client=client,  # type: ignore[arg-type]
        job_id="default",
        node_id="a",
        table=None,  # type: ignore[arg-type]
        job_order=None,  # type: ignore[arg-type]
        epochs=1,
        reader=None,
        fetch_config=FetchConfig(),
        report_interval_s=0.01,
    )


@pytest.mark.parametrize(
    "error",
    [
        NodeNotRegisteredError("node 'a' is not registered", node_id="a"),
        RegistrationTokenError("this call does not carry the token", node_id="a"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_rank_server_report_refused_until_the_node_registers_again_is_retried(
    error: Mx8Error, logs: Events
) -> None:
    client = RefusingOnce(error)
    server = _server(client)
    assert await server.report_now() is False
    (failed,) = logs.named("progress_report_failed")
    assert failed["error"] == str(error)
    assert await server.report_now() is True and server.drained.is_set()
    assert client.calls == 2


async def test_rank_server_report_refused_for_another_reason_stands() -> None:
    server = _server(RefusingOnce(RequestError("ranks: malformed", field="ranks")))
    with pytest.raises(RequestError, match="malformed"):
        await server.report_now()
