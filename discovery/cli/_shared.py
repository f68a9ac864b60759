"""Plumbing shared by the client-side CLI commands (``client_commands``, ``joins_commands``).

Each handler ``(args: argparse.Namespace) -> int`` returns the exit code: 0 on success, 1 when
the service returned an error (printed as ``error: CODE: message`` plus field violations on
stderr), 2 for bad local input (unreadable file, invalid number, bad TLS files).

Common flags (:func:`common_parser`): ``--target`` (env ``DISCOVERY_TARGET``, default
``127.0.0.1:50051``), ``--user-id`` (env ``DISCOVERY_USER_ID``), ``--token`` (env
``DISCOVERY_TOKEN``), ``--tls``, ``--tls-ca``, ``--tls-cert``, ``--tls-key`` (PEM paths),
``--region`` (default region for numbers without ``+``, env ``DISCOVERY_REGION``),
``--timeout`` (seconds per call) and ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeAlias

from discovery.client.errors import DiscoveryError
from discovery.client.normalize import InvalidNumberError, InvalidReason
from discovery.client.private import KeyEpochChanged, PrivateKeyMismatch, PrivateState

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_OK = 0
EXIT_SERVICE_ERROR = 1
EXIT_INPUT_ERROR = 2

Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=os.environ.get("DISCOVERY_TARGET", DEFAULT_TARGET),
        help="server address host:port (env DISCOVERY_TARGET, default %(default)s)",
    )
    group.add_argument(
        "--user-id",
        default=os.environ.get("DISCOVERY_USER_ID"),
        help="development identity sent as x-discovery-user-id, for servers in --auth dev mode "
        "(env DISCOVERY_USER_ID)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("DISCOVERY_TOKEN"),
        help="bearer token (env DISCOVERY_TOKEN)",
    )
    group.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    group.add_argument("--tls-ca", metavar="PEM", help="root certificates to trust (implies TLS)")
    group.add_argument("--tls-cert", metavar="PEM", help="client certificate chain for mutual TLS")
    group.add_argument("--tls-key", metavar="PEM", help="client private key for mutual TLS")
    group.add_argument(
        "--region",
        default=os.environ.get("DISCOVERY_REGION"),
        help="default region (e.g. DE) for numbers written without +country code (env DISCOVERY_REGION)",
    )
    group.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default %(default)s)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    return common


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class InputError(Exception):
    """Bad local input; reported as ``error: ...`` with exit code 2."""


def read_bytes(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InputError("--tls-cert and --tls-key must be given together")
    return {
        "user_id": args.user_id,
        "token": args.token,
        "tls": bool(args.tls),
        "root_certificates": read_bytes(args.tls_ca, "--tls-ca"),
        "certificate_chain": read_bytes(args.tls_cert, "--tls-cert"),
        "private_key": read_bytes(args.tls_key, "--tls-key"),
        "default_region": args.region,
        "timeout": args.timeout,
    }


@contextmanager
def open_text(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdin
        return
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    with f:
        yield f


def print_service_error(exc: DiscoveryError) -> None:
    print(f"error: {exc.code_name}: {exc.message}", file=sys.stderr)
    for field, description in exc.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    if exc.retry_after is not None:
        print(f"  retry after {exc.retry_after:g}s", file=sys.stderr)


def guarded(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except DiscoveryError as exc:
            print_service_error(exc)
            return EXIT_SERVICE_ERROR
        except (PrivateKeyMismatch, KeyEpochChanged) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_SERVICE_ERROR
        except InvalidNumberError as exc:
            # The message never contains the number itself.
            missing = exc.reason is InvalidReason.MISSING_REGION
            hint = " (give --region for numbers without +country code)" if missing else ""
            print(f"error: {exc}{hint}", file=sys.stderr)
            return EXIT_INPUT_ERROR
        except (InputError, ValueError, UnicodeDecodeError) as exc:
            if type(exc).__module__.startswith("discovery.private_scheme"):  # a bad proof or response
                print(f"error: private mode: {exc}", file=sys.stderr)
                return EXIT_SERVICE_ERROR
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT_ERROR

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def write_private_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, created with mode 0600 and replaced whole (a temporary file renamed)."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise InputError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def add_private_arguments(p: argparse.ArgumentParser) -> None:
    """``--private``, the key to pin and the state file (docs/private-mode.md)."""
    p.add_argument(
        "--private",
        action="store_true",
        help="private discovery mode: the server learns nothing about unmatched contacts",
    )
    p.add_argument(
        "--private-key",
        metavar="[EPOCH:]HEX",
        action="append",
        default=[],
        help="a published private-mode public key (64 hex digits) to pin, for its key epoch (EPOCH:HEX; "
        "repeat for the current and the next epoch of a rotation) or for any epoch (HEX); a key not "
        "pinned is refused",
    )
    p.add_argument(
        "--private-state",
        metavar="FILE",
        default=None,
        help="keep private mode's state in FILE (created 0600; it holds your contacts' OPRF outputs): "
        "the pinned key, cached outputs (a re-sync evaluates nothing), and the snapshot watch-joins "
        "resumes from",
    )


def parse_private_keys(values: list[str]) -> tuple[bytes | None, dict[int, bytes]]:
    """The keys of ``--private-key``: one for any epoch (``HEX``), and by epoch (``EPOCH:HEX``)."""
    any_epoch: bytes | None = None
    by_epoch: dict[int, bytes] = {}
    for value in values:
        epoch_text, _, hex_key = value.rpartition(":")
        try:
            key = bytes.fromhex(hex_key)
            epoch = int(epoch_text) if epoch_text else None
        except ValueError:
            raise InputError(f"--private-key {value!r} is not [EPOCH:]HEX") from None
        if len(key) != 32:
            raise InputError("--private-key must be 32 bytes (64 hex digits)")
        if epoch is not None and not 1 <= epoch < 1 << 32:
            raise InputError(f"--private-key epoch {epoch} is not a key epoch (1 to 2^32 - 1)")
        if (any_epoch if epoch is None else by_epoch.get(epoch)) not in (None, key):
            raise InputError("--private-key gives two keys for one epoch")
        if epoch is None:
            any_epoch = key
        else:
            by_epoch[epoch] = key
    return any_epoch, by_epoch


def private_state(args: argparse.Namespace) -> PrivateState:
    """The SDK's private-mode state: loaded from ``--private-state`` when that file exists, with the keys
    of ``--private-key`` pinned (a state pinning another key for one of their epochs is refused)."""
    key, keys = parse_private_keys(args.private_key)
    path = args.private_state
    if path is None or not os.path.exists(path):
        return PrivateState(pinned_key=key, pinned_keys=keys)
    data = read_bytes(path, "--private-state")
    try:
        state = PrivateState.from_bytes(data or b"")
    except (ValueError, struct.error):
        raise InputError(f"--private-state {path!r} is not a private-mode state") from None
    if key is not None and state.pinned_key not in (None, key):
        raise InputError(f"--private-state {path!r} pins another key than --private-key")
    if any(state.pinned_keys.get(epoch, k) != k for epoch, k in keys.items()):
        raise InputError(f"--private-state {path!r} pins another key than --private-key for an epoch")
    if key is not None:
        state.pinned_key = key
    state.pinned_keys.update(keys)
    return state


def save_private_state(args: argparse.Namespace, state: PrivateState) -> None:
    """Write the state to ``--private-state``, when given."""
    if args.private_state is not None:
        write_private_file(args.private_state, state.to_bytes())
