"""CoordinatorConfig: flags over env over defaults, and clear errors for bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mx8_common.errors import ConfigError
from mx8_coordinator.config import CoordinatorConfig, load_coordinator_config


def test_coordinator_config_flags_override_env() -> None:
    env = {"MX8_DATASET_LINK": "/data", "MX8_WORLD_SIZE": "4", "MX8_SHUFFLE": "1", "MX8_SEED": "3"}
    cfg = load_coordinator_config(
        ["--world-size", "8", "--min-world-size", "2", "--no-shuffle", "--epochs", "3"], env
    )
    assert (cfg.dataset, cfg.world_size, cfg.min_world_size, cfg.freeze_size) == ("/data", 8, 2, 2)
    assert (cfg.shuffle, cfg.seed, cfg.epochs) == (False, 3, 3)
    assert cfg.listen == "127.0.0.1:50051"  # loopback unless told otherwise


def test_coordinator_config_every_issue_flag_exists() -> None:
    cfg = load_coordinator_config(
        [
            "--dataset", "s3://b/p/", "--listen", "0.0.0.0:6000", "--world-size", "3",
            "--block-size", "128", "--shuffle", "--seed", "9", "--epochs", "2",
            "--lease-ttl-ms", "3000", "--heartbeat-interval-ms", "500", "--store", "/s",
            "--state-dir", "/st", "--metrics", "127.0.0.1:9400", "--job-id", "j",
            "--no-recursive", "--label-mode", "none", "--grpc-max-message-bytes", "8MiB",
        ],
        {},
    )  # fmt: skip
    assert cfg.listen_host_port == ("0.0.0.0", 6000)
    assert cfg.metrics_host_port == ("127.0.0.1", 9400)
    assert (cfg.block_size, cfg.lease_ttl_ms, cfg.heartbeat_interval_ms) == (128, 3000, 500)
    assert (cfg.store, cfg.state_dir, cfg.job_id, cfg.recursive) == ("/s", "/st", "j", False)
    assert cfg.max_message_bytes == 8 << 20 and cfg.freeze_size == 3


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dataset": ""}, "no dataset"),
        ({"listen": "nowhere"}, "not HOST:PORT"),
        ({"world_size": 0}, "--world-size must be > 0"),
        ({"min_world_size": 5, "world_size": 4}, r"--min-world-size 5 must be in \[1, "),
        ({"heartbeat_interval_ms": 10000}, "must be below --lease-ttl-ms"),
        ({"label_mode": "folders"}, "not one of none, imagefolder, auto"),
        ({"block_size": -1}, "--block-size must be > 0"),
    ],
)
def test_coordinator_config_rejects_bad_values(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CoordinatorConfig(**{"dataset": "/d", **values})


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--block-size", "18446744073709551616"], "--block-size 18446744073709551616"),
        (
            ["--lease-ttl-ms", "1099511627776", "--heartbeat-interval-ms", "1000"],
            "--lease-ttl-ms 1099511627776",
        ),
        (
            ["--heartbeat-interval-ms", "8589934592", "--lease-ttl-ms", "86400000"],
            "--heartbeat-interval-ms 8589934592",
        ),
        (["--world-size", "4294967296"], "--world-size 4294967296"),
        (["--epochs", "4294967296"], "--epochs 4294967296"),
    ],
)
def test_coordinator_config_refuses_values_past_their_wire_width(
    argv: list[str], flag: str
) -> None:
    with pytest.raises(ConfigError, match="out of range") as caught:
        load_coordinator_config(["--dataset", "/data", *argv], {})
    assert flag in str(caught.value)


BIG = "18446744073709551616"


def test_coordinator_process_with_an_out_of_range_block_size_prints_one_line_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mx8_coordinator", "--dataset", "/data", "--block-size", BIG],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("mx8-coordinator:")]
    assert len(lines) == 1 and "--block-size 18446744073709551616 is out of range" in lines[0]
    assert "Traceback" not in done.stderr
