"""A loopback TCP proxy whose live connections a test can cut (a transient network break)."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target`` (``host:port`` or ``unix://path``).

    ``cut()`` closes every connection open now; new ones are accepted as before, to
    ``target`` (which a test may change to put another server behind the same address).
    ``freeze()`` holds every byte in both directions (a black hole: nothing is closed,
    nothing arrives) until ``thaw()``.
    ``bytes_down`` counts what the target sent back (bytes on the wire, TLS/gRPC framing
    and compression included).
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.address = ""
        self.cuts = 0
        self.bytes_down = 0
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target.startswith("unix://"):
            return await asyncio.open_unix_connection(self.target.removeprefix("unix://"))
        host, _, port = self.target.rpartition(":")
        return await asyncio.open_connection(host, int(port))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)  # a cut or stop() closes it even while it waits here
        try:
            await self._flowing.wait()
            up_reader, up_writer = await self._connect()
        except (OSError, asyncio.CancelledError):
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers |= {writer, up_writer}
        for src, dst, down in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pump(src, dst, down))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, down: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(1 << 16):
                await self._flowing.wait()
                if down:
                    self.bytes_down += len(data)
                dst.write(data)
                await dst.drain()
        dst.close()

    def cut(self) -> None:
        """Drop every open connection (both sides see the socket close)."""
        self.cuts += 1
        self._drop_all()

    def freeze(self) -> None:
        """Stop forwarding (connections stay open, bytes wait) until ``thaw()``."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self._drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
