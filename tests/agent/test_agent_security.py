"""TLS, mutual TLS, the trainer token and health checks on a real agent over 127.0.0.1.

Certificates are generated per session by ``support.ops.make_pki`` (imported from
there, not copied): a CA, a server certificate for 127.0.0.1, a client certificate of the
CA and a rogue client certificate of another CA.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ops as ops_helpers
from support.agent import run_trainer
from support.eventually import assert_eventually
from support.logs import Events
from support.manifests import write_local_dataset

from mx8._agent_client import AgentStreamClient, agent_tls_from_env
from mx8_agent.agent import SERVICE_NAME, Agent
from mx8_agent.config import AgentConfig, load_agent_config
from mx8_common.errors import AgentError, ConfigError
from mx8_common.rpc.security import TlsConfig, channel_credentials

SAMPLES = 64
_SECURITY_ENV = (
    "MX8_AUTH_TOKEN",
    "MX8_TLS_CERT",
    "MX8_TLS_KEY",
    "MX8_TLS_CA",
    "MX8_AGENT_AUTH_TOKEN",
    "MX8_AGENT_TLS_CERT",
    "MX8_AGENT_TLS_KEY",
    "MX8_AGENT_TLS_CA",
)


@pytest.fixture(autouse=True)
def _no_ambient_security(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients read these variables: every test starts from a clean environment."""
    for name in _SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return ops_helpers.make_pki(tmp_path_factory.mktemp("agent-pki"))


def _client(url: str, **kwargs: Any) -> AgentStreamClient:
    return AgentStreamClient(url, job_id="default", local_rank=0, batch_size=16, **kwargs)


def _consume(url: str, **kwargs: Any) -> list[int]:
    """Every sample id of the job through one explicitly configured client."""
    ids: list[int] = []
    with _client(url, **kwargs) as client:
        for batch in client:
            ids.extend(batch.sample_ids.tolist())
    return ids


def _refusal(url: str, **kwargs: Any) -> AgentError:
    """The AgentError a client gets from connecting and asking for the first batch."""
    try:
        with _client(url, **kwargs) as client:
            next(iter(client))
    except AgentError as exc:
        return exc
    raise AssertionError("the agent served a client it should have refused")


async def _health(address: str, *, tls: TlsConfig | None = None, service: str = "") -> Any:
    if tls is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, channel_credentials(tls))
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


async def test_agent_security_tls_serves_trainers_that_trust_the_ca(
    tmp_path: Path,
    start_coordinator: Any,
    start_agent: Any,
    pki: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, SAMPLES))
    agent = await start_agent(
        coordinator.address,
        listen="127.0.0.1:0",
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
    )
    assert agent.url.startswith("127.0.0.1:")
    # Plaintext against the TLS port never connects; the error says which variable helps.
    err = await asyncio.to_thread(_refusal, agent.url, tls=TlsConfig(), timeout_s=1)
    assert "unreachable" in str(err) and "MX8_AGENT_TLS_CA" in str(err)
    # A client that trusts another CA does not accept the agent's certificate.
    err = await asyncio.to_thread(
        _refusal, agent.url, tls=TlsConfig(ca=pki.rogue_cert), timeout_s=1
    )
    assert "unreachable" in str(err)
    # The trainer's default: MX8_AGENT_TLS_CA from the environment.
    monkeypatch.setenv("MX8_AGENT_TLS_CA", pki.ca)
    run = await asyncio.to_thread(run_trainer, agent.url)
    assert run.error is None, run.error
    assert sorted(run.ids) == list(range(SAMPLES))
    await agent.result()


async def test_agent_security_mutual_tls_refuses_a_trainer_without_a_cert(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, pki: Any
) -> None:
    coordinator = await start_coordinator(write_local_dataset(tmp_path, SAMPLES))
    agent = await start_agent(
        coordinator.address,
        listen="127.0.0.1:0",
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_ca=pki.ca,
    )
    assert agent.agent.config.tls.mutual
    for bad in (
        TlsConfig(ca=pki.ca),  # no client certificate at all
        TlsConfig(ca=pki.ca, cert=pki.rogue_cert, key=pki.rogue_key),  # another CA's
    ):
        err = await asyncio.to_thread(_refusal, agent.url, tls=bad, timeout_s=1)
        assert "unreachable" in str(err) and "MX8_AGENT_TLS_CERT" in str(err)
    assert agent.agent.stats()["batches_sent"] == 0
    good = TlsConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    ids = await asyncio.to_thread(_consume, agent.url, tls=good)
    assert sorted(ids) == list(range(SAMPLES))
    await agent.result()


async def test_agent_security_token_missing_or_wrong_is_an_agent_error(
    tmp_path: Path,
    start_coordinator: Any,
    start_agent: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The coordinator's token and the agent's are separate secrets on separate variables:
    # the agent dials the coordinator with MX8_AUTH_TOKEN, trainers dial the agent with
    # MX8_AGENT_AUTH_TOKEN.
    coordinator = await start_coordinator(
        write_local_dataset(tmp_path, SAMPLES), auth_token="coord-token"
    )
    monkeypatch.setenv("MX8_AUTH_TOKEN", "coord-token")
    agent = await start_agent(coordinator.address, listen="127.0.0.1:0", auth_token="agent-token")
    err = await asyncio.to_thread(_refusal, agent.url, token="")
    assert "UNAUTHENTICATED" in str(err) and "no bearer token" in str(err)
    assert "MX8_AGENT_AUTH_TOKEN" in str(err)
    err = await asyncio.to_thread(_refusal, agent.url, token="coord-token")
    assert "does not match" in str(err) and "MX8_AGENT_AUTH_TOKEN" in str(err)

    def describe_without_token() -> None:
        with _client(agent.url, token="") as client:
            client.describe()

    with pytest.raises(AgentError, match="MX8_AGENT_AUTH_TOKEN"):
        await asyncio.to_thread(describe_without_token)
    assert agent.agent.stats()["batches_sent"] == 0
    # The trainer's default: MX8_AGENT_AUTH_TOKEN from the environment.
    monkeypatch.setenv("MX8_AGENT_AUTH_TOKEN", "agent-token")
    run = await asyncio.to_thread(run_trainer, agent.url)
    assert run.error is None, run.error
    assert sorted(run.ids) == list(range(SAMPLES))
    await agent.result()


async def test_agent_security_health_is_open_and_serving_once_ingested(
    tmp_path: Path, start_coordinator: Any, start_agent: Any, pki: Any
) -> None:
    # Bound but never registered (nothing listens on port 1): NOT_SERVING, no token needed.
    idle = AgentConfig(
        coordinator="127.0.0.1:1", node_id="idle", listen="127.0.0.1:0", auth_token="t0k"
    )
    async with Agent(idle) as agent:
        assert agent.address is not None
        for service in ("", SERVICE_NAME):
            status = await _health(agent.address, service=service)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    coordinator = await start_coordinator(write_local_dataset(tmp_path, SAMPLES))
    running = await start_agent(
        coordinator.address,
        listen="127.0.0.1:0",
        auth_token="t0k",
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
    )
    tls = TlsConfig(ca=pki.ca)

    async def serving() -> bool:
        status = await _health(running.url, tls=tls, service=SERVICE_NAME)
        return bool(status == health_pb2.HealthCheckResponse.SERVING)

    await assert_eventually(serving, timeout_s=10)
    assert running.agent.table is not None
    # The same channel without a token is refused everything but health.
    err = await asyncio.to_thread(_refusal, running.url, tls=tls, token="")
    assert "MX8_AGENT_AUTH_TOKEN" in str(err)


async def test_agent_security_warns_when_exposed_without_token(
    sock_dir: Path, logs: Events
) -> None:
    exposed = AgentConfig(coordinator="127.0.0.1:1", node_id="a", listen="0.0.0.0:0")
    local_tcp = AgentConfig(coordinator="127.0.0.1:1", node_id="b", listen="127.0.0.1:0")
    local_unix = AgentConfig(
        coordinator="127.0.0.1:1", node_id="c", listen=f"unix://{sock_dir}/a.sock"
    )
    for config in (exposed, local_tcp, local_unix):
        async with Agent(config):
            pass
    warnings = logs.named("grpc_exposed_without_auth")
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["listen"] == "0.0.0.0:0"
    assert "MX8_AGENT_AUTH_TOKEN" in warnings[0]["message"]


def test_agent_security_config_flags_and_env(pki: Any) -> None:
    base = ["--coordinator", "127.0.0.1:50051", "--node-id", "n"]
    flags = ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key, "--tls-ca", pki.ca]
    cfg = load_agent_config([*base, *flags, "--auth-token", "hunter2"], environ={})
    assert cfg.tls == TlsConfig(cert=pki.server_cert, key=pki.server_key, ca=pki.ca)
    assert cfg.tls.mutual and cfg.auth_token == "hunter2"
    assert "hunter2" not in repr(cfg)
    # MX8_TLS_* / MX8_AUTH_TOKEN are the coordinator connection's, not the agent server's.
    env = {"MX8_TLS_CERT": "/c.pem", "MX8_TLS_KEY": "/k.pem", "MX8_AUTH_TOKEN": "coord"}
    cfg = load_agent_config(base, environ=env)
    assert not cfg.tls.enabled and cfg.auth_token is None
    env = {
        "MX8_AGENT_TLS_CERT": "/c.pem",
        "MX8_AGENT_TLS_KEY": "/k.pem",
        "MX8_AGENT_AUTH_TOKEN": "tok",
    }
    cfg = load_agent_config(base, environ=env)
    assert cfg.tls == TlsConfig(cert="/c.pem", key="/k.pem") and cfg.auth_token == "tok"
    with pytest.raises(ConfigError, match=r"--tls-key needs --tls-cert.*MX8_AGENT_TLS_CERT"):
        load_agent_config([*base, "--tls-key", pki.server_key], environ={})
    with pytest.raises(ConfigError, match="--tls-ca needs --tls-cert"):
        load_agent_config([*base, "--tls-ca", pki.ca], environ={})
    with pytest.raises(ConfigError, match="MX8_AGENT_AUTH_TOKEN is blank"):
        load_agent_config(base, environ={"MX8_AGENT_AUTH_TOKEN": "  "})
    assert agent_tls_from_env({"MX8_AGENT_TLS_CA": pki.ca}) == TlsConfig(ca=pki.ca)
    assert agent_tls_from_env({"MX8_TLS_CA": pki.ca}) == TlsConfig()
    with pytest.raises(ConfigError, match="MX8_AGENT_TLS_CERT and MX8_AGENT_TLS_KEY"):
        agent_tls_from_env({"MX8_AGENT_TLS_CERT": pki.client_cert})


async def test_agent_security_bad_pem_path_fails_start_naming_the_flag(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    config = AgentConfig(
        coordinator="127.0.0.1:1",
        node_id="n",
        listen="127.0.0.1:0",
        tls_cert=missing,
        tls_key=missing,
    )
    with pytest.raises(ConfigError, match="--tls-cert"):
        async with Agent(config):
            pass
