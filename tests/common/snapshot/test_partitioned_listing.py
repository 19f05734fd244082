"""Partitioned listing gives the sequential listing's pages, whatever the cut and concurrency.

The LIST endpoint of the fixtures (``list_endpoint``) serves ListObjectsV2 from memory,
S3-style (start-after, tokens, delimiters, URL-encoded keys), through the lean client.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mx8_common.errors import NonMonotonicListingError
from mx8_common.snapshot.partitioned import ListPage, PartitionedListing
from mx8_common.snapshot.s3_lister import S3PageSource
from mx8_common.storage.s3_client import S3Settings
from mx8_common.storage.s3_get import S3Getter
from mx8_common.testing.list_endpoint import GeneratedKeys, ListEndpoint, SortedKeys

_bucket_names = (f"bkt-{i}" for i in itertools.count())

# Path segments: ASCII, punctuation around '/', '+', '%' and space (URL-encoding), and
# characters of 2-4 UTF-8 bytes, so bytewise order and code point order both matter.
_segment = st.text(
    alphabet=st.sampled_from([*"ab0Z9-._ +%", "é", "日", "\U0001f600", "\x01"]),
    min_size=1,
    max_size=4,
)
_path = st.lists(_segment, min_size=1, max_size=4).map("/".join)


@st.composite
def _key_sets(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Keys under ``p/`` (deep and shallow), markers, empty folders, one big folder, and
    neighbours outside the prefix."""
    keys = {f"p/{path}" for path in draw(st.lists(_path, max_size=40))}
    if draw(st.booleans()):
        big = draw(st.sampled_from(["p/big/", "p/", "p/a/b/c/"]))
        keys |= {f"{big}{i:05d}" for i in range(draw(st.integers(20, 150)))}
    keys |= set(draw(st.lists(st.sampled_from(["p/empty/", "p/x/", "p/x/y/"]), max_size=3)))
    keys |= set(draw(st.lists(st.sampled_from(["p", "p0", "o/z", "q/p/a"]), max_size=3)))
    return sorted((key, 1 + len(key) % 7) for key in keys)


def _expected(items: list[tuple[str, int]], recursive: bool) -> list[tuple[str, int]]:
    out = []
    for key, size in items:
        rel = key[2:]
        if key.startswith("p/") and not key.endswith("/") and (recursive or "/" not in rel):
            out.append((rel, size))
    return out


async def _listed(source: S3PageSource | PartitionedListing) -> list[tuple[str, int]]:
    return [item async for page in source.pages() for item in page]


def _getter(endpoint: ListEndpoint) -> S3Getter:
    return S3Getter(S3Settings(endpoint_url=endpoint.url, region="us-east-1"))


def _random_points(seed: int, items: list[tuple[str, int]]) -> Any:
    """A ``split_points`` hook cutting at random keys, their prefixes and random strings."""
    rng = random.Random(seed)
    pool = [key[:cut] for key, _ in items for cut in (len(key), len(key) // 2, 3)]
    pool += ["p/", "p/a", "p/\U0010ffff", "p/b/", "o", "\x00"]

    def split_points(after: str | None, upto: str | None, sample: list[str], budget: int):  # type: ignore[no-untyped-def]
        return rng.sample(pool, min(len(pool), rng.randint(0, budget + 2)))

    return split_points


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    items=_key_sets(),
    concurrency=st.integers(1, 8),
    page_size=st.integers(1, 7),
    recursive=st.booleans(),
    seed=st.integers(0, 2**32),
)
async def test_partitioned_listing_equals_sequential_for_any_partitioning(
    s3_env: Any,
    list_endpoint: ListEndpoint,
    items: list[tuple[str, int]],
    concurrency: int,
    page_size: int,
    recursive: bool,
    seed: int,
) -> None:
    bucket = next(_bucket_names)
    list_endpoint.buckets[bucket] = SortedKeys(items)
    list_endpoint.latency_s = 0.001
    expected = _expected(items, recursive)
    async with _getter(list_endpoint) as client:

        def source(c: int) -> S3PageSource:
            return S3PageSource(
                client, bucket, "p/", recursive=recursive, page_size=page_size, concurrency=c
            )

        sequential = await _listed(source(1))
        heuristic = await _listed(source(concurrency))
        random_cut = await _listed(
            PartitionedListing(
                source(concurrency).list_page,
                "p/",
                link=f"s3://{bucket}/p/",
                recursive=recursive,
                concurrency=concurrency,
                memory_keys=seed % 20,  # often below one page: early ranges spill
                split_points=_random_points(seed, items),
            )
        )
    assert sequential == expected
    assert heuristic == expected
    assert random_cut == expected


async def test_partitioned_listing_concurrency_is_bounded_and_used(
    s3_env: Any, list_endpoint: ListEndpoint
) -> None:
    list_endpoint.buckets["flat"] = GeneratedKeys.layout("flat", 20_000, "p/")
    list_endpoint.latency_s = 0.02
    async with _getter(list_endpoint) as client:
        source = S3PageSource(client, "flat", "p/", concurrency=6)
        listed = await _listed(source)
    assert [key for key, _ in listed] == [f"obj-{i:08d}.bin" for i in range(20_000)]
    # Never more than asked for; more than one at once (exactly 6 depends on timing).
    assert 2 <= list_endpoint.max_in_flight <= 6
    assert source.stats.partitions > 6 and source.stats.requests >= 20


@pytest.mark.parametrize(("keys", "most_requests"), [(999, 1), (5_000, 7), (100_000, 132)])
async def test_partitioned_listing_of_numbered_keys_takes_few_more_requests_than_pages(
    s3_env: Any, list_endpoint: ListEndpoint, keys: int, most_requests: int
) -> None:
    # obj-00000000.bin ...: ranges are cut one page wide (no empty ones at guessed
    # bounds, none needing a second request to end), twice as many each round, so only
    # the last round's ranges can fall past the end (5,000 keys: 5 pages, 7 requests).
    list_endpoint.buckets["num"] = GeneratedKeys.layout("flat", keys, "p/")
    async with _getter(list_endpoint) as client:
        source = S3PageSource(client, "num", "p/", concurrency=32)
        listed = await _listed(source)
    assert [key for key, _ in listed] == [f"obj-{i:08d}.bin" for i in range(keys)]
    assert source.stats.requests <= most_requests and list_endpoint.list_calls <= most_requests
    assert source.stats.probes == 0


async def test_partitioned_listing_of_hashed_keys_takes_few_more_requests_than_pages(
    s3_env: Any, list_endpoint: ListEndpoint
) -> None:
    # Hex names read as numbers too: ranges of ~9/10 of a page, 5 pages in 6 requests
    # where guessing one character further at a time took 33.
    names = sorted(hashlib.sha1(str(i).encode()).hexdigest() + ".jpg" for i in range(5_000))
    list_endpoint.buckets["hashed"] = SortedKeys([(f"p/{name}", 1) for name in names])
    async with _getter(list_endpoint) as client:
        source = S3PageSource(client, "hashed", "p/", concurrency=32)
        listed = await _listed(source)
    assert [key for key, _ in listed] == names
    assert source.stats.requests <= 7 and list_endpoint.list_calls <= 7


async def test_partitioned_listing_does_not_wait_for_ranges_past_the_end_of_the_prefix() -> None:
    keys = [f"p/k{i:04d}" for i in range(50)]
    never = asyncio.Event()
    past_end: list[str] = []

    async def list_page(
        prefix: str, *, delimiter: bool, start_after: str | None, token: str | None
    ) -> ListPage:
        after = token or start_after or ""
        await asyncio.sleep(0)  # let the other queued requests start: they overlap
        if after >= keys[-1]:
            past_end.append(after)
            await never.wait()  # a server slow to say a range past the last key is empty
        rest = [key for key in keys if key > after]
        return ListPage([(key, 1) for key in rest[:10]], (), rest[9] if len(rest) > 10 else None)

    listing = PartitionedListing(list_page, "p/", link="s3://b/p/", concurrency=8)
    listed = await asyncio.wait_for(_listed(listing), 60)
    assert [key for key, _ in listed] == [key[2:] for key in keys]
    # The last cut went past k0049: that range was asked, and the answer that ended the
    # prefix made waiting for it unnecessary.
    assert past_end


async def test_partitioned_listing_spills_early_ranges_and_removes_the_files(
    s3_env: Any, list_endpoint: ListEndpoint, tmp_path: Path
) -> None:
    list_endpoint.buckets["f"] = GeneratedKeys.layout("folders", 12_000, "p/")
    async with _getter(list_endpoint) as client:
        pages = S3PageSource(client, "f", "p/", page_size=500)
        listing = PartitionedListing(
            pages.list_page,
            "p/",
            link="s3://f/p/",
            concurrency=8,
            spill_dir=tmp_path,
            memory_keys=0,
        )
        listed = await _listed(listing)
    assert listed == [
        (GeneratedKeys.layout("folders", 12_000)[i], 1 + i % 4096) for i in range(12_000)
    ]
    assert listing.stats.spilled_keys > 0
    assert list(tmp_path.iterdir()) == []


async def test_partitioned_listing_fails_fast_when_the_endpoint_ignores_start_after(
    s3_env: Any, list_endpoint: ListEndpoint
) -> None:
    list_endpoint.buckets["lax"] = GeneratedKeys.layout("flat", 5_000, "p/")
    list_endpoint.ignore_start_after.add("lax")
    async with _getter(list_endpoint) as client:
        with pytest.raises(NonMonotonicListingError, match="EXTERNAL_SORT=1") as info:
            await _listed(S3PageSource(client, "lax", "p/", concurrency=4))
        # One page after another needs no start-after: the sequential path still works.
        assert len(await _listed(S3PageSource(client, "lax", "p/", concurrency=1))) == 5_000
    assert "sorts before" in str(info.value) and info.value.link == "s3://lax/p/"


async def test_partitioned_listing_fails_fast_on_an_out_of_order_page(
    s3_env: Any, list_endpoint: ListEndpoint
) -> None:
    keys = [(f"p/{i:04d}", 1) for i in range(40)]
    keys[25], keys[26] = keys[26], keys[25]
    list_endpoint.buckets["swapped"] = keys  # a plain list: served in this order
    async with _getter(list_endpoint) as client:
        with pytest.raises(NonMonotonicListingError, match="'p/0025', which sorts before"):
            await _listed(S3PageSource(client, "swapped", "p/", page_size=10, concurrency=4))
