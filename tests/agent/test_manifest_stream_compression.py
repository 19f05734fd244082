"""GetManifestStream zlib-encoded on the wire: fewer bytes, same table, same fail-closed checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.fake_coordinator import FakeCoordinator
from support.manifests import write_local_dataset, write_manifest
from support.tcp_proxy import TcpProxy

from mx8_agent.ingest.manifest_ingest import IngestSettings, ingest_manifest
from mx8_common.errors import (
    ManifestBadRow,
    ManifestError,
    ManifestHashMismatch,
    ManifestLineTooLong,
    ManifestSchemaMismatch,
    ManifestTruncated,
)
from mx8_common.manifest.format import manifest_hash
from mx8_common.manifest.table import ManifestTable
from mx8_common.rpc.coordinator_client import CoordinatorClient


async def _ingest(
    address: str, data: bytes, samples: int, announced: str | None = None, **kw: Any
) -> Any:
    settings = IngestSettings(
        job_id="default",
        manifest_hash=announced or manifest_hash(data),
        total_samples=samples,
        attempts=1,
        **kw,
    )
    async with CoordinatorClient(address) as client:
        return await ingest_manifest(client, settings)


@pytest.mark.parametrize(("compression", "max_ratio"), [("zlib", 0.25), ("none", 1.2)])
async def test_manifest_stream_compression_cuts_wire_bytes_same_table(
    tmp_path: Path, start_coordinator: Any, compression: str, max_ratio: float
) -> None:
    path = write_manifest(tmp_path, 20_000).path
    data = path.read_bytes()
    coordinator = await start_coordinator(path, manifest_stream_compression=compression)
    proxy = TcpProxy(coordinator.address)
    try:
        result = await _ingest(await proxy.start(), data, 20_000)
    finally:
        await proxy.stop()
    expected = ManifestTable.from_bytes(data)
    assert [result.table.record(i) for i in range(0, 20_000, 97)] == [
        expected.record(i) for i in range(0, 20_000, 97)
    ]
    assert result.manifest_bytes == len(data)  # the checks count decompressed bytes
    ratio = proxy.bytes_down / len(data)
    assert ratio < max_ratio, (compression, proxy.bytes_down, len(data))
    if compression == "none":
        assert ratio > 0.9  # the control: uncompressed, every manifest byte crosses the wire


@pytest.mark.parametrize(
    ("fault", "config", "error_type"),
    [
        ("cut", {}, ManifestTruncated),
        ("cut_unannounced", {}, ManifestHashMismatch),
        ("hash", {}, ManifestHashMismatch),
        ("header_schema", {}, ManifestSchemaMismatch),
        ("chunk_schema", {}, ManifestSchemaMismatch),
        ("bad_row", {}, ManifestBadRow),
        ("none", {"max_line_bytes": 40}, ManifestLineTooLong),
        ("zlib_cut", {}, ManifestTruncated),
        ("zlib_corrupt", {}, ManifestTruncated),
        ("zlib_long", {}, ManifestTruncated),
        ("zlib_unknown", {}, ManifestSchemaMismatch),
    ],
)
async def test_manifest_stream_zlib_keeps_every_fail_closed_check(
    tmp_path: Path, fault: str, config: dict[str, Any], error_type: type[ManifestError]
) -> None:
    data = write_local_dataset(tmp_path, 2000).read_bytes()
    fake = FakeCoordinator(data, total_samples=2000, fault=fault, encoding="zlib")
    proxy = TcpProxy(await fake.start())
    try:
        with pytest.raises(error_type) as caught:
            await _ingest(
                await proxy.start(),
                data,
                2000,
                fake.manifest_hash,
                table_dir=tmp_path / "tables",
                **config,
            )
    finally:
        await proxy.stop()
        await fake.stop()
    assert type(caught.value) is error_type
    assert not any((tmp_path / "tables").glob("*"))  # no table file of a failed stream
    # The stream really was encoded (the manifest is highly repetitive).
    assert 0 < proxy.bytes_down < len(data) // 2 or fault.startswith("cut")


async def test_manifest_stream_zlib_valid_stream_ingests(tmp_path: Path) -> None:
    # The control of the fault cases: the same fake, zlib on, no fault.
    data = write_local_dataset(tmp_path, 2000).read_bytes()
    fake = FakeCoordinator(data, total_samples=2000, encoding="zlib")
    proxy = TcpProxy(await fake.start())
    try:
        result = await _ingest(await proxy.start(), data, 2000)
    finally:
        await proxy.stop()
        await fake.stop()
    assert len(result.table) == 2000
    assert result.table.manifest_hash == manifest_hash(data)
    assert proxy.bytes_down < len(data) // 2


async def test_manifest_stream_old_agent_gets_raw_chunks(
    tmp_path: Path, start_coordinator: Any
) -> None:
    # An agent that asks for no encoding (an older one) gets the raw bytes, unchanged.
    path = write_manifest(tmp_path, 3000).path
    data = path.read_bytes()
    coordinator = await start_coordinator(path)  # zlib by default
    async with CoordinatorClient(coordinator.address) as client:
        chunks = [c async for c in client.get_manifest_stream("default", manifest_hash(data))]
        zipped = [
            c
            async for c in client.get_manifest_stream(
                "default", manifest_hash(data), accept_encodings=("zlib",)
            )
        ]
    assert {c.encoding for c in chunks} == {""}
    assert b"".join(c.data for c in chunks) == data
    assert {c.encoding for c in zipped} == {"zlib"}
    assert sum(c.raw_length for c in zipped) == len(data)
