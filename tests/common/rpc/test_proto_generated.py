"""The committed gRPC code matches what scripts/gen_proto.py makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_proto_generated_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_proto_generated_modules_import_under_mx8_common() -> None:
    from mx8_common.rpc.proto import agent_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc

    assert coordinator_pb2.WorkRange(start_id=1, end_id=5).end_id == 5
    assert hasattr(coordinator_pb2_grpc, "CoordinatorServicer")
    assert hasattr(agent_pb2_grpc, "AgentServicer")
