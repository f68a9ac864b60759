"""`discovery serve` as a real child process, for the tests of signals, crashes and memory.

A :class:`ServeProcess` starts on ``127.0.0.1:0`` and restarts on the same port and data
directory, so a client's channel (and the SDK's join iterator) finds it again. It is
stopped by its pid: SIGTERM (graceful), SIGKILL (a crash). The ``serve_processes``
fixture (registered in conftest.py) stops whatever is still running at the end of a test.
``register_until_crash`` runs a registration workload and crashes the server (or its store)
in the middle of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discovery.client import AsyncDiscoveryClient, call_metadata
from discovery.core.hashing import contact_hash
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from discovery.v1 import joins_pb2, joins_pb2_grpc
from tests.support.redis_fixtures import RedisProcess

#: Join events deliverable at once, and announced to everyone (the in-process test servers'
#: settings, tests/support/server.py; the default, MUTUAL, is tested in tests/test_join_modes.py).
JOIN_TEST_FLAGS = ("--join-release-jitter-seconds", "0", "--default-announce-mode", "everyone")
START_TIMEOUT = 60.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServeProcess:
    """One `discovery serve` child process; ``args`` are extra flags."""

    data_dir: Path
    args: Sequence[str] = ()
    store: str = ""
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"

    def start(self) -> ServeProcess:
        """Start (or restart: same port, same data directory) and wait until it serves."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.data_dir / "port"
        port_file.unlink(missing_ok=True)
        store = ["--store", self.store] if self.store else []
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "discovery", "serve",
                    "--listen", f"127.0.0.1:{self.port}",
                    "--data-dir", str(self.data_dir),
                    "--port-file", str(port_file),
                    "--auth", "dev",
                    *JOIN_TEST_FLAGS,
                    *store,
                    *self.args,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("discovery serve did not start:\n" + self.log()[-3000:])
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL by pid: a crash, nothing runs after it."""
        if self.running():
            self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    async def wait(self, timeout: float) -> int:
        """The exit code, waiting at most ``timeout`` seconds without blocking the event loop."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"discovery serve still running after {timeout} s")
            await asyncio.sleep(0.02)
        return code

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 20 s (teardown)."""
        if self.running():
            self.signal(signal.SIGTERM)
            assert self.process is not None
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def serve_processes(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Make (not start) `discovery serve` processes in tmp_path; all are stopped at the end."""
    made: list[ServeProcess] = []

    def make(*args: str, store: str = "", name: str = "serve") -> ServeProcess:
        process = ServeProcess(tmp_path / name, args, store)
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


async def health_status(channel: aio.Channel, timeout: float = 2.0, service: str = "") -> int:
    """The health status of ``service`` (default: overall) (``grpc.health.v1.Health/Check``)."""
    request = health_pb2.HealthCheckRequest(service=service)
    reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
    return int(reply.status)


async def wait_health(target: str, status: int, timeout: float = 15.0, service: str = "") -> None:
    """Poll Check until it reports ``status`` (errors while the store is down count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    async with aio.insecure_channel(target) as channel:
        while True:
            try:
                last = await health_status(channel, timeout=1.0, service=service)
            except aio.AioRpcError as error:
                last = error.code()
            if last == status:
                return
            assert time.monotonic() < deadline, f"health is {last}, not {status}, after {timeout} s"
            await asyncio.sleep(0.05)


async def replay_joins(channel: aio.Channel, user_id: str, after: int = 0) -> list[joins_pb2.JoinEvent]:
    """Every stored join event of ``user_id`` after ``after``, up to the caught_up message."""
    call = joins_pb2_grpc.JoinNotificationServiceStub(channel).SubscribeJoins(
        joins_pb2.SubscribeJoinsRequest(after_cursor=after), metadata=call_metadata(user_id, None)
    )
    events: list[joins_pb2.JoinEvent] = []
    try:
        while True:
            message = await asyncio.wait_for(call.read(), timeout=30)
            assert message is not aio.EOF, "the stream ended before it caught up"
            events.extend(message.events)
            if message.caught_up:
                return events
    finally:
        call.cancel()


# -- crashes during a workload -------------------------------------------------------------------

#: Redis persistence that loses no acknowledged write when Redis itself is killed.
AOF = ("--appendonly", "yes", "--appendfsync", "always")
CALL_TIMEOUT = 5.0


def power_cut(server: ServeProcess, redis: RedisProcess) -> tuple[Callable[[], None], Callable[[], None]]:
    """``crash``: SIGKILL of the server and of its Redis at once (one machine loses power);
    ``restart``: Redis first (it reloads its AOF), then the server."""

    def crash() -> None:
        server.kill()
        redis.kill()

    def restart() -> None:
        redis.start()
        server.start()

    return crash, restart


async def discovered(target: str, numbers: list[str]) -> set[str]:
    """User ids registered with any of ``numbers`` (asked by a caller who watches nothing)."""
    async with AsyncDiscoveryClient(target, user_id="probe", timeout=CALL_TIMEOUT) as client:
        return {m.user_id for m in (await client.discover(numbers)).matches}


#: One write of a crash workload: the name its outcome is recorded under, and the call (on a channel).
Write = tuple[str, Callable[[aio.Channel], Awaitable[object]]]


def registration(user_id: str, number: str) -> Write:
    request = pb.RegisterUserRequest(user_id=user_id, contact_hash=contact_hash(number))
    return user_id, lambda channel: pb_grpc.DirectoryAdminServiceStub(channel).RegisterUser(
        request, timeout=CALL_TIMEOUT
    )


async def writes_until_crash(
    target: str,
    writes: Iterable[Write],
    crash: Callable[[], object],
    crash_after: int,
    callers: int = 4,
) -> tuple[set[str], set[str]]:
    """Send ``writes`` with ``callers`` concurrent callers, one call at a time each; right
    after the ``crash_after``-th acknowledgement, ``crash()`` (while the other callers' calls
    are in flight). A caller stops at its first failure. Returns the names of the writes
    acknowledged and of those whose call failed (outcome unknown to the caller); the rest
    were never sent."""
    acked: set[str] = set()
    failed: set[str] = set()
    pending = iter(writes)  # shared: each write is sent once
    crashed = False

    async def caller(channel: aio.Channel) -> None:
        nonlocal crashed
        for name, write in pending:
            try:
                await write(channel)
            except aio.AioRpcError as error:
                assert crashed, f"a call failed before the crash: {error.code()}"
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error.code()
                failed.add(name)
                return
            acked.add(name)
            if len(acked) >= crash_after and not crashed:
                crashed = True
                crash()

    async with aio.insecure_channel(target) as channel:
        await asyncio.wait_for(asyncio.gather(*(caller(channel) for _ in range(callers))), timeout=60)
    assert crashed, "the writes ended before the crash"
    return acked, failed


async def register_until_crash(
    target: str,
    users: Iterable[tuple[str, str]],
    crash: Callable[[], object],
    crash_after: int,
    callers: int = 4,
) -> tuple[set[str], set[str]]:
    """``writes_until_crash`` of RegisterUser calls: the user ids acknowledged, and failed."""
    writes = (registration(user_id, number) for user_id, number in users)
    return await writes_until_crash(target, writes, crash, crash_after, callers)


async def registered_across_crash(
    server: ServeProcess, numbers: list[str], crash: Callable[[], object], restart: Callable[[], object]
) -> set[str]:
    """Register ``user-i`` with ``numbers[i]``, crash a third of the way, restart: the user ids the
    restarted server discovers. Every acknowledged one is there; any other one had a failed call."""
    users = [(f"user-{i}", n) for i, n in enumerate(numbers)]
    acked, failed = await register_until_crash(server.target, users, crash, crash_after=len(numbers) // 3)
    restart()
    registered = await discovered(server.target, numbers)
    assert acked <= registered, f"acknowledged but lost: {sorted(acked - registered)}"
    assert registered <= acked | failed
    return registered
