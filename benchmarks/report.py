"""Benchmark rows: both sides, their ratio, whether the target is met; printed and saved.

A ``Row`` compares an mx8 number with a baseline number measured in the same run. The
ratio is always "how much better mx8 is": ``mx8 / baseline`` for rates (higher is better)
and ``baseline / mx8`` for costs (``higher_is_better=False``: seconds, MiB). Rows without
a baseline (memory growth, latency) compare mx8 with an absolute limit instead.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_DIR", "Row", "format_table", "median_of", "write_rows"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One measured comparison."""

    case: str
    metric: str
    unit: str
    mx8: float
    baseline: float | None = None
    baseline_name: str = ""
    #: For baseline rows: the least acceptable ratio. For absolute rows: the limit on mx8.
    target: float | None = None
    higher_is_better: bool = True
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """mx8's advantage over the baseline (>1 means mx8 is better)."""
        if self.baseline is None or self.baseline <= 0 or self.mx8 <= 0:
            return None
        return self.mx8 / self.baseline if self.higher_is_better else self.baseline / self.mx8

    @property
    def met(self) -> bool | None:
        """True/False when there is a target, None otherwise."""
        if self.target is None:
            return None
        if self.baseline is not None:
            ratio = self.ratio
            return ratio is not None and ratio >= self.target
        return self.mx8 >= self.target if self.higher_is_better else self.mx8 < self.target

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        if self.baseline is not None:
            return f">= {self.target:g}x"
        return f"{'>=' if self.higher_is_better else '<'} {self.target:g} {self.unit}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ratio=self.ratio, met=self.met, target_text=self.target_text())
        return data


def median_of(measure: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    """Run ``measure`` ``repeats`` times; its median and every sample."""
    values = [measure() for _ in range(max(1, repeats))]
    return statistics.median(values), values


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or math.isnan(value):
        return f"{value:g}"
    digits = max(0, 3 - math.floor(math.log10(abs(value))) - 1)
    return f"{value:,.{min(digits, 3)}f}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table of ``rows`` (one line per row)."""
    header = ("case", "metric", "mx8", "baseline", "vs", "ratio", "target", "met")
    lines = [
        (
            r.case,
            f"{r.metric} [{r.unit}]",
            _num(r.mx8),
            _num(r.baseline),
            r.baseline_name or "-",
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target_text(),
            {True: "yes", False: "NO", None: "-"}[r.met],
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=False)]
    out = []
    for i, line in enumerate([header, *lines]):
        out.append("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _machine() -> dict[str, Any]:
    import psutil

    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg": [round(x, 2) for x in load],
    }


def write_rows(case: str, rows: Sequence[Row], *, mode: str, seconds: float) -> Path:
    """Write ``rows`` of ``case`` to ``results/<case>.json`` (temp file + rename)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{case}.json"
    doc = {
        "case": case,
        "mode": mode,
        "seconds": round(seconds, 2),
        "written_unix": int(time.time()),
        "machine": _machine(),
        "rows": [r.to_json() for r in rows],
    }
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path
