"""mx8 benchmarks: each case measures mx8 and its baseline in the same run.

Run ``python -m benchmarks [--quick] [--case NAME ...]``; rows print as a table and are
written to ``benchmarks/results/<case>.json``. Full-mode numbers live in RESULTS.md.
"""

__all__: list[str] = []
