"""Every ```python block of README.md and docs/*.md runs as written.

Each block runs in a fresh interpreter against a small image-folder dataset at
``s3://bucket/prefix/`` on the test S3-protocol server, with its own manifest store. A block
that needs more (a live agent) is preceded by ``<!-- no-run: reason -->``, reason given.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mx8_common.testing.local_s3 import LocalS3

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?P<before>(?:[^\n]*\n){0,2})```python\n(?P<code>.*?)```", re.DOTALL)
_NO_RUN = re.compile(r"<!--\s*no-run:(?P<reason>.*?)-->")


def _blocks() -> list[tuple[str, str, str | None]]:
    """``(id, code, no-run reason or None)`` of every python block."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in _BLOCK.finditer(text):
            line = text[: m.start("code")].count("\n")
            skip = _NO_RUN.search(m.group("before"))
            reason = skip.group("reason").strip() if skip else None
            out.append((f"{doc.name}:{line}", m.group("code"), reason))
    return out


BLOCKS = _blocks()


def test_docs_have_python_examples_and_no_run_marks_give_a_reason() -> None:
    assert len(BLOCKS) >= 5
    for block_id, _code, reason in BLOCKS:
        assert reason != "", f"{block_id}: <!-- no-run: --> needs a reason"


@pytest.fixture(scope="module")
def example_bucket(s3_server: LocalS3) -> LocalS3:
    """``s3://bucket/prefix/<class>/<n>.png``: 3 classes of 6 small images."""
    import boto3

    env = s3_server.env
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_REGION", "us-east-1"),
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="bucket")
    for c, color in enumerate([(200, 30, 40), (20, 180, 60), (30, 60, 220)]):
        for i in range(6):
            buf = io.BytesIO()
            Image.new("RGB", (16, 12), color).save(buf, format="PNG")
            client.put_object(Bucket="bucket", Key=f"prefix/class{c}/{i}.png", Body=buf.getvalue())
    return s3_server


@pytest.mark.parametrize(
    ("code", "reason"), [(c, r) for _i, c, r in BLOCKS], ids=[i for i, _c, _r in BLOCKS]
)
def test_doc_python_block_runs_as_written(
    code: str, reason: str | None, example_bucket: LocalS3, tmp_path: Path
) -> None:
    if reason is not None:
        pytest.skip(f"marked no-run: {reason}")
    env: dict[str, Any] = {
        k: v for k, v in os.environ.items() if not k.startswith(("MX8_", "AWS_"))
    }
    env.update(example_bucket.env)
    env["MX8_MANIFEST_STORE_ROOT"] = str(tmp_path / "store")
    env["MX8_LOG_LEVEL"] = "warning"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, (
        f"{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr
