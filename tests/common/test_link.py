"""Dataset link parsing: the accepted spellings, normalization and the errors."""

from __future__ import annotations

import pytest

from mx8_common.errors import LinkError
from mx8_common.link import parse_dataset_link

HASH = "ab" * 32


@pytest.mark.parametrize(
    ("raw", "scheme", "bucket", "prefix", "path", "mode", "normalized"),
    [
        ("s3://bkt/train/", "s3", "bkt", "train/", None, "plain", "s3://bkt/train/"),
        ("s3://bkt/train", "s3", "bkt", "train/", None, "plain", "s3://bkt/train/"),
        ("s3://bkt", "s3", "bkt", "", None, "plain", "s3://bkt/"),
        ("s3://bkt/", "s3", "bkt", "", None, "plain", "s3://bkt/"),
        ("s3://bkt/a/b@refresh", "s3", "bkt", "a/b/", None, "refresh", "s3://bkt/a/b/"),
        ("/data/imgs/", "file", None, None, "/data/imgs", "plain", "file:///data/imgs"),
        ("/data/./imgs", "file", None, None, "/data/imgs", "plain", "file:///data/imgs"),
        ("file:///data/imgs", "file", None, None, "/data/imgs", "plain", "file:///data/imgs"),
        ("file://localhost/d", "file", None, None, "/d", "plain", "file:///d"),
        ("file:///my%20data", "file", None, None, "/my data", "plain", "file:///my%20data"),
        ("/d@refresh", "file", None, None, "/d", "refresh", "file:///d"),
        ("gs://bkt/train", "gs", "bkt", "train/", None, "plain", "gs://bkt/train/"),
        (
            "gs://my_bkt.x/a/b/@refresh",
            "gs",
            "my_bkt.x",
            "a/b/",
            None,
            "refresh",
            "gs://my_bkt.x/a/b/",
        ),
        ("az://data-01/train/", "az", "data-01", "train/", None, "plain", "az://data-01/train/"),
        ("az://data", "az", "data", "", None, "plain", "az://data/"),
        ("/mail@home/d", "file", None, None, "/mail@home/d", "plain", "file:///mail%40home/d"),
    ],
)
def test_parse_dataset_link_accepts_spellings(
    raw: str,
    scheme: str,
    bucket: str | None,
    prefix: str | None,
    path: str | None,
    mode: str,
    normalized: str,
) -> None:
    link = parse_dataset_link(raw)
    assert (link.scheme, link.bucket, link.prefix, link.path, link.mode) == (
        scheme,
        bucket,
        prefix,
        path,
        mode,
    )
    assert link.raw == raw
    assert link.normalized() == normalized


def test_parse_dataset_link_pinned_hash_lowercased() -> None:
    link = parse_dataset_link(f"s3://bkt/p/@sha256:{HASH.upper()}")
    assert link.mode == "pinned"
    assert link.pinned_hash == HASH
    assert link.normalized() == "s3://bkt/p/"
    assert link.display() == f"s3://bkt/p/@sha256:{HASH}"


def test_dataset_link_display_keeps_suffix() -> None:
    assert parse_dataset_link("/d@refresh").display() == "/d@refresh"
    assert parse_dataset_link("file:///d").display() == "/d"


def test_dataset_link_two_spellings_share_normalized_form() -> None:
    assert (
        parse_dataset_link("/data/x/").normalized()
        == parse_dataset_link("file:///data/x@refresh").normalized()
    )


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("http://host/p", "unknown scheme 'http://'"),
        ("abfs://c/p", "gs://bucket/prefix/, az://container/prefix/"),
        ("gs://", "names no bucket; write gs://<bucket>/<prefix>/"),
        ("gs://Bad!/p", "not a valid GCS bucket name"),
        ("gs://bkt//p", "empty path segment"),
        ("az://", "names no container; write az://<container>/<prefix>/"),
        ("az://my_container/p", "not a valid Azure container name"),
        ("az://a--b/p", "not a valid Azure container name"),
        ("az://ab/p", "not a valid Azure container name"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://Bad_Bucket!/p", "not a valid S3 bucket name"),
        ("s3://bkt//p", "empty path segment"),
        ("data/imgs", "relative path"),
        ("./imgs", "relative path"),
        ("file://relative", "names host"),
        ("/d@sha256:1234", "not a snapshot hash"),
        (f"/d@sha256:{'g' * 64}", "not a snapshot hash"),
        ("", "empty"),
        (" /d", "whitespace"),
    ],
)
def test_parse_dataset_link_rejects_bad_links(raw: str, fragment: str) -> None:
    with pytest.raises(LinkError) as info:
        parse_dataset_link(raw)
    assert fragment in str(info.value)
    assert info.value.link == raw


@pytest.mark.parametrize(
    ("raw", "meant"),
    [
        ("s3:/bucket/x", "s3://bucket/x"),
        ("s3//bucket", "s3://bucket"),
        ("s3:bucket/x/", "s3://bucket/x/"),
        ("S3://bucket/x", "s3://bucket/x"),
        ("s3:/bucket/x@refresh", "s3://bucket/x@refresh"),
        ("s3a://bucket/x", "s3://bucket/x"),
        ("S3N:///bucket", "s3://bucket"),
        ("file:/data/imgs", "file:///data/imgs"),
        ("FILE:///data/imgs", "file:///data/imgs"),
    ],
)
def test_parse_dataset_link_near_miss_scheme_suggests_the_link(raw: str, meant: str) -> None:
    with pytest.raises(LinkError) as info:
        parse_dataset_link(raw)
    assert f"did you mean {meant!r}?" in str(info.value)
    assert "relative path" not in str(info.value)
    parse_dataset_link(meant)  # the suggestion itself is a valid link


def test_dataset_link_cloud_display_keeps_scheme_and_suffix() -> None:
    link = parse_dataset_link(f"az://cont/p@sha256:{HASH}")
    assert link.display() == f"az://cont/p/@sha256:{HASH}"
    assert parse_dataset_link("gs://bkt/p@refresh").display() == "gs://bkt/p/@refresh"


@pytest.mark.parametrize("raw", ["s3/data", "s3data/x", "gcs://bkt/p"])
def test_parse_dataset_link_suggests_nothing_for_other_links(raw: str) -> None:
    with pytest.raises(LinkError) as info:
        parse_dataset_link(raw)
    assert "did you mean" not in str(info.value)
