"""Write docs/configuration.md from the config classes (``--check``: fail if it is stale).

python scripts/gen_config_docs.py          # rewrite docs/configuration.md
python scripts/gen_config_docs.py --check  # exit 1 when the file differs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from mx8_agent.config import AgentConfig
from mx8_common.config_fields import config_reference_markdown
from mx8_common.snapshot.resolver import SnapshotResolverConfig
from mx8_common.storage.fetch_pipeline import FetchConfig
from mx8_common.storage.object_reader import ObjectReaderConfig
from mx8_coordinator.config import CoordinatorConfig

__all__ = ["CONFIG_CLASSES", "OUTPUT", "render", "main"]

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "configuration.md"

#: Every config class, in the order an operator meets them.
CONFIG_CLASSES = (
    SnapshotResolverConfig,
    CoordinatorConfig,
    FetchConfig,
    ObjectReaderConfig,
    AgentConfig,
)

# Variables read outside the config classes: by every client, by logging, by trainers.
_OTHER_VARS = (
    (
        "`MX8_AUTH_TOKEN`",
        "`CoordinatorClient` (agents, `mx8 status`)",
        "bearer token sent to the coordinator; must equal the coordinator's",
    ),
    (
        "`MX8_TLS_CA`",
        "`CoordinatorClient`, `mx8 health`",
        "CA bundle the client checks the coordinator's certificate against "
        "(any `MX8_TLS_*` turns client TLS on)",
    ),
    (
        "`MX8_TLS_CERT` / `MX8_TLS_KEY`",
        "`CoordinatorClient`",
        "client certificate and key, for a coordinator that runs mutual TLS (`--tls-ca`)",
    ),
    (
        "`MX8_GRPC_MAX_MESSAGE_BYTES`",
        "`CoordinatorClient`",
        "the client's gRPC message cap (match the coordinator's)",
    ),
    ("`MX8_COORDINATOR_URL`", "`mx8 status`", "default of `--coordinator`"),
    (
        "`MX8_AGENT_URL`",
        "`mx8.load`, `mx8.DataLoader`",
        "a local `mx8d-agent` (`unix:///run/mx8/agent.sock`) to take the job from; unset: embedded",
    ),
    (
        "`MX8_LOG_FORMAT`",
        "every daemon and trainer",
        "`json` for JSON lines on stderr, else console",
    ),
    (
        "`MX8_LOG_LEVEL`",
        "every daemon and trainer",
        "`debug`, `info` (default), `warning`, `error`",
    ),
    (
        "`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_REGION`, "
        "`AWS_ENDPOINT_URL`",
        "S3 access",
        "the standard AWS credential chain and endpoint; `MX8_S3_ENDPOINT_URL` wins over "
        "`AWS_ENDPOINT_URL`",
    ),
)


def _other_section() -> str:
    lines = [
        "## Read by every process and client",
        "",
        "These are not flags: each process reads them from its environment.",
        "",
        "| env var | read by | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {who} | {meaning} |" for name, who, meaning in _OTHER_VARS]
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole text of docs/configuration.md."""
    return config_reference_markdown(CONFIG_CLASSES).rstrip("\n") + "\n\n" + _other_section()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(
                f"{OUTPUT.relative_to(ROOT)} is stale; run: python scripts/gen_config_docs.py",
                file=sys.stderr,
            )
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    # Temp file + rename: a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=OUTPUT.parent, prefix=".configuration.", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, OUTPUT)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
