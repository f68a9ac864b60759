"""Real redis-server processes for the tests: one server, a 3-master Redis Cluster, a primary
with a replica under 3 sentinels, and a Redis Cluster of 3 primaries each with a replica.

Each runs on free loopback ports in its own temporary directory, without persistence
unless a test asks for AOF, and is stopped by its pid. The session-wide ones are
flushed before every test that uses them. When redis-server is not installed the
tests that need it are skipped with the reason (``scripts/test`` installs it).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
MISSING = "redis-server and redis-cli are not installed (scripts/test installs them with apt-get)"
requires_redis = pytest.mark.skipif(REDIS_SERVER is None or REDIS_CLI is None, reason=MISSING)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster: bool = False) -> int:
    """A free loopback port; for a cluster node its bus port (port + 10000) is free too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20_000, 55_000)
        if _port_free(port) and (not cluster or _port_free(port + 10_000)):
            return port
    raise RuntimeError("no free port")


def stop_by_pid(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the child by its pid and wait; SIGKILL it if it is still there after ``timeout``."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def skip_without_redis() -> None:
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip(MISSING)


@dataclass
class RedisProcess:
    """One redis-server child process."""

    port: int
    directory: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    #: A config file to pass first (sentinels need one they can rewrite).
    config: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *([str(self.config)] if self.config is not None else []),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"),
                "--daemonize", "no",
                "--save", "",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                    return
            # AttributeError: once in a CI run, redis-py 8.1 read the reply to its opening HELLO 3 as a
            # list instead of a map from a server that had just started; the next connection was fine.
            except (redis.exceptions.RedisError, AttributeError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM by pid (redis-server shuts down cleanly), SIGKILL if it lingers."""
        if self.process is not None:
            stop_by_pid(self.process, 10.0)
        self.process = None

    def kill(self) -> None:
        """SIGKILL by pid: a crash, without a clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        """SIGSTOP by pid: the process stops answering (and replicating) until :meth:`resume`."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            reply: dict[str, Any] = client.info(section)
            return reply


#: Replicas start in a moment: a diskless full sync without the default 5 s delay.
REPLICATION_ARGS = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms (errors count as false) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.exceptions.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


def replicas_online(primary: RedisProcess, count: int) -> bool:
    info = primary.info("replication")
    online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return sum(1 for v in online if v.get("state") == "online") >= count


@dataclass
class RedisClusterProcesses:
    """A Redis Cluster of 3 masters (no replicas) on loopback."""

    nodes: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        assert REDIS_CLI is not None
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI, "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(self._ok(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _ok(node: RedisProcess) -> bool:
        with node.client() as client:
            info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def flush(self) -> None:
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


SENTINEL_SERVICE = "discovery"


@dataclass
class SentinelProcesses:
    """A primary and a replica, watched by 3 sentinels (quorum 2), on loopback.

    Sentinels mark the primary down after 2 s without an answer; a failover then takes
    about 3 to 5 s. (With 1 s, a server that a busy shared machine stalled for a second
    was failed over again, right after the failover under test.) ``primary`` and
    ``replica`` are the processes as started: after a failover, :meth:`current_primary`
    names the one Sentinel promoted.
    """

    primary: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess] = field(default_factory=list)

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0" + (f"?{query}" if query else "")

    @property
    def servers(self) -> list[RedisProcess]:
        return [self.primary, self.replica]

    def primary_ports(self) -> list[int]:
        """The primary's port as each running sentinel names it."""
        ports = []
        for sentinel in self.sentinels:
            if sentinel.alive:
                with sentinel.client() as client:
                    reply = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE)
                ports.append(int(reply[1]))
        return ports

    def primary_port(self) -> int:
        ports = self.primary_ports()
        if not ports:
            raise RuntimeError("no sentinel is running")
        return ports[0]

    def current_primary(self) -> RedisProcess:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def current_replica(self) -> RedisProcess:
        port = self.primary_port()
        return next(s for s in self.servers if s.port != port)

    def start(self, directory: Path) -> None:
        self.primary.start()
        self.replica.start()
        wait_until(lambda: replicas_online(self.primary, 1), 30, "the replica is in sync")
        for i in range(3):
            sentinel_dir = directory / f"sentinel{i}"
            sentinel_dir.mkdir(parents=True, exist_ok=True)
            config = sentinel_dir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 2000\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 10000\n"
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
            )
            sentinel = RedisProcess(free_port(), sentinel_dir, ["--sentinel"], config=config)
            self.sentinels.append(sentinel)
            sentinel.start()
        wait_until(self._sentinels_ready, 30, "the sentinels know each other and the replica")

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state: dict[str, Any] = client.sentinel_master(SENTINEL_SERVICE)
            if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                return False
        return True

    def wait_promoted(self, old: RedisProcess, timeout: float = 30) -> RedisProcess:
        """Wait until the sentinels promoted the other server and it accepts writes."""
        new = next(s for s in self.servers if s is not old)

        def promoted() -> bool:
            if self.primary_port() != new.port:
                return False
            with new.client() as client:
                return bool(client.execute_command("ROLE")[0] == b"master")

        wait_until(promoted, timeout, "Sentinel promoted the replica")
        return new

    def wait_settled(self, timeout: float = 30) -> RedisProcess:
        """Wait until every running sentinel names one primary and it accepts writes (whichever
        server that is: a second failover may have followed the one a test caused)."""
        settled: list[RedisProcess] = []

        def agreed() -> bool:
            ports = set(self.primary_ports())
            if len(ports) != 1:
                return False
            primary = next(s for s in self.servers if s.port in ports)
            with primary.client() as client:
                if client.execute_command("ROLE")[0] != b"master":
                    return False
            settled[:] = [primary]
            return True

        wait_until(agreed, timeout, "the sentinels agree on a primary that accepts writes")
        return settled[0]

    def restart_as_replica(self, old: RedisProcess) -> None:
        """Restart a killed server as a replica of the current primary, as a supervisor with
        the rewritten config would. Started as a primary instead, it would stay an empty
        primary until Sentinel converted it, and a second failover in that window could
        pick it and lose every write."""
        primary = self.current_primary()
        assert primary is not old, "restart_as_replica before the failover"
        args = list(old.args)
        if "--replicaof" in args:
            at = args.index("--replicaof")
            del args[at : at + 3]
        old.args = [*args, "--replicaof", "127.0.0.1", str(primary.port)]
        old.start()

    def flush(self) -> None:
        with self.current_primary().client() as client:
            client.flushall()
            client.execute_command("WAIT", 1, 5000)

    def stop(self) -> None:
        for process in [*self.sentinels, self.primary, self.replica]:
            process.stop()


def start_sentinel(directory: Path) -> SentinelProcesses:
    primary = RedisProcess(free_port(), directory / "primary", ["--appendonly", "no", *REPLICATION_ARGS])
    port = free_port()
    replica = RedisProcess(
        port,
        directory / "replica",
        ["--appendonly", "no", *REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(primary.port)],
    )
    setup = SentinelProcesses(primary, replica)
    try:
        setup.start(directory)
    except BaseException:
        setup.stop()
        raise
    return setup


@dataclass
class ReplicatedCluster:
    """A Redis Cluster of 3 primaries, each with a replica, on loopback (node timeout 1.5 s)."""

    nodes: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        assert REDIS_CLI is not None
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI, "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas", "1", "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )  # fmt: skip
        wait_until(self._ready, 60, "the cluster is ok and every replica is in sync")

    def _ready(self) -> bool:
        if not all(RedisClusterProcesses._ok(n) for n in self.nodes if n.alive):
            return False
        primaries = [n for n in self.nodes if n.alive and self.role(n) == "master"]
        return len(primaries) == 3 and all(replicas_online(p, 1) for p in primaries)

    @staticmethod
    def role(node: RedisProcess) -> str:
        with node.client() as client:
            role: bytes = client.execute_command("ROLE")[0]
        return role.decode()

    def owner(self, key: str) -> RedisProcess:
        """The primary that holds ``key``'s slot (asked of a live node)."""
        node = next(n for n in self.nodes if n.alive)
        with node.client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no node holds slot {slot}")

    def replica_of(self, primary: RedisProcess) -> RedisProcess:
        info = primary.info("replication")
        port = int(info["slave0"]["port"])
        return next(n for n in self.nodes if n.port == port)

    def wait_promoted(self, replica: RedisProcess, timeout: float = 30) -> None:
        """Wait until ``replica`` is a primary and every live node reports cluster_state:ok."""

        def promoted() -> bool:
            return self.role(replica) == "master" and all(
                RedisClusterProcesses._ok(n) for n in self.nodes if n.alive
            )

        wait_until(promoted, timeout, "the replica was promoted")

    def stop(self) -> None:
        for node in self.nodes:
            node.resume()
            node.stop()


def cluster_nodes(directory: Path, count: int, node_timeout_ms: int, *args: str) -> list[RedisProcess]:
    """``count`` cluster-enabled redis-server processes (not started) under ``directory``."""
    return [
        RedisProcess(
            free_port(cluster=True),
            directory / f"node{i}",
            [
                "--appendonly",
                "no",
                *args,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / f"node{i}" / "nodes.conf"),
                "--cluster-node-timeout",
                str(node_timeout_ms),
            ],
        )
        for i in range(count)
    ]


class _Processes(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


C = TypeVar("C", bound=_Processes)


def started(cluster: C) -> C:
    """``cluster`` once started; stopped again if it does not come up."""
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_replicated_cluster(directory: Path) -> ReplicatedCluster:
    return started(ReplicatedCluster(cluster_nodes(directory, 6, 1500, *REPLICATION_ARGS)))


def start_redis(directory: Path, *args: str) -> RedisProcess:
    server = RedisProcess(free_port(), directory, ["--appendonly", "no", *args])
    server.start()
    return server


def start_cluster(directory: Path) -> RedisClusterProcesses:
    return started(RedisClusterProcesses(cluster_nodes(directory, 3, 2000)))


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    skip_without_redis()
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    skip_without_redis()
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelProcesses]:
    """A primary, a replica and 3 sentinels for the whole session (never failed over)."""
    skip_without_redis()
    setup = start_sentinel(tmp_path_factory.mktemp("redis-sentinel"))
    yield setup
    setup.stop()


@pytest.fixture
def redis_sentinel_url(redis_sentinel_session: SentinelProcesses) -> str:
    """The session's Sentinel store URL, flushed; every write waits for the replica."""
    redis_sentinel_session.flush()
    return redis_sentinel_session.url("min_replicas=1&replica_timeout_ms=2000")


@pytest.fixture
def sentinel_factory(tmp_path: Path) -> Iterator[Callable[[], SentinelProcesses]]:
    """Start a dedicated primary, replica and 3 sentinels (for tests that fail them over)."""
    skip_without_redis()
    started: list[SentinelProcesses] = []

    def start() -> SentinelProcesses:
        setup = start_sentinel(tmp_path / f"sentinel{len(started)}")
        started.append(setup)
        return setup

    yield start
    for setup in started:
        for server in setup.servers:
            server.resume()
        setup.stop()


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[ReplicatedCluster]:
    """A dedicated Redis Cluster of 3 primaries each with a replica (for failover tests)."""
    skip_without_redis()
    cluster = start_replicated_cluster(tmp_path / "replicated-cluster")
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_session: RedisProcess) -> str:
    """The URL of the session's redis-server, flushed."""
    with redis_session.client() as client:
        client.flushall()
    return redis_session.url


@pytest.fixture
def redis_cluster_url(redis_cluster_session: RedisClusterProcesses) -> str:
    """The URL of the session's Redis Cluster, flushed."""
    redis_cluster_session.flush()
    return redis_cluster_session.url


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Start dedicated redis-servers (for tests that restart or kill one); stopped at the end."""
    skip_without_redis()
    started: list[RedisProcess] = []

    def start(*args: str) -> RedisProcess:
        server = start_redis(tmp_path / f"redis{len(started)}", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def dump_everything(clients: list[redis.Redis]) -> bytes:
    """Every key and value of every node, raw: SCAN + DUMP, plus each value in readable form."""
    out = bytearray()
    for node in clients:
        client: Any = node  # redis-py types replies as bytes | str; decode_responses is off
        for key in client.scan_iter(count=1000):
            out += key + b"\n"
            dumped = client.dump(key)
            if dumped is not None:
                out += dumped
            kind = client.type(key)
            if kind == b"string":
                out += client.get(key) or b""
            elif kind == b"hash":
                for name, value in client.hgetall(key).items():
                    out += name + b"=" + value + b"\n"
            elif kind == b"stream":
                for entry_id, fields in client.xrange(key):
                    out += entry_id + b"".join(k + b"=" + v for k, v in fields.items()) + b"\n"
            elif kind == b"zset":
                for member, score in client.zrange(key, 0, -1, withscores=True):
                    out += member + repr(score).encode() + b"\n"
            elif kind == b"set":
                out += b"\n".join(client.smembers(key))
            elif kind == b"list":
                out += b"\n".join(client.lrange(key, 0, -1))
    return bytes(out)
