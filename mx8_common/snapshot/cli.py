"""Entry point of ``mx8-snapshot-resolve``: index a dataset link (or reuse its snapshot).

    mx8-snapshot-resolve LINK [--no-recursive] [--label-mode M] [--store ROOT]
                         [--list-concurrency N] [--json]

Prints the manifest hash, or with ``--json`` one JSON object. Works from the stored file
only (``materialize_manifest_bytes=false``). Events go to stderr; an ``Mx8Error`` prints
its message (no traceback) and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from mx8_common.errors import Mx8Error
from mx8_common.manifest.labels import LABEL_MODES
from mx8_common.obs.events import configure_logging
from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags (other resolver settings come from ``MX8_*`` env vars)."""
    parser = argparse.ArgumentParser(
        prog="mx8-snapshot-resolve",
        description="Resolve a dataset link (s3://bucket/prefix/, gs://bucket/prefix/, "
        "az://container/prefix/, /abs/dir, file:///abs/dir, optionally @refresh or "
        "@sha256:<hash>) into a stored manifest and print its hash.",
    )
    parser.add_argument("link", metavar="LINK", help="dataset link")
    parser.add_argument(
        "--no-recursive",
        dest="recursive",
        action="store_false",
        default=None,
        help="index only objects directly under the prefix/folder",
    )
    parser.add_argument(
        "--label-mode", choices=LABEL_MODES, default=None, help="labels (default auto)"
    )
    parser.add_argument(
        "--store",
        default=None,
        help="manifest store root (folder, s3://bucket/prefix or az://container/prefix)",
    )
    parser.add_argument(
        "--list-concurrency",
        type=_positive_int,
        default=None,
        metavar="N",
        help="S3 LIST requests in flight while indexing (default 32, or "
        "MX8_SNAPSHOT_LIST_CONCURRENCY); 1 lists one page after another",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()  # events to stderr, so stdout holds only the answer
    try:
        config = SnapshotResolverConfig.from_env(
            recursive=args.recursive,
            label_mode=args.label_mode,
            store_root=args.store,
            list_concurrency=args.list_concurrency,
            materialize_manifest_bytes=False,
        )
        resolved = asyncio.run(resolve_snapshot(args.link, config))
    except Mx8Error as exc:
        print(f"mx8-snapshot-resolve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(
            json.dumps(
                {
                    "manifest_hash": resolved.manifest_hash,
                    "objects_indexed": resolved.samples,
                    "manifest_bytes": resolved.manifest_bytes,
                    "recursive": config.recursive,
                    "label_mode": config.label_mode,
                    "store_path": resolved.store_path,
                },
                sort_keys=True,
            )
        )
    else:
        print(resolved.manifest_hash)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
