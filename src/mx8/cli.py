"""Entry point of `mx8`: the mx8 operator CLI."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mx8", description="the mx8 operator CLI")
    parser.parse_args(argv)
    print("mx8: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
