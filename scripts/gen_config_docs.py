"""Write docs/configuration.md from the config classes (``--check``: fail if it is stale).

python scripts/gen_config_docs.py          # rewrite docs/configuration.md
python scripts/gen_config_docs.py --check  # exit 1 when the file differs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from mx8._config import TrainerConfig
from mx8_agent.config import AgentConfig
from mx8_common.config_fields import config_reference_markdown, env_names
from mx8_common.obs.events import LoggingConfig
from mx8_common.rpc.client_config import CoordinatorClientConfig
from mx8_common.snapshot.config import SnapshotResolverConfig
from mx8_common.storage.azure_store import AzureSettings
from mx8_common.storage.fetch_pipeline import FetchConfig
from mx8_common.storage.gcs_client import GcsSettings
from mx8_common.storage.object_reader import ObjectReaderConfig
from mx8_common.storage.s3_client import S3Settings
from mx8_coordinator.config import CoordinatorConfig

__all__ = ["CONFIG_CLASSES", "ENV_READERS", "OUTPUT", "PROGRAMS", "render", "main"]

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "configuration.md"

#: Classes whose settings are flags of a daemon (each flag also has its variable).
PROGRAMS: dict[type, str] = {
    CoordinatorConfig: "mx8-coordinator",
    AgentConfig: "mx8d-agent",
}

#: Classes read from the environment only, and who reads them.
ENV_READERS: dict[type, str] = {
    TrainerConfig: "trainers (`mx8.load`, `mx8.DataLoader`, `mx8.vision`)",
    SnapshotResolverConfig: "embedded `mx8.load` and `mx8-snapshot-resolve` "
    "(`mx8-coordinator` takes the indexing settings as flags)",
    CoordinatorClientConfig: "every client of the coordinator: `mx8d-agent`, `mx8 status`, "
    "`mx8 health` (`mx8 status --coordinator` overrides the address)",
    S3Settings: "every process that reads S3; credentials come from botocore's own chain "
    "(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, ...)",
    GcsSettings: "every process that lists or reads gs:// links; credentials are Application "
    "Default Credentials through google-auth (`pip install 'mx8[gcs]'`): "
    "`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's login, the VM's service account",
    AzureSettings: "every process that lists or reads az:// links or uses an az:// manifest store",
    LoggingConfig: "every daemon, CLI and trainer process (on stderr, also without MX8_LOG_FORMAT)",
}

#: Every config class, in the order an operator meets them.
CONFIG_CLASSES = (
    CoordinatorConfig,
    AgentConfig,
    TrainerConfig,
    SnapshotResolverConfig,
    CoordinatorClientConfig,
    S3Settings,
    GcsSettings,
    AzureSettings,
    LoggingConfig,
)

#: Read by embedded mx8.load with mx8d-agent's parsers (its --fetch-* flags), not repeated.
_EMBEDDED_FETCH = (FetchConfig, ObjectReaderConfig)


def _embedded_note() -> str:
    names = [n for cls in _EMBEDDED_FETCH for f in dataclasses.fields(cls) for n in env_names(f)]
    return (
        "Embedded `mx8.load` also reads the data plane's "
        + ", ".join(f"`{n}`" for n in names)
        + " exactly as `mx8d-agent` does (same defaults and checks; see its `--fetch-*` "
        "flags above); `mx8.load`'s `fetch_concurrency` and `max_inflight_bytes` arguments "
        "win over them.\n"
    )


def render() -> str:
    """The whole text of docs/configuration.md."""
    text = config_reference_markdown(CONFIG_CLASSES, programs=PROGRAMS, env_readers=ENV_READERS)
    return text.rstrip("\n") + "\n\n## Embedded data plane\n\n" + _embedded_note()


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
