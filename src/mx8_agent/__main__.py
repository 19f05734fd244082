"""Entry point of `mx8d-agent`: the per-host agent daemon (issue: mx8d-agent)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mx8d-agent", description="the per-host agent daemon (issue: mx8d-agent)"
    )
    parser.parse_args(argv)
    print("mx8d-agent: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
