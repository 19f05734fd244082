"""Helpers of the snapshot resolver tests (local and S3)."""

from __future__ import annotations

import asyncio
import threading

from mx8_common.manifest.reader import parse_canonical_manifest_tsv_bytes
from mx8_common.snapshot.resolver import (
    ResolvedSnapshot,
    SnapshotResolverConfig,
    resolve_snapshot,
)

__all__ = ["cfg", "resolve_in_threads", "rows"]


def cfg(store_root: str, **kw: object) -> SnapshotResolverConfig:
    """A resolver config over ``store_root`` with the progress bar off."""
    return SnapshotResolverConfig(store_root=store_root, show_progress=False, **kw)  # type: ignore[arg-type]


def rows(resolved: ResolvedSnapshot) -> list[tuple[str, int | None, str]]:
    """(location, byte_length, decode_hint) of every row, hash-checked."""
    assert resolved.manifest_data is not None
    return [
        (r.location, r.byte_length, r.decode_hint)
        for r in parse_canonical_manifest_tsv_bytes(
            resolved.manifest_data, expected_hash=resolved.manifest_hash
        )
    ]


def resolve_in_threads(
    link: str, config: SnapshotResolverConfig, threads: int = 8, *, join_s: float = 60.0
) -> list[ResolvedSnapshot]:
    """``threads`` resolvers of ``link`` started at once, each in its own thread and event
    loop (how several trainer processes of one host meet); fails on any thread's error."""
    barrier = threading.Barrier(threads)
    results: list[ResolvedSnapshot] = []
    errors: list[BaseException] = []

    def worker() -> None:
        async def go() -> ResolvedSnapshot:
            barrier.wait()
            return await resolve_snapshot(link, config)

        try:
            results.append(asyncio.run(go()))
        except BaseException as exc:
            errors.append(exc)

    started = [threading.Thread(target=worker) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join(join_s)
    assert not errors, errors
    assert len(results) == threads
    return results
