"""Pure formatting of the status page: byte and time units, and the inline throughput chart.

Plain values in, HTML/SVG text out: no JavaScript, no network, so the page draws the same
in any browser (and in ``--dump-dom``) and tests can read it as text.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["human_bytes", "human_duration", "throughput_svg"]

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, three significant figures at most."""
    value = float(n)
    for unit in _BYTE_UNITS:
        if abs(value) < 1024 or unit == _BYTE_UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # the last unit always returns


def human_duration(seconds: float | None) -> str:
    """``None`` -> ``"-"``, ``75`` -> ``"1 min 15 s"``, ``7260`` -> ``"2 h 1 min"``."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{max(0, s)} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def throughput_svg(
    points: Sequence[tuple[int, float]], *, width: int = 480, height: int = 90
) -> str:
    """A small line chart of (unix ms, samples/s), oldest first, as inline SVG.

    The y axis starts at 0 and tops at the highest rate; the x axis spans the points.
    Fewer than two points draw an empty frame with a note.
    """
    frame = (
        f'<svg id="throughput-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="committed samples per second over time">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="#ccc"/>'
    )
    if len(points) < 2:
        note = "collecting samples…"
        return f'{frame}<text x="8" y="{height // 2}" fill="#777">{note}</text></svg>'
    t0, t1 = points[0][0], points[-1][0]
    top = max(rate for _, rate in points) or 1.0
    pad = 4
    span_x, span_y = width - 2 * pad, height - 2 * pad - 12

    def xy(at: int, rate: float) -> str:
        x = pad + (at - t0) / max(1, t1 - t0) * span_x
        y = pad + 12 + (1 - rate / top) * span_y
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(at, rate) for at, rate in points)
    seconds = (t1 - t0) / 1000
    label = f"peak {top:,.1f} samples/s · last {seconds:.0f} s"
    return (
        f'{frame}<polyline fill="none" stroke="#2a6fdb" stroke-width="1.5" points="{line}"/>'
        f'<text x="{pad + 2}" y="{pad + 9}" font-size="10" fill="#555">{label}</text></svg>'
    )
