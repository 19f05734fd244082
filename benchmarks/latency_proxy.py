"""A loopback TCP proxy that delays the first byte of each response, like real S3.

Real S3 answers a GET after ~20 ms of first-byte latency; a local server answers in well
under a millisecond, which hides what concurrency buys. The proxy forwards bytes both
ways and, whenever the upstream starts answering a request (its first bytes after the
client sent something), holds them for ``delay_ms`` before passing them on. Bytes that
follow within the same response are not delayed. Connections stay keep-alive.

``python -m benchmarks.latency_proxy UPSTREAM_HOST:PORT [--delay-ms 20]`` prints
``{"port": N}`` and serves until stdin closes; ``latency_proxy(url)`` runs it as a child
process (its CPU apart from the benchmark's) and yields the proxy's URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

__all__ = ["latency_proxy", "serve"]

_CHUNK = 256 * 1024


class _Link:
    """One client connection: set when a request went up, cleared at its first answer."""

    __slots__ = ("awaiting",)

    def __init__(self) -> None:
        self.awaiting = False


async def _upstream_to_client(
    up: asyncio.StreamReader, down: asyncio.StreamWriter, link: _Link, delay_s: float
) -> None:
    while data := await up.read(_CHUNK):
        if link.awaiting:
            link.awaiting = False
            await asyncio.sleep(delay_s)
        down.write(data)
        await down.drain()


async def _client_to_upstream(
    down: asyncio.StreamReader, up: asyncio.StreamWriter, link: _Link
) -> None:
    while data := await down.read(_CHUNK):
        link.awaiting = True
        up.write(data)
        await up.drain()


async def _handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: tuple[str, int],
    delay_s: float,
) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
    except OSError:
        writer.close()
        return
    link = _Link()
    tasks = [
        asyncio.create_task(_client_to_upstream(reader, up_writer, link)),
        asyncio.create_task(_upstream_to_client(up_reader, writer, link, delay_s)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()


async def serve(upstream: tuple[str, int], delay_ms: float) -> None:
    """Serve on 127.0.0.1 port 0, print the port, stop when stdin closes."""
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, upstream, delay_ms / 1000), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    async with server:
        await asyncio.to_thread(sys.stdin.read)


@contextlib.contextmanager
def latency_proxy(upstream_url: str, delay_ms: float = 20.0) -> Iterator[str]:
    """Run the proxy in a child process in front of ``upstream_url``; yield its URL."""
    parts = urlsplit(upstream_url)
    target = f"{parts.hostname}:{parts.port or 80}"
    proc = subprocess.Popen(
        [sys.executable, "-m", __name__, target, "--delay-ms", str(delay_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"latency proxy exited ({proc.wait()}) before listening")
        yield f"{parts.scheme}://127.0.0.1:{json.loads(line)['port']}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("upstream", help="HOST:PORT of the S3 endpoint")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    uvloop.run(serve((host, int(port)), args.delay_ms))
