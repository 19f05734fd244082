"""The status page's pure parts: units, the inline chart, and what a drawn page says."""

from __future__ import annotations

import re

import pytest

from mx8_common.rpc.job_status import JobCounters, JobStatus, NodeStatus
from mx8_coordinator.web.status_format import human_bytes, human_duration, throughput_svg
from mx8_coordinator.web.status_page import render_status_html


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (250 * 2**20, "250 MiB"),
        (3 * 2**30 + 2**29, "3.5 GiB"),
        (2**60, "1024 PiB"),
    ],
)
def test_status_render_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.0, "0 s"), (42.4, "42 s"), (75, "1 min 15 s"), (7260, "2 h 1 min")],
)
def test_status_render_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_status_render_throughput_svg_draws_one_point_per_sample_scaled_to_the_peak() -> None:
    svg = throughput_svg([(0, 0.0), (1_000, 50.0), (2_000, 100.0)], width=104, height=56)
    points = re.search(r'points="([^"]+)"', svg)
    assert points is not None
    xy = [tuple(map(float, p.split(","))) for p in points.group(1).split()]
    assert [x for x, _ in xy] == [4.0, 52.0, 100.0]
    assert xy[0][1] == 52.0 and xy[2][1] == 16.0  # 0 at the bottom, the peak at the top
    assert "peak 100.0 samples/s" in svg and "<script" not in svg
    assert "collecting samples" in throughput_svg([(0, 1.0)])


def _running_job() -> JobStatus:
    return JobStatus(
        job_id="j",
        dataset_link="s3://b/p/",
        total_samples=1000,
        epochs=2,
        world_size=2,
        job_ready=True,
        samples_per_second=100.0,
        rate_basis="window",
        rate_window_ms=10_000,
        throughput_history=((1_000, 80.0), (2_000, 100.0)),
        nodes=(
            NodeStatus(
                node_id="a",
                rank=0,
                alive=True,
                samples_committed=600,
                samples_delivered=550,
                bytes_fetched=3 * 2**30,
                inflight_bytes=1536,
                samples_per_second=60.0,
                fetch_retries=7,
            ),
            NodeStatus(node_id="b", rank=1, alive=False, finished=True),
            NodeStatus(node_id="c", rank=2, alive=False),
        ),
        committed_by_epoch=(800, 0),
        counters=JobCounters(leases_expired=3, leases_requeued=2),
    )


def test_status_render_page_explains_states_columns_units_eta_and_errors() -> None:
    page = render_status_html(_running_job(), now_unix_ms=3_000)
    assert 'data-state="finished"' in page and 'class="finished"' in page
    assert 'data-state="lost"' in page and 'class="lost"' in page
    assert "departed" not in page
    # The columns say what they count, in a legend and as tooltips.
    assert 'id="legend"' in page and "trails committed" in page
    assert re.search(r'<th title="[^"]*trails committed[^"]*">delivered</th>', page)
    assert "3.0 GiB" in page and "1.5 KiB" in page and "60.0/s" in page
    assert "100.0 samples/s (last 10 s)" in page
    # ETA: epoch 0 has 200 left, epoch 1 waits for those and its own 1000, at 100/s.
    etas = re.findall(r'<td class="num eta">([^<]*)</td>', page)
    assert etas == ["2 s", "12 s"]
    assert 'id="throughput-chart"' in page and "<polyline" in page
    errors = dict(re.findall(r'data-key="([^"]+)">([^<]*)</td>', page))
    assert errors["leases expired"] == "3" and errors["ranges retried"] == "2"
    assert errors["nodes lost"] == "1" and errors["storage reads retried"] == "7"


def test_status_render_final_rate_is_labelled_as_the_whole_run() -> None:
    status = JobStatus(
        job_id="j",
        dataset_link="d",
        job_ready=True,
        job_drained=True,
        samples_per_second=12.0,
        rate_basis="final",
    )
    assert "12.0 samples/s (average of the whole run, final)" in render_status_html(status)
