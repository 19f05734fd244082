"""The one-command demo: the whole distributed path on one machine.

    python -m mx8.demo            (what ./scripts/demo.sh runs)

It starts a local S3-protocol server (moto; or uses ``MX8_S3_ENDPOINT_URL``), uploads a
small generated image dataset with class folders, starts ``mx8-coordinator`` and two
``mx8d-agent``s on loopback, runs two trainer processes with
``mx8.vision.ImageFolderLoader`` for two epochs, and prints a short report. Everything it
started is stopped on exit, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["main"]

BUCKET = "mx8-demo"
PREFIX = "images/"
CLASSES = ("cat", "dog", "fox")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make_images(per_class: int, size: int) -> Iterator[tuple[str, bytes]]:
    """Deterministic little PNG/JPEG images: (key under the prefix, bytes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(8)
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            pixels[..., c] = 255  # a colour per class, so labels are visibly right
            buf = io.BytesIO()
            fmt = "PNG" if i % 2 else "JPEG"
            Image.fromarray(pixels).save(buf, format=fmt)
            yield f"{name}/{i:04d}.{fmt.lower().replace('jpeg', 'jpg')}", buf.getvalue()


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s")


class _Processes:
    """Children we started; all are stopped on exit (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _run_trainer(args: argparse.Namespace) -> int:
    """One trainer process: read the job through the local agent, record what it got."""
    from mx8.vision import ImageFolderLoader

    loader = ImageFolderLoader(
        args.link, agent=args.agent, batch_size=args.batch_size, resize=(32, 32)
    )
    per_epoch: dict[int, list[int]] = {}
    shapes = set()
    t0 = time.perf_counter()
    # The raw batches carry sample ids and epochs for the report; collate() is exactly what
    # iterating the ImageFolderLoader yields: (float32 [B,3,H,W] images, int64 labels).
    # One loop per epoch, as in embedded mode (loops past the job's end are empty).
    for _epoch in range(loader.loader.epochs):
        for batch in loader.loader:
            images, labels = loader.collate(batch)
            shapes.add(tuple(images.shape[1:]))
            assert len(labels) == len(batch)
            per_epoch.setdefault(int(batch.epoch), []).extend(batch.sample_ids.tolist())
    seconds = time.perf_counter() - t0
    Path(args.out).write_text(
        json.dumps(
            {
                "per_epoch": per_epoch,
                "seconds": seconds,
                "shapes": sorted(shapes),
                "classes": loader.classes,
                "manifest_hash": loader.manifest_hash,
            }
        )
    )
    return 0


def _upload(env: dict[str, str], per_class: int) -> int:
    from mx8_common.storage.s3_client import S3Settings, sync_s3_client

    client = sync_s3_client(S3Settings(endpoint_url=env["MX8_S3_ENDPOINT_URL"], region="us-east-1"))
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    n = 0
    for key, data in _make_images(per_class, 48):
        client.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=data)
        n += 1
    return n


def _report(results: list[dict[str, Any]], objects: int, epochs: int, wall_s: float) -> bool:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    hashes = {r["manifest_hash"] for r in results}
    table = Table(title="mx8 demo: 1 coordinator, 2 agents, 2 trainers, S3-protocol server")
    table.add_column("trainer")
    for e in range(epochs):
        table.add_column(f"epoch {e} samples", justify="right")
    table.add_column("samples/s", justify="right")
    ok = len(hashes) == 1
    for i, r in enumerate(results):
        row = [str(i)]
        total = 0
        for e in range(epochs):
            n = len(r["per_epoch"].get(str(e), []))
            total += n
            row.append(str(n))
        row.append(f"{total / r['seconds']:.0f}" if r["seconds"] else "-")
        table.add_row(*row)
    console.print(table)
    for e in range(epochs):
        counts = Counter(i for r in results for i in r["per_epoch"].get(str(e), []))
        once = set(counts) == set(range(objects)) and all(v == 1 for v in counts.values())
        ok = ok and once
        console.print(f"epoch {e}: every sample delivered once: {'yes' if once else 'NO'}")
    console.print(f"manifest hash: {next(iter(hashes)) if len(hashes) == 1 else hashes}")
    console.print(f"objects: {objects}   classes: {results[0]['classes']}")
    total = sum(len(v) for r in results for v in r["per_epoch"].values())
    console.print(f"total: {total} samples in {wall_s:.1f}s ({total / wall_s:.0f} samples/s)")
    return ok


def _run_demo(args: argparse.Namespace) -> int:
    from mx8_common.testing.local_s3 import local_s3_server

    work = Path(tempfile.mkdtemp(prefix="mx8-demo-"))
    procs = _Processes(work)
    epochs = 2
    try:
        print("starting a local S3-protocol server ...", flush=True)
        with local_s3_server("MX8_S3_ENDPOINT_URL") as s3:
            os.environ.update(s3.env)  # this process uploads; children inherit it too
            env = {**os.environ, "MX8_LOG_FORMAT": "json"}
            env["MX8_MANIFEST_STORE_ROOT"] = str(work / "store")
            print(f"S3-protocol server ({s3.kind}) at {s3.endpoint_url}")
            objects = _upload(env, args.per_class)
            link = f"s3://{BUCKET}/{PREFIX}"
            print(f"uploaded {objects} images to {link}")
            port = _free_port()
            coord = procs.start(
                "coordinator",
                [
                    sys.executable,
                    "-m",
                    "mx8_coordinator",
                    "--dataset",
                    link,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--world-size",
                    "2",
                    "--epochs",
                    str(epochs),
                    "--shuffle",
                    "--seed",
                    "7",
                    "--block-size",
                    "16",
                    "--state-dir",
                    str(work / "state"),
                    "--job-id",
                    "demo",
                ],
                env,
            )
            _wait_port(port, coord, "mx8-coordinator", 60)
            print(f"mx8-coordinator listening on 127.0.0.1:{port}")
            agents = []
            for name in ("node-a", "node-b"):
                sock = work / f"{name}.sock"
                procs.start(
                    f"agent-{name}",
                    [
                        sys.executable,
                        "-m",
                        "mx8_agent",
                        "--coordinator",
                        f"127.0.0.1:{port}",
                        "--node-id",
                        name,
                        "--listen",
                        f"unix://{sock}",
                        "--job-id",
                        "demo",
                        "--cache-dir",
                        str(work / f"cache-{name}"),
                    ],
                    env,
                )
                agents.append(f"unix://{sock}")
            print("mx8d-agent node-a and node-b started")
            t0 = time.perf_counter()
            trainers = []
            for i, agent in enumerate(agents):
                out = work / f"trainer-{i}.json"
                proc = procs.start(
                    f"trainer-{i}",
                    [
                        sys.executable,
                        "-m",
                        "mx8.demo",
                        "--trainer",
                        "--agent",
                        agent,
                        "--link",
                        link,
                        "--out",
                        str(out),
                        "--batch-size",
                        "16",
                    ],
                    env,
                )
                trainers.append((proc, out))
            deadline = time.monotonic() + args.timeout
            for i, (proc, _) in enumerate(trainers):
                try:
                    code = proc.wait(max(1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"trainer {i} did not finish in {args.timeout}s") from None
                if code != 0:
                    raise RuntimeError(
                        f"trainer {i} failed (exit {code}):\n{procs.tail(f'trainer-{i}')}"
                    )
            wall = time.perf_counter() - t0
            results = [json.loads(out.read_text()) for _, out in trainers]
            ok = _report(results, objects, epochs, wall)
            print(f"logs: {work}" if not ok or args.keep else "")
            return 0 if ok else 1
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        for name, _ in procs.procs:
            tail = procs.tail(name, 8)
            if tail:
                print(f"--- {name} (last lines) ---\n{tail}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mx8.demo", description=__doc__)
    parser.add_argument("--per-class", type=int, default=40, help="images per class")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before giving up")
    parser.add_argument("--keep", action="store_true", help="keep logs and the work folder")
    parser.add_argument("--trainer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--agent", help=argparse.SUPPRESS)
    parser.add_argument("--link", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return _run_trainer(args) if args.trainer else _run_demo(args)


if __name__ == "__main__":
    raise SystemExit(main())
