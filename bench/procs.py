"""Processes of the end-to-end scenarios: the real server, the echo server, the load generator.

Each runs as its own process (``python -m ...``) on 127.0.0.1, so the server is measured
as an operator runs it and the load generator's work is not billed to the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bench.report import REPO

START_TIMEOUT = 900.0  # loading a 10M registry takes a while on a busy 2-core machine


@cache
def serve_flags() -> frozenset[str]:
    """The flags ``discovery serve`` has right now (options are added as the service grows)."""
    out = subprocess.run(
        [sys.executable, "-m", "discovery", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env=_env(),
    ).stdout
    return frozenset(word.rstrip(",") for word in out.split() if word.startswith("--"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return {k: v for k, v in env.items() if not k.startswith("DISCOVERY_")}


@dataclass
class Auth:
    """How the load generator authenticates: metadata to send, and what the JSON should say."""

    mode: str
    client_metadata: tuple[tuple[str, str], ...]
    backend_metadata: tuple[tuple[str, str], ...]
    serve_args: tuple[str, ...] = ()


def auth_for(data_dir: Path, user_id: str = "bench-user") -> Auth:
    """Real JWTs (HS256, the service's default) minted with the service's own code when it has
    JWT authentication; otherwise the development header."""
    flags = serve_flags()
    if "--auth" in flags:
        try:
            from discovery.app.credentials import mint_token, signing_key
            from discovery.config import ServerConfig
        except ImportError:
            pass
        else:
            config = ServerConfig.from_options(data_dir=data_dir)
            key = signing_key(config)  # creates DATA_DIR/jwt.secret (0600) as the server would
            client = mint_token(config.auth.jwt_algorithm, key, user_id, 24 * 3600.0)
            backend = mint_token(
                config.auth.jwt_algorithm, key, "bench-backend", 24 * 3600.0, scope="directory:write"
            )
            return Auth(
                mode=f"jwt ({config.auth.jwt_algorithm} bearer token, verified on every call)",
                client_metadata=(("authorization", f"Bearer {client}"),),
                backend_metadata=(("authorization", f"Bearer {backend}"),),
                serve_args=("--auth", "jwt"),
            )
    return Auth(
        mode="dev (x-discovery-user-id header; the service had no JWT authentication)",
        client_metadata=(("x-discovery-user-id", user_id),),
        backend_metadata=(),
        serve_args=("--auth", "dev") if "--auth" in flags else (),
    )


def unthrottled_args() -> tuple[list[str], list[str]]:
    """Flags that turn off per-user quota and rate limits (one benchmark user would hit them
    at once), and a note for each one applied."""
    wanted = {
        "--quota-capacity": ("0", "per-user quota of new contacts off (--quota-capacity 0)"),
        "--rate-limit-burst": ("0", "per-user request rate limit off (--rate-limit-burst 0)"),
    }
    flags = serve_flags()
    args: list[str] = []
    notes: list[str] = []
    for flag, (value, note) in wanted.items():
        if flag in flags:
            args += [flag, value]
            notes.append(note)
    return args, notes


def read_status_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process, in KiB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                out[name] = int(rest.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (``/proc/<pid>/stat``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Process:
    """A child process that announces readiness by writing its port to a file."""

    args: Sequence[str]
    workdir: Path
    name: str
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    def start(self, timeout: float = START_TIMEOUT) -> int:
        port_file = self.workdir / f"{self.name}.port"
        port_file.unlink(missing_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*self.args, "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=_env(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if port_file.exists() and port_file.read_text().strip():
                self.port = int(port_file.read_text().strip())
                return self.port
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not start within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def memory_kib(self) -> dict[str, int]:
        return read_status_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """JSON log records of the process with this ``event`` field."""
        found: list[dict[str, Any]] = []
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if event in line and line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if record.get("event") == event:
                            found.append(record)
        return found

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    try:
        process.start()
        yield process
    finally:
        process.stop()


def discovery_server(data_dir: Path, workdir: Path, auth: Auth, extra: Sequence[str] = ()) -> Process:
    return Process(
        [
            sys.executable,
            "-m",
            "discovery",
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "INFO",
            "--grace-seconds",
            "1",
            *auth.serve_args,
            *extra,
        ],
        workdir,
        "server",
    )


def echo_server(workdir: Path, response_bytes: int) -> Process:
    return Process(
        [sys.executable, "-m", "bench.echo_server", "--response-bytes", str(response_bytes)],
        workdir,
        "echo",
    )


def run_json(args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run a helper process (the load generator) and parse the JSON it prints last."""
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
