"""Real redis-server processes for the tests: one server, and a 3-master Redis Cluster.

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
from typing import Any

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

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
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
            except redis.exceptions.RedisError:
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

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


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


def start_redis(directory: Path, *args: str) -> RedisProcess:
    server = RedisProcess(free_port(), directory, ["--appendonly", "no", *args])
    server.start()
    return server


def start_cluster(directory: Path) -> RedisClusterProcesses:
    cluster = RedisClusterProcesses(
        [
            RedisProcess(
                free_port(cluster=True),
                directory / f"node{i}",
                [
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(directory / f"node{i}" / "nodes.conf"),
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for i in range(3)
        ]
    )
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


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
