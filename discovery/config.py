"""Server configuration: declared once, nested per capability.

``ServerConfig`` holds one group per capability. The domain's policies are groups as they
are (``quota: QuotaPolicy``, ``joins: JoinPolicy``, ``limits: DirectoryLimits``, and
``defaults: PrivacySettings``, the settings of a new user); the groups below hold the rest.
Every option is a field made with ``core.options.option``: its default, help text and
check are declared there, once. Its name (the field's, or the one the declaration gives)
makes the flag ``--name-with-dashes`` and the variable ``DISCOVERY_NAME``; the checks run
when a group is built, so a bad value is refused at start with a message naming the flag.

``OPTIONS`` lists every option, flat; ``ServerConfig.from_options(**flat)`` builds a config
from flat names (the CLI and the tests use it); tests/test_docs.py checks the
table of docs/configuration.md against ``OPTIONS``. To add an option, declare one ``option(...)`` field
in its group; to add a group, declare an ``Options`` dataclass and one field of
``ServerConfig`` below.
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

from discovery.api.jwt_auth import ALGORITHMS as JWT_ALGORITHMS
from discovery.core.directory import DirectoryLimits
from discovery.core.joins import JoinPolicy
from discovery.core.model import PrivacySettings
from discovery.core.options import (
    Options,
    between,
    check_options,
    flag,
    is_option,
    non_negative,
    one_of,
    option,
    option_name,
    positive,
)
from discovery.core.quota import QuotaPolicy
from discovery.private_scheme.bucket import DEFAULT_BUCKET_USERS
from discovery.private_scheme.derive import DEFAULT_ID_PAD

AUTH_MODES = ("jwt", "dev")
SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "discovery"


@dataclass(frozen=True, slots=True)
class NetworkOptions(Options):
    """The gRPC listener, its message limits and the lifecycle of its connections."""

    listen: str = option("127.0.0.1:50051", "address to listen on (host:port; port 0 picks one)")
    max_receive_message_bytes: int = option(
        4 * 1024 * 1024, "largest request message accepted", check=positive
    )
    max_metadata_bytes: int = option(16 * 1024, "largest request metadata (headers) accepted", check=positive)
    keepalive_seconds: float = option(
        60.0, "ping idle connections this often, so streams of vanished clients are released", check=positive
    )
    max_connection_age_seconds: float = option(
        1800.0, "recycle connections after this long (0: never); streams resume", check=non_negative
    )
    max_connection_age_grace_seconds: float = option(
        30.0, "time calls on a recycled connection get to finish", check=non_negative
    )
    grace_seconds: float = option(
        10.0, "how long in-flight calls may take to finish on SIGTERM", check=non_negative
    )
    shutdown_delay_seconds: float = option(
        0.0, "on SIGTERM, report NOT_SERVING and keep serving this long before draining", check=non_negative
    )
    port_file: str = option("", "write the bound port to this file once serving (for supervisors and tests)")


@dataclass(frozen=True, slots=True)
class StoreOptions(Options):
    """Where the registry lives and how it is kept."""

    url: str = option(
        "",
        "store URL: sqlite:///path.db, redis://host:port/0 or redis+cluster://host:port,... "
        "(default: DATA_DIR/discovery.db)",
        name="store",
    )
    sqlite_synchronous: str = option(
        "NORMAL",
        "SQLite synchronous mode: NORMAL survives process crashes; FULL also power loss",
        check=one_of(SQLITE_SYNCHRONOUS, upper=True),
    )
    feed_retention_seconds: float = option(
        3600.0, "how long registry changes stay in the change feed for followers", check=positive
    )
    check_seconds: float = option(
        1.0,
        "how often the store is pinged; health is NOT_SERVING while it fails",
        name="store_check_seconds",
        check=positive,
    )
    redis_min_replicas: int = option(
        0,
        "Redis: every acknowledged write waits until this many replicas have it (0: asynchronous "
        "replication); the store URL's min_replicas wins",
        check=non_negative,
    )
    redis_replica_timeout_seconds: float = option(
        1.0,
        "Redis: how long a write waits for redis_min_replicas replicas before failing UNAVAILABLE; "
        "the store URL's replica_timeout_ms wins",
        check=positive,
    )


@dataclass(frozen=True, slots=True)
class AuthOptions(Options):
    """Who the caller is: bearer tokens (JWT) or, on loopback only, a trusted header."""

    mode: str = option(
        "jwt",
        "jwt (bearer tokens) or dev (x-discovery-user-id header; loopback only)",
        name="auth",
        check=one_of(AUTH_MODES),
    )
    jwt_algorithm: str = option(
        "HS256",
        "the one accepted JWT algorithm: HS256, EdDSA or ES256",
        check=one_of(JWT_ALGORITHMS, what="unsupported JWT algorithm"),
    )
    jwt_secret_file: str = option(
        "", "HS256 shared secret, made with mode 0600 on first start (default: DATA_DIR/jwt.secret)"
    )
    jwt_secret_env: str = option(
        "", "name of an environment variable holding the HS256 secret (hex); overrides the file"
    )
    jwt_public_key: str = option("", "PEM public key of the account service (EdDSA or ES256)")
    jwt_issuer: str = option("", "required 'iss' claim (empty: not checked)")
    jwt_audience: str = option("", "required 'aud' claim (empty: not checked)")
    jwt_leeway_seconds: float = option(
        5.0, "clock skew tolerated on 'exp', 'nbf' and 'iat'", check=non_negative
    )


@dataclass(frozen=True, slots=True)
class TlsOptions(Options):
    """TLS of the listener, and mTLS when a client CA is given."""

    cert: str = option("", "PEM server certificate chain (enables TLS)", name="tls_cert")
    key: str = option("", "PEM private key of the server certificate", name="tls_key")
    client_ca: str = option(
        "",
        "PEM CA of client certificates; every connection must then present one (mTLS)",
        name="tls_client_ca",
    )
    backend_names: str = option(
        "",
        "comma-separated client certificate names (CN or DNS SAN) that act as backends "
        "(empty: every certificate the client CA verifies)",
        name="tls_backend_names",
    )


@dataclass(frozen=True, slots=True)
class OpsOptions(Options):
    """What operators watch: metrics and logs."""

    metrics_listen: str = option("", "host:port for Prometheus /metrics over HTTP (empty: off)")
    log_level: str = option("INFO", "log level", check=one_of(LOG_LEVELS, upper=True))


@dataclass(frozen=True, slots=True)
class TracingOptions(Options):
    """Traces: off unless a collector is named (one group of the server's configuration)."""

    otlp_endpoint: str = option(
        "", "OTLP/gRPC collector for traces, http:// or https:// (empty: tracing off)"
    )
    trace_sample_ratio: float = option(
        1.0, "share of new traces sampled; a caller's traceparent sampled flag wins", check=between(0.0, 1.0)
    )


@dataclass(frozen=True, slots=True)
class PrivateOptions(Options):
    """Private discovery mode (docs/private-mode.md): off unless turned on."""

    enabled: bool = option(
        False,
        "serve PrivateDiscoveryService and keep each registered user's private entry",
        name="private_mode",
    )
    jitter_seconds: float = option(
        30.0,
        "release private-mode changes after a random delay of up to this",
        name="private_jitter_seconds",
        check=non_negative,
    )
    id_pad: int = option(
        DEFAULT_ID_PAD,
        "the padded length of a user id in a sealed id (1 to 255 bytes)",
        name="private_id_pad",
        check=between(1, 255),
    )
    snapshot_ids_max: int = option(
        16_384,
        "up to this many users, the private snapshot carries the sealed ids",
        name="private_snapshot_ids_max",
        check=non_negative,
    )
    bucket_min_users: int = option(
        DEFAULT_BUCKET_USERS,
        "k: registered users in each bucket of the range grid, at least (the k-anonymity of a fetch)",
        name="private_bucket_min_users",
        check=positive,
    )
    key_epoch: int = option(
        1,
        "the OPRF key epoch served and published by GetPrivateParams (docs/private-mode.md, Key epochs)",
        name="private_key_epoch",
        check=positive,
    )
    next_key_epoch: int = option(
        0,
        "the key epoch being prepared: registrations and imports also write its records (0: none)",
        name="private_next_key_epoch",
        check=non_negative,
    )

    def __post_init__(self) -> None:
        check_options(self)  # (Options.__post_init__: a slots dataclass cannot call super() here)
        if self.next_key_epoch == self.key_epoch:
            raise ValueError(
                f"--private-next-key-epoch {self.next_key_epoch} is the served epoch: name another one, or 0"
            )

    @property
    def epochs(self) -> tuple[int, ...]:
        """The epochs whose records every write computes: the served one, then the next one when set."""
        return (self.key_epoch, self.next_key_epoch) if self.next_key_epoch else (self.key_epoch,)


@dataclass(frozen=True, slots=True)
class ServerConfig(Options):
    """The whole configuration: where state lives, then one group per capability."""

    data_dir: Path = option(
        factory=default_data_dir, help="where the embedded store and the server secret live"
    )
    secret_file: str = option(
        "", "server secret file, made with mode 0600 on first start (default: DATA_DIR/server.secret)"
    )
    secret_env: str = option(
        "", "name of an environment variable holding the server secret (hex); overrides secret_file"
    )
    network: NetworkOptions = field(default_factory=NetworkOptions)
    store: StoreOptions = field(default_factory=StoreOptions)
    limits: DirectoryLimits = field(default_factory=DirectoryLimits)
    defaults: PrivacySettings = field(default_factory=PrivacySettings)
    joins: JoinPolicy = field(default_factory=JoinPolicy)
    auth: AuthOptions = field(default_factory=AuthOptions)
    tls: TlsOptions = field(default_factory=TlsOptions)
    quota: QuotaPolicy = field(default_factory=QuotaPolicy)
    ops: OpsOptions = field(default_factory=OpsOptions)
    tracing: TracingOptions = field(default_factory=TracingOptions)
    private: PrivateOptions = field(default_factory=PrivateOptions)

    @classmethod
    def from_options(cls, **values: Any) -> ServerConfig:
        """The config of flat option names (the flags' names with underscores); options not
        given keep their defaults; an enum option also takes its flag's text. An unknown name
        raises TypeError."""
        known = options_by_name()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(
                f"unknown server option {', '.join(map(repr, unknown))}; "
                "the options are the flags of 'discovery serve', with underscores"
            )
        grouped: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            o = known[name]
            if issubclass(o.kind, enum.Enum):  # the flag's text, as the parser takes it
                try:
                    value = _enum(o.kind)(value)
                except argparse.ArgumentTypeError as error:
                    raise ValueError(f"unknown {o.flag} {error}") from None
            grouped.setdefault(o.group, {})[o.attribute] = value
        direct = grouped.pop("", {})
        groups = {group: _group_types()[group](**given) for group, given in grouped.items()}
        return cls(**direct, **groups)

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'discovery.db'}"

    @property
    def secret_path(self) -> Path:
        return Path(self.secret_file) if self.secret_file else self.data_dir / "server.secret"

    @property
    def jwt_secret_path(self) -> Path:
        return Path(self.auth.jwt_secret_file) if self.auth.jwt_secret_file else self.data_dir / "jwt.secret"


@dataclass(frozen=True, slots=True)
class Option:
    """One option, flat: ``name`` sets ``ServerConfig.<group>.<attribute>`` (group "": top level)."""

    name: str
    group: str
    attribute: str
    kind: type
    declaration: Field[Any]

    @property
    def flag(self) -> str:
        return flag(self.name)

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def help(self) -> str:
        return str(self.declaration.metadata["help"])

    @property
    def default(self) -> Any:
        if self.declaration.default_factory is not MISSING:
            return self.declaration.default_factory()
        return self.declaration.default

    def value(self, config: ServerConfig) -> Any:
        return getattr(getattr(config, self.group) if self.group else config, self.attribute)


@cache
def _group_types() -> dict[str, type[Any]]:
    hints = get_type_hints(ServerConfig)
    return {f.name: hints[f.name] for f in fields(ServerConfig) if not is_option(f)}


def _options_of(group: str, owner: type[Any]) -> list[Option]:
    hints = get_type_hints(owner)
    return [Option(option_name(f), group, f.name, hints[f.name], f) for f in fields(owner) if is_option(f)]


@cache
def options() -> tuple[Option, ...]:
    """Every option of ``ServerConfig``, in declaration order."""
    found = _options_of("", ServerConfig)
    for group, owner in _group_types().items():
        found += _options_of(group, owner)
    return tuple(found)


@cache
def options_by_name() -> dict[str, Option]:
    return {o.name: o for o in options()}


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r}")


def _enum(kind: type[enum.Enum]) -> Callable[[str], Any]:
    """A parser of an enum option, by its lowercase name (what ``str`` of a member gives)."""

    def parse(value: str | enum.Enum) -> Any:
        if isinstance(value, kind):
            return value
        by_name = {str(member): member for member in kind}
        try:
            return by_name[str(value).strip().lower()]
        except KeyError:
            raise argparse.ArgumentTypeError(f"{value!r}; use one of {', '.join(by_name)}") from None

    return parse


def _parser_type(kind: type) -> Callable[[str], Any]:
    if issubclass(kind, enum.Enum):
        return _enum(kind)
    converters: dict[type, Callable[[str], Any]] = {bool: _bool, int: int, float: float, Path: Path}
    return converters.get(kind, str)


def env_name(option: str) -> str:
    return "DISCOVERY_" + option.upper()


#: Options that no longer exist -> what replaced them. Setting one is an error, not a silent
#: change of behaviour (an old DISCOVERY_DEFAULT_ANNOUNCE_JOIN=false must not turn into MUTUAL).
RETIRED = {"default_announce_join": "--default-announce-mode (off, mutual or everyone)"}


def _retired_dest(name: str) -> str:
    return f"retired_{name}"


def add_server_options(
    parser: argparse.ArgumentParser,
    env: Mapping[str, str] | None = None,
    only: Collection[str] | None = None,
) -> None:
    """Flags for every option (or those in ``only``), defaulting to DISCOVERY_* variables,
    then to the declared default."""
    env = os.environ if env is None else env
    for o in options():
        if only is not None and o.name not in only:
            continue
        convert = _parser_type(o.kind)
        raw = env.get(o.env)
        parser.add_argument(
            o.flag,
            dest=o.name,
            type=convert,
            default=convert(raw) if raw is not None else o.default,
            metavar=o.name.upper(),
            help=f"{o.help} [{o.env}; default {o.default}]",
        )
    for name in RETIRED:
        parser.add_argument(
            flag(name), dest=_retired_dest(name), default=env.get(env_name(name)), help=argparse.SUPPRESS
        )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The config of the parsed flags; options the parser did not offer keep their defaults.
    A retired option, given as a flag or a variable, is refused with what replaced it."""
    for name, instead in RETIRED.items():
        if getattr(args, _retired_dest(name), None) is not None:
            raise ValueError(f"{flag(name)} ({env_name(name)}) was replaced by {instead}")
    return ServerConfig.from_options(
        **{o.name: getattr(args, o.name) for o in options() if hasattr(args, o.name)}
    )
