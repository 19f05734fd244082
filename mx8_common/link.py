"""Dataset links: what a user writes to name a dataset, parsed once into a plain value.

    s3://bucket/prefix/            an S3 prefix (a "folder": a missing trailing ``/`` is added)
    gs://bucket/prefix/            a Google Cloud Storage prefix (same rules)
    az://container/prefix/         an Azure Blob prefix in the account named by the
                                   environment (``AZURE_STORAGE_ACCOUNT_NAME``, see
                                   ``storage.azure_store``)
    /abs/dir  or  file:///abs/dir  a local folder (absolute paths only)

Each may end in ``@refresh`` (index again now) or ``@sha256:<64 hex>`` (use exactly that
stored snapshot). Without a suffix the link is "plain": reuse the snapshot last resolved
for it. ``normalized()`` is the canonical spelling without the suffix; it keys the store's
intent pointer, so two spellings of one folder share one snapshot.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from mx8_common.errors import LinkError, StorageError

__all__ = ["BUCKET_SCHEMES", "DatasetLink", "parse_dataset_link", "split_object_location"]

_SUFFIX_RE = re.compile(r"^(?P<base>.*)@(?P<suffix>refresh|sha256:.*)$", re.DOTALL)
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
# Bucket names per the S3 rules, loosened to also admit the dotted/underscored legacy names
# (GCS allows the same characters).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
# Azure container names: 3-63 lowercase letters, digits and single '-' between them.
_CONTAINER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
#: The object-store schemes a link may use, with what each calls its top level.
BUCKET_SCHEMES = {"s3": "bucket", "gs": "bucket", "az": "container"}
_SUPPORTED = (
    "s3://bucket/prefix/, gs://bucket/prefix/, az://container/prefix/, /abs/dir or file:///abs/dir"
)
# Typos of s3:// and file:// (a wrong case, a missing ':' or '/', Hadoop's s3a/s3n): each
# gets "did you mean ...?" instead of "unknown scheme" or "a relative path". A single '/'
# after "s3" is not one: "s3/data" may well be a folder named s3.
_NEAR_S3_RE = re.compile(r"^s3[an]?(?::/*|//+)(?P<rest>[^/].*)$", re.IGNORECASE | re.DOTALL)
_NEAR_FILE_RE = re.compile(r"^file:/*(?P<rest>[^/].*)$", re.IGNORECASE | re.DOTALL)

_OBJECT_NAMES = {"s3": "an S3 object", "gs": "a GCS object", "az": "an Azure blob"}

Scheme = Literal["s3", "gs", "az", "file"]
Mode = Literal["plain", "refresh", "pinned"]


@dataclass(frozen=True)
class DatasetLink:
    """A parsed dataset link."""

    raw: str
    scheme: Scheme
    #: Bucket (s3, gs) or container (az); None for local folders.
    bucket: str | None
    #: Key prefix, "" (whole bucket) or ending in "/"; None for local folders.
    prefix: str | None
    #: Absolute, normalized local folder; None for S3.
    path: str | None
    mode: Mode
    pinned_hash: str | None = None

    def normalized(self) -> str:
        """Canonical link without the ``@`` suffix (``s3://b/p/`` or ``file:///abs/dir``)."""
        if self.scheme != "file":
            return f"{self.scheme}://{self.bucket}/{self.prefix}"
        return "file://" + urllib.parse.quote(self.path or "", safe="/")

    def display(self) -> str:
        """The link as a person would write it, suffix included (for messages and events)."""
        base = self.normalized() if self.scheme != "file" else (self.path or "")
        if self.mode == "refresh":
            return base + "@refresh"
        if self.mode == "pinned":
            return f"{base}@sha256:{self.pinned_hash}"
        return base


def _split_suffix(link: str) -> tuple[str, Mode, str | None]:
    m = _SUFFIX_RE.match(link)
    if m is None:
        return link, "plain", None
    suffix = m.group("suffix")
    if suffix == "refresh":
        return m.group("base"), "refresh", None
    digest = suffix[len("sha256:") :].lower()
    if not _HASH_RE.match(digest):
        raise LinkError(
            f"dataset link {link!r}: {suffix!r} is not a snapshot hash; write "
            "@sha256:<64 hex digits> as printed by mx8-snapshot-resolve",
            link=link,
        )
    return m.group("base"), "pinned", digest


def _parse_bucket_link(link: str, base: str, scheme: str) -> tuple[str, str]:
    rest = base[len(scheme) + 3 :]
    bucket, _, prefix = rest.partition("/")
    what = BUCKET_SCHEMES[scheme]
    if not bucket:
        raise LinkError(
            f"dataset link {link!r} names no {what}; write {scheme}://<{what}>/<prefix>/",
            link=link,
        )
    if scheme == "az":
        if not _CONTAINER_RE.match(bucket):
            raise LinkError(
                f"dataset link {link!r}: {bucket!r} is not a valid Azure container name "
                "(3-63 lowercase letters, digits and single '-'; the storage account comes "
                "from AZURE_STORAGE_ACCOUNT_NAME)",
                link=link,
            )
    elif not _BUCKET_RE.match(bucket) or ".." in bucket:
        cloud = "S3" if scheme == "s3" else "GCS"
        raise LinkError(
            f"dataset link {link!r}: {bucket!r} is not a valid {cloud} bucket name "
            "(3-63 lowercase letters, digits, '.', '-')",
            link=link,
        )
    # A link names a folder: "s3://b/train" means the keys under "train/", not "train2/...".
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if prefix.startswith("/") or "//" in prefix:
        raise LinkError(
            f"dataset link {link!r} has an empty path segment ('//'); remove the extra '/'",
            link=link,
        )
    return bucket, prefix


def _parse_local(link: str, base: str) -> str:
    if base.startswith("file://"):
        parsed = urllib.parse.urlsplit(base)
        if parsed.netloc not in ("", "localhost"):
            raise LinkError(
                f"dataset link {link!r} names host {parsed.netloc!r}; file links must be "
                "local: file:///abs/dir",
                link=link,
            )
        path = urllib.parse.unquote(parsed.path)
    else:
        path = base
    if not path or not os.path.isabs(path):
        raise LinkError(
            f"dataset link {link!r} is a relative path; write an absolute folder such as "
            f"{os.path.abspath(path or '.')!r}",
            link=link,
        )
    return os.path.normpath(path)


def _did_you_mean(link: str, base: str) -> str | None:
    """The link the user probably meant when ``base`` misspells s3:// or file://."""
    suffix = link[len(base) :]
    if (m := _NEAR_S3_RE.match(base)) is not None:
        guess = "s3://" + m.group("rest") + suffix
    elif (m := _NEAR_FILE_RE.match(base)) is not None:
        guess = "file:///" + m.group("rest") + suffix
    else:
        return None
    if guess == link:
        return None
    try:
        parse_dataset_link(guess)
    except LinkError:
        return None
    return guess


def parse_dataset_link(link: str) -> DatasetLink:
    """Parse ``link`` or raise ``LinkError`` naming it and the fix."""
    if not isinstance(link, str) or not link.strip():
        raise LinkError(f"dataset link is empty; pass one of {_SUPPORTED}", link=str(link))
    if link != link.strip():
        raise LinkError(
            f"dataset link {link!r} has leading or trailing whitespace; remove it", link=link
        )
    bad = next((i for i, c in enumerate(link) if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise LinkError(
            f"dataset link {link!r} holds a control character ({link[bad]!r} at index {bad}); "
            "no object key or path mx8 can read has one: remove it",
            link=link,
        )
    base, mode, pinned = _split_suffix(link)
    scheme = base.split("://", 1)[0] if "://" in base else None
    if (
        scheme not in BUCKET_SCHEMES
        and not base.startswith(("file://", "/"))
        and (guess := _did_you_mean(link, base))
    ):
        raise LinkError(f"dataset link {link!r} is misspelt; did you mean {guess!r}?", link=link)
    if scheme in BUCKET_SCHEMES:
        bucket, prefix = _parse_bucket_link(link, base, scheme)
        return DatasetLink(link, scheme, bucket, prefix, None, mode, pinned)  # type: ignore[arg-type]
    if base.startswith("file://") or base.startswith("/"):
        return DatasetLink(link, "file", None, None, _parse_local(link, base), mode, pinned)
    if scheme is not None:
        raise LinkError(
            f"dataset link {link!r} has unknown scheme {scheme + '://'!r}; mx8 reads {_SUPPORTED}",
            link=link,
        )
    raise LinkError(
        f"dataset link {link!r} is a relative path; write an absolute folder such as "
        f"{os.path.abspath(base)!r} or an s3://bucket/prefix/ link",
        link=link,
    )


def split_object_location(location: str, scheme: Literal["s3", "gs", "az"]) -> tuple[str, str]:
    """``<scheme>://bucket/key`` -> ``(bucket, key)``; anything else is a ``StorageError``
    naming the form to write."""
    bucket, sep, key = location[len(scheme) + 3 :].partition("/")
    if not location.startswith(scheme + "://") or not bucket or not sep or not key:
        raise StorageError(
            f"{location!r} is not {_OBJECT_NAMES[scheme]} location; write it as "
            f"{scheme}://{BUCKET_SCHEMES[scheme]}/key",
            location=location,
        )
    return bucket, key
