"""Entry point of `mx8-snapshot-resolve`: the snapshot resolver CLI."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mx8-snapshot-resolve",
        description="the snapshot resolver CLI",
    )
    parser.parse_args(argv)
    print("mx8-snapshot-resolve: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
