"""TLS, mutual TLS and the bearer token on a real coordinator, with generated certificates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.logs import Events
from support.ops import Pki

from mx8_common.errors import ConfigError, CoordinatorError, NodeIdentityError
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.rpc.security import (
    BearerTokenInterceptor,
    TlsConfig,
    channel_credentials,
    is_loopback,
    token_metadata,
    warn_if_exposed,
)
from mx8_coordinator.config import CoordinatorConfig, load_coordinator_config
from mx8_coordinator.server import Coordinator

StartCoordinator = Callable[..., Awaitable[Coordinator]]


async def _register(client: CoordinatorClient, node: str = "n0") -> int:
    reply = await client.register_node("default", node)
    return reply.total_samples


async def test_grpc_security_tls_serves_clients_that_trust_the_ca(
    start_coordinator: StartCoordinator, pki: Pki
) -> None:
    coord = await start_coordinator(tls_cert=pki.server_cert, tls_key=pki.server_key)
    async with CoordinatorClient(coord.address, tls=TlsConfig(ca=pki.ca), token="") as c:
        assert await _register(c) == 600
    # Plaintext against a TLS port never gets an answer.
    async with CoordinatorClient(coord.address, tls=TlsConfig(), token="", timeout_s=2) as c:
        with pytest.raises(CoordinatorError) as err:
            await _register(c)
        assert err.value.code == "UNAVAILABLE"


async def test_grpc_security_tls_rejects_a_server_the_client_does_not_trust(
    start_coordinator: StartCoordinator, pki: Pki
) -> None:
    # The server presents a cert of pki.ca; the client only trusts the rogue client's cert.
    coord = await start_coordinator(tls_cert=pki.server_cert, tls_key=pki.server_key)
    untrusted = TlsConfig(ca=pki.rogue_cert)
    async with CoordinatorClient(coord.address, tls=untrusted, token="", timeout_s=2) as c:
        with pytest.raises(CoordinatorError) as err:
            await _register(c)
        assert err.value.code == "UNAVAILABLE"


async def test_grpc_security_mutual_tls_requires_a_client_cert_from_the_ca(
    start_coordinator: StartCoordinator, pki: Pki
) -> None:
    coord = await start_coordinator(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca)
    assert coord.config.tls.mutual
    good = TlsConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    async with CoordinatorClient(coord.address, tls=good, token="") as c:
        assert await _register(c) == 600
    for bad in (
        TlsConfig(ca=pki.ca),  # no client certificate at all
        TlsConfig(ca=pki.ca, cert=pki.rogue_cert, key=pki.rogue_key),  # signed by another CA
    ):
        async with CoordinatorClient(coord.address, tls=bad, token="", timeout_s=2) as c:
            with pytest.raises(CoordinatorError) as err:
                await _register(c, "intruder")
            assert err.value.code == "UNAVAILABLE"
    assert [n.node_id for n in coord.job.registry.nodes()] == ["n0"]


async def test_grpc_security_bound_node_ids_refuse_a_node_the_certificate_does_not_name(
    start_coordinator: StartCoordinator, pki: Pki
) -> None:
    coord = await start_coordinator(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca, tls_bind_node_id=True
    )
    certified = TlsConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    async with CoordinatorClient(coord.address, tls=certified, token="") as c:
        assert await _register(c, "mx8d-agent") == 600  # the certificate's CN
        for call in (
            lambda: _register(c, "n0"),
            lambda: c.heartbeat("default", "n0"),
            lambda: c.request_lease("default", "n0", 1),
        ):
            with pytest.raises(NodeIdentityError, match="'n0' is not a name of this client's"):
                await call()
    assert [n.node_id for n in coord.job.registry.nodes()] == ["mx8d-agent"]


def test_grpc_security_bound_node_ids_need_mutual_tls() -> None:
    with pytest.raises(ConfigError, match="--tls-bind-node-id needs mutual TLS"):
        load_coordinator_config(["--dataset", "/d", "--tls-bind-node-id"], {})


async def test_grpc_security_token_missing_or_wrong_is_unauthenticated(
    start_coordinator: StartCoordinator,
) -> None:
    coord = await start_coordinator(auth_token="s3cret-token")
    async with CoordinatorClient(coord.address, token="") as c:
        with pytest.raises(CoordinatorError) as err:
            await _register(c)
    assert err.value.code == "UNAUTHENTICATED"
    assert "no bearer token" in str(err.value)
    assert "MX8_AUTH_TOKEN" in str(err.value)
    async with CoordinatorClient(coord.address, token="guess") as c:
        with pytest.raises(CoordinatorError) as err:
            await _register(c)
    assert err.value.code == "UNAUTHENTICATED"
    assert "does not match" in str(err.value)
    # Streaming calls are guarded too.
    async with CoordinatorClient(coord.address, token="") as c:
        with pytest.raises(CoordinatorError) as err:
            async for _ in c.get_manifest_stream("default", coord.source.manifest_hash):
                pass
    assert err.value.code == "UNAUTHENTICATED"
    assert coord.job.registry.nodes() == []
    async with CoordinatorClient(coord.address, token="s3cret-token") as c:
        assert await _register(c) == 600
        chunks = [ch async for ch in c.get_manifest_stream("default", coord.source.manifest_hash)]
    assert chunks


async def test_grpc_security_health_check_stays_open_without_token(
    start_coordinator: StartCoordinator,
) -> None:
    coord = await start_coordinator(auth_token="s3cret-token")
    async with grpc.aio.insecure_channel(coord.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_grpc_security_client_reads_token_and_tls_from_env(
    start_coordinator: StartCoordinator, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    coord = await start_coordinator(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca, auth_token="tok"
    )
    monkeypatch.setenv("MX8_AUTH_TOKEN", "tok")
    monkeypatch.setenv("MX8_TLS_CA", pki.ca)
    monkeypatch.setenv("MX8_TLS_CERT", pki.client_cert)
    monkeypatch.setenv("MX8_TLS_KEY", pki.client_key)
    async with CoordinatorClient(coord.address) as c:
        assert c.tls.mutual
        assert await _register(c) == 600


async def test_grpc_security_token_over_raw_channel_metadata(
    start_coordinator: StartCoordinator, pki: Pki
) -> None:
    """Any gRPC client (not only mx8's) authenticates with ``token_metadata`` over TLS."""
    coord = await start_coordinator(
        tls_cert=pki.server_cert, tls_key=pki.server_key, auth_token="tok"
    )
    from mx8_common.rpc.proto import coordinator_pb2 as pb
    from mx8_common.rpc.proto import coordinator_pb2_grpc as pb_grpc

    creds = channel_credentials(TlsConfig(ca=pki.ca))
    async with grpc.aio.secure_channel(coord.address, creds) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        snap = await stub.GetJobSnapshot(
            pb.GetJobSnapshotRequest(), metadata=token_metadata("tok"), timeout=5
        )
    assert snap.total_samples == 600


def test_grpc_security_tls_config_validation(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="--tls-cert needs --tls-key"):
        TlsConfig(cert=pki.server_cert)
    with pytest.raises(ConfigError, match="--tls-key needs --tls-cert"):
        load_coordinator_config(["--dataset", "/d", "--tls-key", pki.server_key], environ={})
    with pytest.raises(ConfigError, match="--tls-ca needs --tls-cert"):
        load_coordinator_config(["--dataset", "/d", "--tls-ca", pki.ca], environ={})
    with pytest.raises(ConfigError, match=r"--tls-cert .* cannot be read"):
        channel_credentials(TlsConfig(cert=str(tmp_path / "nope.pem"), key=pki.client_key))
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM file"):
        channel_credentials(TlsConfig(ca=str(not_pem)))
    with pytest.raises(ConfigError, match="MX8_AUTH_TOKEN is empty"):
        BearerTokenInterceptor("")


def test_grpc_security_config_from_env_keeps_token_out_of_repr() -> None:
    env = {"MX8_DATASET_LINK": "/d", "MX8_AUTH_TOKEN": "hunter2", "MX8_TLS_CERT": "/c.pem"}
    with pytest.raises(ConfigError, match="--tls-cert needs --tls-key"):
        load_coordinator_config([], environ=env)
    env["MX8_TLS_KEY"] = "/k.pem"
    cfg = load_coordinator_config([], environ=env)
    assert cfg.auth_token == "hunter2"
    assert cfg.tls == TlsConfig(cert="/c.pem", key="/k.pem")
    assert "hunter2" not in repr(cfg)


async def test_grpc_security_bad_pem_path_fails_start_naming_the_flag(
    manifest_path: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.pem")
    config = CoordinatorConfig(
        dataset=str(manifest_path), listen="127.0.0.1:0", tls_cert=missing, tls_key=missing
    )
    with pytest.raises(ConfigError, match="--tls-cert"):
        async with Coordinator(config):
            pass


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.0.1:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:///run/mx8/agent.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.1.2.3:50051", False),
        ("coordinator.example:50051", False),
    ],
)
def test_grpc_security_is_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_grpc_security_warn_if_exposed_events(pki: Pki, logs: Events) -> None:
    tls = TlsConfig(cert=pki.server_cert, key=pki.server_key)
    assert not warn_if_exposed("127.0.0.1:1", None, component="t")
    assert not warn_if_exposed("0.0.0.0:1", "tok", tls=tls, component="t")
    assert warn_if_exposed("0.0.0.0:1", None, component="t")
    assert warn_if_exposed("0.0.0.0:1", "tok", component="t")
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("grpc_exposed_without_auth", "warning"),
        ("grpc_token_without_tls", "warning"),
    ]
    assert "MX8_AUTH_TOKEN" in logs[0]["message"]


async def test_grpc_security_coordinator_warns_on_all_interfaces_without_token(
    start_coordinator: StartCoordinator,
    logs: Events,
) -> None:
    await start_coordinator(listen="0.0.0.0:0")
    warnings = logs.named("grpc_exposed_without_auth")
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
