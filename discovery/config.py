"""Server configuration: every option is a command-line flag and a DISCOVERY_* variable.

``ServerConfig`` declares each option once, as a field: the flag (``--field-name``), the
environment variable (``DISCOVERY_FIELD_NAME``), the default, the help text and the check
its value must pass (``metadata["validate"]``, run when the config is built, so a bad
value is refused at start with a message naming the flag). tests/test_docs.py checks that
the README's configuration table lists every field with its default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from discovery.api.jwt_auth import ALGORITHMS as JWT_ALGORITHMS
from discovery.core.directory import DirectoryLimits
from discovery.core.joins import JoinPolicy
from discovery.core.model import PrivacySettings
from discovery.core.quota import QuotaPolicy

# The domain's policies declare the defaults; the options below take theirs from them.
_LIMITS, _JOINS, _QUOTA, _SETTINGS = DirectoryLimits(), JoinPolicy(), QuotaPolicy(), PrivacySettings()

AUTH_MODES = ("jwt", "dev")
SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ANNOUNCE_MODES = ("off", "mutual", "everyone")

#: A check of one option's value: raises ValueError with a message naming ``flag``.
Check = Callable[[str, Any], None]


def positive(flag: str, value: Any) -> None:
    if not value > 0:
        raise ValueError(f"{flag} must be positive, not {value!r}")


def non_negative(flag: str, value: Any) -> None:
    if not value >= 0:
        raise ValueError(f"{flag} must be 0 or more, not {value!r}")


def one_of(choices: tuple[str, ...], *, upper: bool = False, what: str = "") -> Check:
    def check(flag: str, value: Any) -> None:
        if (value.upper() if upper else value) not in choices:
            raise ValueError(f"{what or 'unknown ' + flag} {value!r}; use one of {', '.join(choices)}")

    return check


def _help(text: str, validate: Check | None = None) -> dict[str, Any]:
    return {"help": text} if validate is None else {"help": text, "validate": validate}


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
        default=_LIMITS.max_hashes_per_request,
        metadata=_help("cap on contact hashes in one Discover request", positive),
    )
    max_import_batch: int = field(
        default=_LIMITS.max_import_batch, metadata=_help("cap on users in one ImportUsers message", positive)
    )
    max_receive_message_bytes: int = field(
        default=4 * 1024 * 1024, metadata=_help("largest request message accepted", positive)
    )
    default_discoverable: bool = field(
        default=_SETTINGS.discoverable, metadata={"help": "initial 'discoverable' of a new user"}
    )
    default_announce_mode: str = field(
        default=_SETTINGS.announce_mode.name.lower(),
        metadata=_help(
            "who is told when a new user joins: off, mutual (only people they have) or everyone",
            one_of(ANNOUNCE_MODES),
        ),
    )
    default_announce_number_change: bool = field(
        default=_SETTINGS.announce_number_change,
        metadata={"help": "initial 'announce_number_change' of a new user (a number change announces)"},
    )
    default_notify_on_join: bool = field(
        default=_SETTINGS.notify_on_join, metadata={"help": "initial 'notify_on_join' of a new user (opt-in)"}
    )
    sqlite_synchronous: str = field(
        default="NORMAL",
        metadata=_help(
            "SQLite synchronous mode: NORMAL survives process crashes; FULL also power loss",
            one_of(SQLITE_SYNCHRONOUS, upper=True),
        ),
    )
    feed_retention_seconds: float = field(
        default=3600.0,
        metadata=_help("how long registry changes stay in the change feed for followers", positive),
    )
    grace_seconds: float = field(
        default=10.0, metadata=_help("how long in-flight calls may take to finish on SIGTERM", non_negative)
    )
    keepalive_seconds: float = field(
        default=60.0,
        metadata=_help(
            "ping idle connections this often, so streams of vanished clients are released", positive
        ),
    )
    shutdown_delay_seconds: float = field(
        default=0.0,
        metadata=_help(
            "on SIGTERM, report NOT_SERVING and keep serving this long before draining", non_negative
        ),
    )
    max_connection_age_seconds: float = field(
        default=1800.0,
        metadata=_help("recycle connections after this long (0: never); streams resume", non_negative),
    )
    max_connection_age_grace_seconds: float = field(
        default=30.0, metadata=_help("time calls on a recycled connection get to finish", non_negative)
    )
    # -- operations (see README, "Operations") ------------------------------------------------------
    metrics_listen: str = field(
        default="", metadata={"help": "host:port for Prometheus /metrics over HTTP (empty: off)"}
    )
    store_check_seconds: float = field(
        default=1.0,
        metadata=_help("how often the store is pinged; health is NOT_SERVING while it fails", positive),
    )
    # -- join notifications (see README, "Join notifications") -------------------------------------
    join_watch_ttl_seconds: float = field(
        default=_JOINS.watch_ttl,
        metadata=_help(
            "how long a watch on an unmatched contact lives; uploading it again refreshes it", positive
        ),
    )
    join_watch_cap: int = field(
        default=_JOINS.watch_cap,
        metadata=_help("watches per user; beyond it the oldest watches are dropped", positive),
    )
    join_inbox_ttl_seconds: float = field(
        default=_JOINS.inbox_ttl,
        metadata=_help("how long an undelivered or unacknowledged join event is kept", positive),
    )
    join_sweep_interval_seconds: float = field(
        default=_JOINS.sweep_interval,
        metadata=_help("how often expired watches and events are deleted from the store", positive),
    )
    join_page_size: int = field(
        default=_JOINS.page_size,
        metadata=_help("events per stream message while catching up (bounds memory per stream)", positive),
    )
    join_max_streams: int = field(
        default=_JOINS.max_subscribers,
        metadata=_help("live SubscribeJoins streams one instance accepts", positive),
    )
    join_release_jitter_seconds: float = field(
        default=_JOINS.release_jitter,
        metadata=_help(
            "join events become deliverable after a random delay of up to this long", non_negative
        ),
    )
    join_max_streams_per_user: int = field(
        default=_JOINS.max_streams_per_user,
        metadata=_help("live SubscribeJoins streams one user may hold on one instance", positive),
    )
    # -- authentication, TLS, quotas (see docs/threat-model.md) ------------------------------------
    auth: str = field(
        default="jwt",
        metadata=_help(
            "jwt (bearer tokens) or dev (x-discovery-user-id header; loopback only)", one_of(AUTH_MODES)
        ),
    )
    jwt_algorithm: str = field(
        default="HS256",
        metadata=_help(
            "the one accepted JWT algorithm: HS256, EdDSA or ES256",
            one_of(JWT_ALGORITHMS, what="unsupported JWT algorithm"),
        ),
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
        default=5.0, metadata=_help("clock skew tolerated on 'exp', 'nbf' and 'iat'", non_negative)
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
        default=16 * 1024, metadata=_help("largest request metadata (headers) accepted", positive)
    )
    quota_capacity: int = field(
        default=_QUOTA.capacity,
        metadata=_help("new contacts a user may look up in a burst (0: no quota)", non_negative),
    )
    quota_refill_per_hour: float = field(
        default=_QUOTA.refill_per_hour,
        metadata=_help("new contacts per hour that the quota refills", non_negative),
    )
    rate_limit_burst: int = field(
        default=_QUOTA.rate_burst,
        metadata=_help("Discover requests a user may make in a burst (0: no limit)", non_negative),
    )
    rate_limit_per_minute: float = field(
        default=_QUOTA.rate_per_minute,
        metadata=_help("Discover requests per minute that the rate limit refills", non_negative),
    )
    previous_token_ttl_seconds: float = field(
        default=_QUOTA.token_ttl,
        metadata=_help("how long a Discover token makes its contacts free on the next request", positive),
    )
    log_level: str = field(default="INFO", metadata=_help("log level", one_of(LOG_LEVELS, upper=True)))
    port_file: str = field(
        default="",
        metadata={"help": "write the bound port to this file once serving (for supervisors and tests)"},
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("validate")
            if check is not None:
                check("--" + f.name.replace("_", "-"), getattr(self, f.name))

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
