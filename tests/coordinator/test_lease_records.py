"""Lease-log records: typed in memory, the same JSON lines on disk, bad lines refused."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mx8_coordinator.state.lease_records import (
    DealRecord,
    ExpireRecord,
    IssueRecord,
    LeaseRecord,
    ProgressRecord,
    RankRecord,
    decode_record,
    encode_record,
)

_ids = st.text(max_size=12)
_ints = st.integers(min_value=0, max_value=2**63 - 1)

records = st.one_of(
    st.builds(RankRecord, node_id=_ids, rank=_ints),
    st.builds(DealRecord, epoch=_ints, world_size=_ints),
    st.builds(
        IssueRecord,
        lease_id=_ids,
        seq=_ints,
        node_id=_ids,
        epoch=_ints,
        start=_ints,
        end=_ints,
    ),
    st.builds(ProgressRecord, lease_id=_ids, cursor=_ints),
    st.builds(ExpireRecord, lease_id=_ids),
)


@given(records)
def test_lease_records_round_trip_through_a_json_line(record: LeaseRecord) -> None:
    line = json.dumps(encode_record(record), separators=(",", ":"))
    assert decode_record(json.loads(line)) == record


@pytest.mark.parametrize(
    ("record", "line"),
    [
        (RankRecord(node_id="n1", rank=0), '{"ev":"rank","node":"n1","rank":0}'),
        (DealRecord(epoch=0, world_size=3), '{"ev":"deal","epoch":0,"world":3}'),
        (
            IssueRecord(lease_id="L7", seq=7, node_id="n1", epoch=0, start=0, end=64),
            '{"ev":"issue","lease":"L7","seq":7,"node":"n1","epoch":0,"start":0,"end":64}',
        ),
        (ProgressRecord(lease_id="L7", cursor=32), '{"ev":"progress","lease":"L7","cursor":32}'),
        (ExpireRecord(lease_id="L7"), '{"ev":"expire","lease":"L7"}'),
    ],
)
def test_lease_records_encode_to_the_lines_logs_have_always_held(
    record: LeaseRecord, line: str
) -> None:
    # The exact keys and their order: logs written before records were typed still replay,
    # and new logs stay readable by the same rules.
    assert json.dumps(encode_record(record), separators=(",", ":")) == line
    assert decode_record(json.loads(line)) == record


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ([1, 2], "a JSON object, not list"),
        ({"ev": "teleport"}, "unknown record kind ev='teleport'"),
        ({"lease": "L1"}, "unknown record kind ev=None"),
        ({"ev": "progress", "lease": "L1"}, "'progress' record has no 'cursor'"),
        ({"ev": "rank", "node": "a", "rank": "0"}, "'rank' is '0', not int"),
        ({"ev": "rank", "node": "a", "rank": True}, "'rank' is True, not int"),
        ({"ev": "expire", "lease": 7}, "'lease' is 7, not str"),
    ],
)
def test_lease_records_decode_refuses_other_shapes(obj: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        decode_record(obj)
