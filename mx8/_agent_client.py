"""``AgentStreamClient``: a trainer's synchronous view of the local ``mx8d-agent``.

Iterating yields ``mx8.batch.Batch``es of the job, shared fairly with the other
trainers of the host. A batch is acknowledged when the next one is requested, i.e.
after the trainer consumed it; the agent reports only acknowledged samples to the
coordinator, so batches a crashed trainer never finished go to another trainer instead
of being lost. Up to ``window`` batches may be in flight ahead of the trainer. On a rank
stream the agent lets the trainer take a batch or so more before acknowledging
(``Batch.ack_slack``, never past the batches it is already reading): each acknowledgement
is a message, which cost both processes more CPU than the batch it freed.

A stream that breaks (UNAVAILABLE) while the agent lives is reopened with the same
``trainer_id`` and ``resume_after_seq`` = the last batch the trainer consumed: the agent
counts that one as acknowledged even if the ack was lost, re-sends the batches the trainer
never got, and the iteration goes on without losing or repeating a consumed batch. The
client retries for ``reconnect_timeout_s`` (0 turns this off); an agent that restarted
meanwhile refuses the resume (it cannot know what was consumed) with a
``TrainerResumeError`` telling the trainer to restart; an agent that stays away is an
``AgentError``.
``want_locations=True`` asks the agent to fill ``Batch.locations``.

The client owns one plain (sync) gRPC channel (built by ``mx8_common.rpc.channels``);
gRPC's own threads move the bytes, so no event loop is involved. Every gRPC failure
becomes an mx8 error here: what the agent refused with is rebuilt as the same typed error
(``ObjectChangedError``, ``ManifestTruncated``, ``TrainerResumeError``... from the status
details), anything else (an unreachable agent, a refused token) is an ``AgentError``
naming the URL.

Rank-exact mode (``rank=RankOpen(...)``): the stream is one trainer rank's batches, in
order from the given start, each with its epoch and step (``last_step``). Before the
first batch the agent may send ``WorldWaiting`` while the rank's world is incomplete:
the client prints what it waits for (at once, then every ``_WAIT_PRINT_S`` or when it
changes) and gives up after ``world_wait_timeout_s`` with ``JobNotReadyError``. A broken
stream is reopened at the position after the last batch returned, also on an agent that
restarted (the trainer knows what it consumed), for ``reconnect_timeout_s``, saying so.

Same host: a rank-exact stream offers the agent a probe file in ``/dev/shm``
(``shared_memory=True``, the default); an agent that reads it back sends batches as
shared-memory references, which ``mx8._shm.SharedSegments`` copies out on arrival. An
agent elsewhere (or without that ``/dev/shm``) just sends the bytes in its messages.
Such a stream also says the trainer reads local files itself (``trainer_reads=True``, the
default; ``MX8_TRAINER_READS=0`` turns it off): an agent that accepted the probe sends a
batch of whole local files as their paths, and ``mx8._trainer_reads.ReadAhead`` reads them
on its own thread as they arrive. A file this trainer cannot read (another mount
namespace, another user) reopens the stream without it, saying so once: the agent reads.

An agent started with ``--tls-cert`` (and ``--tls-ca``) or ``MX8_AGENT_AUTH_TOKEN`` needs
the same on this side: TLS files and the token default to ``MX8_AGENT_TLS_CA`` /
``MX8_AGENT_TLS_CERT`` / ``MX8_AGENT_TLS_KEY`` and ``MX8_AGENT_AUTH_TOKEN`` (not the
``MX8_TLS_*`` / ``MX8_AUTH_TOKEN`` of the coordinator connection).
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mx8._config import AGENT_AUTH_TOKEN_ENV, TrainerConfig
from mx8._shm import SharedMemoryUnreadable, SharedSegments
from mx8._trainer_reads import ReadAhead
from mx8.batch import Batch
from mx8_common import shm
from mx8_common.errors import AgentError, ConfigError, ContractError, JobNotReadyError, Mx8Error
from mx8_common.rpc.channels import sync_channel, unix_socket_path
from mx8_common.rpc.errors import error_from_rpc
from mx8_common.rpc.proto import agent_pb2 as pb
from mx8_common.rpc.proto import agent_pb2_grpc as pb_grpc
from mx8_common.rpc.security import TlsConfig

# How long close() waits for queued acks to be written before cancelling the stream.
_ACK_FLUSH_S = 2.0
#: No acknowledgement due (a batch_seq no stream reaches).
_NEVER = 1 << 64

__all__ = ["AGENT_AUTH_TOKEN_ENV", "AgentStreamClient", "RankOpen", "agent_tls_from_env"]

#: How often an unchanged "waiting for ranks" line is printed again.
_WAIT_PRINT_S = 10.0


def check_agent_address(url: str, *, probe_timeout_s: float = 2.0) -> None:
    """Fail at once where no agent can answer: an address of a scheme gRPC does not speak
    (``http://...``), a unix socket file that does not exist, a port that refuses.

    Only the trainer's first contact checks this: later reconnects wait for an agent that
    is restarting, whose socket is briefly gone.
    """
    if "://" in url and not url.startswith("unix:"):
        raise ConfigError(
            f"agent address {url!r} is not one mx8d-agent listens on; use unix:/path/agent.sock "
            "or HOST:PORT, the agent's --listen (e.g. MX8_AGENT_URL=unix:/run/mx8/agent.sock)"
        )
    path = unix_socket_path(url)
    if path is not None:
        if not path.exists():
            raise AgentError(
                f"no mx8d-agent socket at {path} ({url}); start mx8d-agent on this host, or "
                "point MX8_AGENT_URL (agent=) at the socket its --listen names",
                address=url,
            )
        family, target = socket.AF_UNIX, str(path)
    else:
        host, _, port = url.rpartition(":")
        try:
            family, target = (
                socket.AF_INET6 if ":" in host else socket.AF_INET,
                (
                    host.strip("[]") or "127.0.0.1",
                    int(port),
                ),
            )
        except ValueError:
            return  # gRPC's own parsing names what is wrong with it
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(probe_timeout_s)
        try:
            probe.connect(target)
        except ConnectionRefusedError:
            raise AgentError(
                f"mx8d-agent at {url} refused the connection: nothing listens there; start "
                "mx8d-agent on this host, or point MX8_AGENT_URL (agent=) at its --listen address",
                address=url,
            ) from None
        except OSError:
            return  # slow or filtered: the channel's own wait says what it waits for


@dataclass(frozen=True, kw_only=True)
class RankOpen:
    """A rank-exact stream: the trainer's rank contract and where it starts.

    ``offset``/``base_step`` are the start epoch's segment (see ``mx8._state``); later
    epochs start at their step 0. ``seed``/``shuffle`` None take the job's.
    """

    rank: int
    world_size: int
    drop_last: bool = False
    seed: int | None = None
    shuffle: bool | None = None
    epoch: int = 0
    step: int = 0
    offset: int = 0
    base_step: int = 0
    consumed: int = 0
    resumed: bool = False


def _say(line: str) -> None:
    print(f"mx8: {line}", file=sys.stderr, flush=True)


def agent_tls_from_env(environ: Mapping[str, str] | None = None) -> TlsConfig:
    """The trainer's TLS files for the agent: ``MX8_AGENT_TLS_CA`` (trust the agent's
    certificate) and ``MX8_AGENT_TLS_CERT`` / ``MX8_AGENT_TLS_KEY`` (mutual TLS).
    Empty values count as unset; none set means plaintext."""
    return TrainerConfig.from_env(environ).agent_tls


class AgentStreamClient:
    """Batches of one job from the local agent, as a sync iterator (see module docstring).

    ``tls`` None reads ``MX8_AGENT_TLS_*`` (pass ``TlsConfig()`` to force plaintext);
    ``token`` None reads ``MX8_AGENT_AUTH_TOKEN`` (pass ``""`` to send none).
    """

    def __init__(
        self,
        url: str,
        *,
        job_id: str,
        local_rank: int,
        batch_size: int,
        trainer_id: str | None = None,
        window: int = 4,
        timeout_s: float = 30.0,
        tls: TlsConfig | None = None,
        token: str | None = None,
        want_locations: bool = False,
        reconnect_timeout_s: float = 5.0,
        rank: RankOpen | None = None,
        world_wait_timeout_s: float = 600.0,
        shared_memory: bool = True,
        shm_dir: Path | None = None,
        channel: grpc.Channel | None = None,
        trainer_reads: bool | None = None,
    ) -> None:
        if batch_size <= 0:
            raise AgentError(f"batch_size is {batch_size}; it must be > 0", address=url)
        if window <= 0:
            raise AgentError(f"window is {window}; it must be > 0", address=url)
        self.url = url
        self.job_id = job_id
        self.local_rank = local_rank
        self.batch_size = batch_size
        self.window = window
        self.timeout_s = timeout_s
        self.want_locations = want_locations
        self.reconnect_timeout_s = reconnect_timeout_s
        self.rank = rank
        self.world_wait_timeout_s = world_wait_timeout_s
        if shm_dir is None or trainer_reads is None:
            env = TrainerConfig.from_env()
            if shm_dir is None:
                shared_memory = shared_memory and bool(env.shm_dir)
                shm_dir = Path(env.shm_dir or shm.SHM_DIR)
            if trainer_reads is None:
                trainer_reads = env.trainer_reads
        self.shared_memory = shared_memory and rank is not None
        #: Offer to read local files here (only beside a shared-memory probe: same host).
        self.trainer_reads = trainer_reads
        self._read_ahead: ReadAhead | None = None
        #: Batches whose files this trainer read itself.
        self.batches_read_here = 0
        self._shm_dir = shm_dir
        #: The agent's segments (batches it sent through shared memory are counted there).
        self.segments = SharedSegments(url, shm_dir)
        self._probe: str | None = None
        #: Rank-exact mode: the epoch and step of the batch last returned.
        self.last_epoch: int | None = None
        self.last_step: int | None = None
        self._waiting_since: float | None = None
        self._printed: tuple[object, float] | None = None
        self.reconnects = 0
        self.trainer_id = trainer_id or (
            f"{socket.gethostname()}-{os.getpid()}-{local_rank}-{uuid.uuid4().hex[:6]}"
        )
        if tls is None or token is None:
            env = TrainerConfig.from_env()  # fills what the caller left None
            tls = env.agent_tls if tls is None else tls
            token = env.agent_auth_token if token is None else token
        self.tls = tls
        if channel is not None:  # connected already (``take_channel`` of another client)
            self._channel = channel
        else:
            self._channel = self._connect(url, token, timeout_s)
        self._stub = pb_grpc.AgentStub(self._channel)
        self._requests: queue.Queue[pb.TrainerMessage | None] = queue.Queue()
        self._sent_all = threading.Event()
        self._responses: Any = None
        self._pending_ack: int | None = None
        # The last batch_seq the trainer consumed: where a resumed stream continues.
        self._consumed_seq = 0
        # Whether the consumed batch is not acknowledged yet, and the batch_seq by which
        # the acknowledgement is due (each batch's ``ack_slack``; 0 on dynamic streams).
        self._unacked = False
        self._ack_due = _NEVER
        self._finished = False
        self._closed = False

    def _connect(self, url: str, token: str, timeout_s: float) -> grpc.Channel:
        channel = sync_channel(url, tls=self.tls, token=token)
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError as exc:
            channel.close()
            # A TLS mismatch (plaintext vs TLS, an untrusted or missing certificate) looks
            # the same as a dead agent from here: the channel just never becomes ready.
            raise AgentError(
                f"mx8d-agent at {url} is unreachable after {timeout_s}s; start mx8d-agent on "
                "this host, or point the trainer at its --listen address (MX8_AGENT_LISTEN). "
                "If the agent runs TLS (--tls-cert), set MX8_AGENT_TLS_CA (and "
                "MX8_AGENT_TLS_CERT/MX8_AGENT_TLS_KEY when it wants client certificates)",
                address=url,
            ) from exc
        return channel

    def take_channel(self) -> grpc.Channel:
        """Hand this client's connected channel (no stream opened yet) to another
        client of the same agent and settings (``channel=``); this one is closed."""
        if self._responses is not None or self._closed:
            raise RuntimeError("only an unused client's channel can be handed over")
        self._closed = True
        return self._channel

    # -- errors -------------------------------------------------------------------------

    def _error(self, exc: grpc.RpcError, what: str) -> Mx8Error:
        refused = error_from_rpc(exc, origin=f"mx8d-agent at {self.url}")
        if refused is not None:
            return refused
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            # The agent's token check names the variable to set (MX8_AGENT_AUTH_TOKEN).
            return AgentError(
                f"mx8d-agent at {self.url} refused {what} (UNAUTHENTICATED): {details}",
                address=self.url,
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return AgentError(
                f"lost mx8d-agent at {self.url} during {what} ({details}); is it still "
                "running? restart it (its unacknowledged batches are not lost)",
                address=self.url,
            )
        name = code.name if code is not None else "UNKNOWN"
        return AgentError(
            f"mx8d-agent at {self.url} refused {what}: {details} ({name})", address=self.url
        )

    # -- describe -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The job as the agent knows it: hash, sample count, epochs, class names, rank."""
        try:
            d = self._stub.DescribeJob(
                pb.DescribeJobRequest(job_id=self.job_id), timeout=self.timeout_s
            )
        except grpc.RpcError as exc:
            raise self._error(exc, "DescribeJob") from exc
        return {
            "job_id": d.job_id,
            "manifest_hash": d.manifest_hash,
            "total_samples": d.total_samples,
            "epochs": d.epochs,
            "class_names": list(d.class_names),
            "node_rank": d.node_rank,
            "world_size": d.world_size,
            "ready": d.ready,
            "mode": d.mode,
            "shuffle": d.shuffle,
            "seed": d.seed,
            "block_size": d.block_size,
        }

    # -- streaming ----------------------------------------------------------------------

    def _open_message(self, resume_after: int) -> pb.TrainerMessage:
        op = pb.OpenStream(
            job_id=self.job_id,
            local_rank=self.local_rank,
            batch_size=self.batch_size,
            trainer_id=self.trainer_id,
            window=self.window,
            want_locations=self.want_locations,
            resume_after_seq=resume_after,
        )
        r = self.rank
        if r is not None:
            op.contract.rank = r.rank
            op.contract.world_size = r.world_size
            op.contract.drop_last = r.drop_last
            if r.seed is not None:
                op.contract.seed = r.seed
            if r.shuffle is not None:
                op.contract.shuffle = r.shuffle
            op.start.CopyFrom(self._start())
        if self.shared_memory:
            self._drop_probe()
            probe = shm.write_probe(self._shm_dir)
            if probe is not None:
                self._probe = probe[0]
                op.shm_probe.name, op.shm_probe.token = probe
                op.trainer_reads = self.trainer_reads
        return pb.TrainerMessage(open=op)

    def _drop_probe(self) -> None:
        # The agent removes a probe it accepted; this one was refused or is stale.
        if self._probe is not None:
            shm.remove(self._probe, self._shm_dir)
            self._probe = None

    def _start(self) -> pb.StreamStart:
        """Where a rank-exact stream (re)opens: after the last batch returned."""
        r = self.rank
        assert r is not None
        if self.last_epoch is None or self.last_step is None:
            epoch, step = r.epoch, r.step
        else:
            epoch, step = self.last_epoch, self.last_step + 1
        if epoch != r.epoch:  # later epochs start fresh: their segment is the whole epoch
            return pb.StreamStart(epoch=epoch, step=step, resumed=r.resumed)
        return pb.StreamStart(
            epoch=epoch,
            step=step,
            offset=r.offset,
            base_step=r.base_step,
            consumed=r.consumed,
            resumed=r.resumed,
        )

    @staticmethod
    def _request_stream(
        requests: queue.Queue[pb.TrainerMessage | None],
        opening: pb.TrainerMessage,
        sent_all: threading.Event,
    ) -> Iterator[pb.TrainerMessage]:
        # gRPC pulls the next message only once the previous one is written, so reaching
        # the None means every ack queued before it is on the wire.
        yield opening
        while (message := requests.get()) is not None:
            yield message
        sent_all.set()

    def _open(self, resume_after: int) -> None:
        # Each stream has its own request queue: a None ends the old one's sender thread.
        self._requests = queue.Queue()
        # ``resume_after`` acknowledges what was consumed; the new stream's batches say
        # when to acknowledge them. A batch returned before a dynamic stream broke keeps
        # its due acknowledgement: it goes out on the new stream once consumed.
        self._unacked = False
        if self._pending_ack is None:
            self._ack_due = _NEVER
        self._sent_all = threading.Event()
        self.segments.close()  # a new stream names new segments
        opening = self._open_message(resume_after)
        self._responses = self._stub.Stream(
            self._request_stream(self._requests, opening, self._sent_all)
        )
        self._read_ahead = ReadAhead(self._responses) if opening.open.trainer_reads else None

    def _reopen(self, deadline: float) -> bool:
        """After a broken stream: wait (until ``deadline``) for the agent, then resume.

        False when the agent did not come back in time."""
        self._requests.put(None)
        try:
            grpc.channel_ready_future(self._channel).result(
                timeout=max(0.0, deadline - time.monotonic())
            )
        except grpc.FutureTimeoutError:
            return False
        self.reconnects += 1
        if self.rank is not None:
            # A rank stream reopens after the last batch returned, numbered afresh.
            self._pending_ack = None
        self._open(self._consumed_seq)
        return True

    def _consume(self) -> None:
        """The batch last returned is consumed (the trainer asks for more); acknowledge
        it once due (see ``Batch.ack_slack``)."""
        if self._pending_ack is not None:
            self._consumed_seq = self._pending_ack
            self._pending_ack = None
            self._unacked = True
        if self._consumed_seq >= self._ack_due:
            self._send_ack()

    def _send_ack(self) -> None:
        if self._unacked and not self._finished and not self._closed:
            self._requests.put(pb.TrainerMessage(ack=pb.Ack(batch_seq=self._consumed_seq)))
        self._unacked = False
        self._ack_due = _NEVER

    def __iter__(self) -> AgentStreamClient:
        return self

    def __next__(self) -> Batch:
        if self._finished or self._closed:
            raise StopIteration
        if self._responses is None:
            self._open(0)
        self._consume()  # the trainer asks for the next batch: it consumed the previous one
        deadline: float | None = None
        while True:
            try:
                message, read = self._next_message()
                self._drop_probe()
                if message.HasField("waiting"):
                    self._on_waiting(message.waiting)
                    continue
                payload = self._payload(message, read)
                if payload is None:
                    continue  # reopened without shared memory: the batch comes again
                break
            except StopIteration:
                self._finish()
                raise AgentError(
                    f"mx8d-agent at {self.url} ended the stream before the end of the job; "
                    "check the agent's log",
                    address=self.url,
                ) from None
            except grpc.RpcError as exc:
                # Only a broken transport is worth a resume; a refusal would repeat.
                code = exc.code() if isinstance(exc, grpc.Call) else None
                broken = code == grpc.StatusCode.UNAVAILABLE and error_from_rpc(exc) is None
                if broken and self.reconnect_timeout_s > 0:
                    if deadline is None:
                        deadline = time.monotonic() + self.reconnect_timeout_s
                        if self.rank is not None:
                            _say(
                                f"lost mx8d-agent at {self.url}; reconnecting for up to "
                                f"{self.reconnect_timeout_s:.0f}s (training continues where "
                                "it is)"
                            )
                    if not self._closed and self._reopen(deadline):
                        continue
                self._finish()
                error = self._error(exc, "Stream")
                # A refused contract is the trainer's own settings: one line, no gRPC chain.
                raise error from (None if isinstance(error, ContractError) else exc)
        if message.HasField("end_of_job"):
            self._send_ack()  # whatever is consumed and not acknowledged yet, first
            self._finish()
            if self.rank is not None:
                # Wait for the agent to take our last acknowledgement and end the call.
                with contextlib.suppress(grpc.RpcError):
                    if self._read_ahead is not None:
                        self._read_ahead.drain()
                    else:
                        for _ in self._responses:
                            pass
            raise StopIteration
        self._waiting_since = None
        b = message.batch
        self._pending_ack = b.batch_seq
        self._ack_due = min(self._ack_due, b.batch_seq + b.ack_slack)
        self.last_epoch, self.last_step = b.epoch, b.step
        ids = np.array(b.sample_ids, dtype=np.uint64)
        offsets = np.array(b.offsets, dtype=np.int64)
        labels = np.array(b.labels, dtype=np.int64) if len(b.labels) else None
        locations = tuple(b.locations) if self.want_locations else None
        if isinstance(payload, list):  # read here: joined only if asked (as embedded mode)
            self.batches_read_here += 1
            return Batch.from_parts(ids, payload, offsets, labels, b.epoch, locations)
        return Batch(ids, payload, offsets, labels, b.epoch, locations)

    def _next_message(self) -> tuple[pb.AgentMessage, list[bytes] | Exception | None]:
        """The stream's next message, with its files when this trainer read them."""
        if self._read_ahead is not None:
            return self._read_ahead.next()
        return next(self._responses), None

    def _restart_without(self, why: str) -> None:
        """Reopen the stream after the last batch returned (the one in hand comes again)."""
        _say(why)
        self._requests.put(None)
        self._responses.cancel()
        self._pending_ack = None
        self._open(self._consumed_seq)

    def _payload(
        self, message: pb.AgentMessage, read: list[bytes] | Exception | None = None
    ) -> bytes | list[bytes] | None:
        """The batch's bytes (copied out of shared memory before they are acknowledged),
        or the files read here; None when this trainer cannot read the agent's segment or
        files and reopened without."""
        if read is not None:
            if isinstance(read, list):
                return read
            self.trainer_reads = False
            self._restart_without(
                f"cannot read the job's files from this trainer ({read}); taking their bytes "
                "from mx8d-agent instead"
            )
            return None
        if not message.HasField("batch") or not message.batch.HasField("shared"):
            return message.batch.payload if message.HasField("batch") else b""
        where = message.batch.shared
        try:
            return self.segments.read(where.segment, where.offset, where.length)
        except SharedMemoryUnreadable as exc:
            self.shared_memory = False
            self._restart_without(f"{exc}; taking batches through the stream instead")
            return None

    def _on_waiting(self, w: pb.WorldWaiting) -> None:
        """The rank's world is incomplete: say what for, give up after the timeout."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        job = w.job_id or self.job_id or "default"
        if w.missing_ranks:
            missing = ",".join(map(str, w.missing_ranks))
            what = (
                f"waiting for rank{'s' if len(w.missing_ranks) > 1 else ''} {missing} of "
                f"{w.world_size} to join job {job!r} ({len(w.registered_ranks)}/"
                f"{w.world_size} registered)"
            )
        else:
            what = f"waiting for mx8d-agent at {self.url} and the coordinator of job {job!r}"
        waited = now - self._waiting_since
        if waited > self.world_wait_timeout_s:
            self.close()
            raise JobNotReadyError(
                f"gave up after {waited:.0f}s {what}; start the missing trainers (all "
                "ranks of a job run the same mx8.load), or wait longer with "
                "MX8_WORLD_WAIT_TIMEOUT_S / mx8.load(world_wait_timeout_s=...)"
            )
        key = tuple(w.missing_ranks)
        if (
            self._printed is None
            or self._printed[0] != key
            or now - self._printed[1] >= (_WAIT_PRINT_S)
        ):
            self._printed = (key, now)
            _say(what)

    def ack(self) -> None:
        """Acknowledge the batch last returned, and every one before it, now (the trainer
        is done with them)."""
        if not self._finished and not self._closed:
            self._ack_due = 0
            self._consume()

    def _finish(self) -> None:
        self._finished = True
        self._requests.put(None)

    def close(self) -> None:
        """End the stream (unacknowledged batches go to other trainers) and the channel."""
        if self._closed:
            return
        if self._responses is not None:
            self._send_ack()  # consumed batches are not re-queued for other trainers
        self._closed = True
        self._requests.put(None)
        if self._responses is not None and not self._finished:
            # The last ack (queued by the trainer's last next()) must reach the agent
            # before the cancel, or the agent re-queues a batch the trainer consumed.
            self._sent_all.wait(_ACK_FLUSH_S)
            self._responses.cancel()
        self._channel.close()
        self._drop_probe()
        self.segments.close()

    def __enter__(self) -> AgentStreamClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
