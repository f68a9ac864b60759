"""Server configuration: every option is a command-line flag and a DISCOVERY_* variable.

One table (OPTIONS) declares each option once; the flag, the environment variable,
the default and the README's configuration reference all come from it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

AUTH_MODES = ("jwt", "dev")


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r}")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "discovery"


@dataclass
class ServerConfig:
    listen: str = field(
        default="127.0.0.1:50051", metadata={"help": "address to listen on (host:port; port 0 picks one)"}
    )
    data_dir: Path = field(
        default_factory=default_data_dir,
        metadata={"help": "where the embedded store and the server secret live"},
    )
    store: str = field(
        default="",
        metadata={
            "help": "store URL: sqlite:///path.db, redis://host:port/0 or redis+cluster://host:port,... "
            "(default: DATA_DIR/discovery.db)"
        },
    )
    secret_file: str = field(
        default="",
        metadata={
            "help": "server secret file, made with mode 0600 on first start (default: DATA_DIR/server.secret)"
        },
    )
    secret_env: str = field(
        default="",
        metadata={
            "help": "name of an environment variable holding the server secret (hex); overrides secret_file"
        },
    )
    max_hashes_per_request: int = field(
        default=5000, metadata={"help": "cap on contact hashes in one Discover request"}
    )
    max_import_batch: int = field(
        default=10_000, metadata={"help": "cap on users in one ImportUsers message"}
    )
    max_receive_message_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"help": "largest request message accepted"}
    )
    default_discoverable: bool = field(
        default=True, metadata={"help": "initial 'discoverable' of a new user"}
    )
    default_announce_join: bool = field(
        default=True, metadata={"help": "initial 'announce_join' of a new user"}
    )
    default_notify_on_join: bool = field(
        default=False, metadata={"help": "initial 'notify_on_join' of a new user (opt-in)"}
    )
    sqlite_synchronous: str = field(
        default="NORMAL",
        metadata={"help": "SQLite synchronous mode: NORMAL survives process crashes; FULL also power loss"},
    )
    feed_retention_seconds: float = field(
        default=3600.0, metadata={"help": "how long registry changes stay in the change feed for followers"}
    )
    grace_seconds: float = field(
        default=10.0, metadata={"help": "how long in-flight calls may take to finish on SIGTERM"}
    )
    keepalive_seconds: float = field(
        default=60.0,
        metadata={"help": "ping idle connections this often, so streams of vanished clients are released"},
    )
    shutdown_delay_seconds: float = field(
        default=0.0,
        metadata={"help": "on SIGTERM, report NOT_SERVING and keep serving this long before draining"},
    )
    max_connection_age_seconds: float = field(
        default=1800.0,
        metadata={"help": "recycle connections after this long (0: never); streams resume"},
    )
    max_connection_age_grace_seconds: float = field(
        default=30.0, metadata={"help": "time calls on a recycled connection get to finish"}
    )
    # -- operations (see README, "Operations") ------------------------------------------------------
    metrics_listen: str = field(
        default="", metadata={"help": "host:port for Prometheus /metrics over HTTP (empty: off)"}
    )
    store_check_seconds: float = field(
        default=1.0, metadata={"help": "how often the store is pinged; health is NOT_SERVING while it fails"}
    )
    # -- join notifications (see README, "Join notifications") -------------------------------------
    join_watch_ttl_seconds: float = field(
        default=30 * 86400.0,
        metadata={"help": "how long a watch on an unmatched contact lives; uploading it again refreshes it"},
    )
    join_watch_cap: int = field(
        default=5000, metadata={"help": "watches per user; beyond it the oldest watches are dropped"}
    )
    join_inbox_ttl_seconds: float = field(
        default=14 * 86400.0,
        metadata={"help": "how long an undelivered or unacknowledged join event is kept"},
    )
    join_sweep_interval_seconds: float = field(
        default=60.0, metadata={"help": "how often expired watches and events are deleted from the store"}
    )
    join_page_size: int = field(
        default=100,
        metadata={"help": "events per stream message while catching up (bounds memory per stream)"},
    )
    join_max_streams: int = field(
        default=20_000, metadata={"help": "live SubscribeJoins streams one instance accepts"}
    )
    join_max_streams_per_user: int = field(
        default=16, metadata={"help": "live SubscribeJoins streams one user may hold on one instance"}
    )
    # -- authentication, TLS, quotas (see docs/threat-model.md) ------------------------------------
    auth: str = field(
        default="jwt",
        metadata={"help": "jwt (bearer tokens) or dev (x-discovery-user-id header; loopback only)"},
    )
    jwt_algorithm: str = field(
        default="HS256", metadata={"help": "the one accepted JWT algorithm: HS256, EdDSA or ES256"}
    )
    jwt_secret_file: str = field(
        default="",
        metadata={
            "help": "HS256 shared secret, made with mode 0600 on first start (default: DATA_DIR/jwt.secret)"
        },
    )
    jwt_secret_env: str = field(
        default="",
        metadata={
            "help": "name of an environment variable holding the HS256 secret (hex); overrides the file"
        },
    )
    jwt_public_key: str = field(
        default="", metadata={"help": "PEM public key of the account service (EdDSA or ES256)"}
    )
    jwt_issuer: str = field(default="", metadata={"help": "required 'iss' claim (empty: not checked)"})
    jwt_audience: str = field(default="", metadata={"help": "required 'aud' claim (empty: not checked)"})
    jwt_leeway_seconds: float = field(
        default=5.0, metadata={"help": "clock skew tolerated on 'exp', 'nbf' and 'iat'"}
    )
    tls_cert: str = field(default="", metadata={"help": "PEM server certificate chain (enables TLS)"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of the server certificate"})
    tls_client_ca: str = field(
        default="",
        metadata={"help": "PEM CA of client certificates; every connection must then present one (mTLS)"},
    )
    tls_backend_names: str = field(
        default="",
        metadata={
            "help": "comma-separated client certificate names (CN or DNS SAN) that act as backends "
            "(empty: every certificate the client CA verifies)"
        },
    )
    max_metadata_bytes: int = field(
        default=16 * 1024, metadata={"help": "largest request metadata (headers) accepted"}
    )
    quota_capacity: int = field(
        default=50_000, metadata={"help": "new contacts a user may look up in a burst (0: no quota)"}
    )
    quota_refill_per_hour: float = field(
        default=6.0, metadata={"help": "new contacts per hour that the quota refills"}
    )
    rate_limit_burst: int = field(
        default=30, metadata={"help": "Discover requests a user may make in a burst (0: no limit)"}
    )
    rate_limit_per_minute: float = field(
        default=10.0, metadata={"help": "Discover requests per minute that the rate limit refills"}
    )
    previous_token_ttl_seconds: float = field(
        default=30 * 86400.0,
        metadata={"help": "how long a Discover token makes its contacts free on the next request"},
    )
    log_level: str = field(default="INFO", metadata={"help": "log level"})
    port_file: str = field(
        default="",
        metadata={"help": "write the bound port to this file once serving (for supervisors and tests)"},
    )

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.data_dir / 'discovery.db'}"

    @property
    def secret_path(self) -> Path:
        return Path(self.secret_file) if self.secret_file else self.data_dir / "server.secret"

    @property
    def jwt_secret_path(self) -> Path:
        return Path(self.jwt_secret_file) if self.jwt_secret_file else self.data_dir / "jwt.secret"


def _parser_type(kind: Any) -> Callable[[str], Any]:
    if kind in (bool, "bool"):
        return _bool
    if kind in (int, "int"):
        return int
    if kind in (float, "float"):
        return float
    if kind in (Path, "Path"):
        return Path
    return str


def env_name(option: str) -> str:
    return "DISCOVERY_" + option.upper()


def add_server_options(
    parser: argparse.ArgumentParser,
    env: Mapping[str, str] | None = None,
    only: Collection[str] | None = None,
) -> None:
    """Flags for every ServerConfig field (or those in ``only``), defaulting to DISCOVERY_*
    variables, then to the built-in."""
    env = os.environ if env is None else env
    defaults = ServerConfig()
    for f in fields(ServerConfig):
        if only is not None and f.name not in only:
            continue
        convert = _parser_type(f.type)
        raw = env.get(env_name(f.name))
        default = convert(raw) if raw is not None else getattr(defaults, f.name)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=convert,
            default=default,
            metavar=f.name.upper(),
            help=f"{f.metadata.get('help', '')} [{env_name(f.name)}; default {getattr(defaults, f.name)}]",
        )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The config of the parsed flags; options the parser did not offer keep their defaults."""
    return ServerConfig(
        **{f.name: getattr(args, f.name) for f in fields(ServerConfig) if hasattr(args, f.name)}
    )
