"""Entry point of `mx8-coordinator`: the coordinator daemon (issue: mx8-coordinator)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mx8-coordinator", description="the coordinator daemon (issue: mx8-coordinator)"
    )
    parser.parse_args(argv)
    print("mx8-coordinator: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
