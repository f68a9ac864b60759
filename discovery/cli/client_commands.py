"""Client-side CLI commands: ``discover``, ``settings``, ``delete-my-data`` (messenger-client API)
and ``register``, ``unregister``, ``change-number``, ``import`` (backend API).

``add_client_commands(subparsers)`` registers them on the lead's argparse
parser; each sets ``func`` to a handler ``(args: argparse.Namespace) -> int``
returning the exit code: 0 on success, 1 when the service returned an error
(printed as ``error: CODE: message`` plus field violations on stderr), 2 for bad
local input (unreadable file, invalid number, bad TLS files).

Common flags: ``--target`` (env ``DISCOVERY_TARGET``, default ``127.0.0.1:50051``),
``--user-id`` (env ``DISCOVERY_USER_ID``), ``--token`` (env ``DISCOVERY_TOKEN``),
``--tls``, ``--tls-ca``, ``--tls-cert``, ``--tls-key`` (PEM paths), ``--region``
(default region for numbers without ``+``, env ``DISCOVERY_REGION``),
``--timeout`` (seconds per call) and ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TextIO

from discovery.client.contacts_file import parse_contacts, parse_import_rows
from discovery.client.errors import DiscoveryError
from discovery.client.models import DiscoverResult, ImportSummary, Settings
from discovery.client.normalize import InvalidNumberError, InvalidReason
from discovery.client.sync_client import DEFAULT_IMPORT_BATCH_SIZE, AdminClient, DiscoveryClient

__all__ = ["add_client_commands"]

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_OK = 0
EXIT_SERVICE_ERROR = 1
EXIT_INPUT_ERROR = 2

Handler = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------
# argument parsing


def _common_parser() -> argparse.ArgumentParser:
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_client_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the client-side subcommands on ``subparsers``."""
    common = _common_parser()

    p = subparsers.add_parser(
        "discover",
        parents=[common],
        help="find which contacts use the messenger",
        description="Find which entries of an address book belong to registered, discoverable users.",
    )
    p.add_argument(
        "--contacts",
        required=True,
        metavar="FILE",
        help="CSV (phone/number/tel/mobile column) or one number per line; - for stdin",
    )
    p.add_argument(
        "--max-per-request",
        type=_positive_int,
        default=5000,
        help="contact hashes per request (default %(default)s)",
    )
    p.set_defaults(func=_cmd_discover)

    p = subparsers.add_parser(
        "settings",
        parents=[common],
        help="show or change your privacy settings",
        description="Show the caller's privacy settings, or change those given.",
    )
    p.add_argument("--discoverable", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--announce-join", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--notify-on-join", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=_cmd_settings)

    p = subparsers.add_parser(
        "delete-my-data",
        parents=[common],
        help="forget everything kept on your behalf",
        description="Delete the caller's watches and undelivered notifications.",
    )
    p.set_defaults(func=_cmd_delete_my_data)

    p = subparsers.add_parser(
        "register",
        parents=[common],
        help="(backend) register a user",
        description="Register a user with their phone number (normalised and hashed locally).",
    )
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("number", metavar="NUMBER")
    p.set_defaults(func=_cmd_register)

    p = subparsers.add_parser(
        "unregister",
        parents=[common],
        help="(backend) unregister a user",
        description="Remove every record that names the user.",
    )
    p.add_argument("user_id", metavar="USER_ID")
    p.set_defaults(func=_cmd_unregister)

    p = subparsers.add_parser(
        "change-number",
        parents=[common],
        help="(backend) move a user to a new number",
        description="Move a registered user to a new phone number (normalised and hashed locally).",
    )
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("number", metavar="NUMBER")
    p.set_defaults(func=_cmd_change_number)

    p = subparsers.add_parser(
        "import",
        parents=[common],
        help="(backend) bulk-import users from a CSV",
        description="Bulk-register users from a CSV of user_id,number (header optional); - for stdin.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_IMPORT_BATCH_SIZE,
        help="users per stream message (default %(default)s)",
    )
    p.set_defaults(func=_cmd_import)


# ---------------------------------------------------------------------------
# plumbing


class _InputError(Exception):
    """Bad local input; reported as ``error: ...`` with exit code 2."""


def _read_bytes(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _InputError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def _client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise _InputError("--tls-cert and --tls-key must be given together")
    return {
        "user_id": args.user_id,
        "token": args.token,
        "tls": bool(args.tls),
        "root_certificates": _read_bytes(args.tls_ca, "--tls-ca"),
        "certificate_chain": _read_bytes(args.tls_cert, "--tls-cert"),
        "private_key": _read_bytes(args.tls_key, "--tls-key"),
        "default_region": args.region,
        "timeout": args.timeout,
    }


@contextmanager
def _open_text(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdin
        return
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115
    except OSError as exc:
        raise _InputError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    with f:
        yield f


def _print_service_error(exc: DiscoveryError) -> None:
    print(f"error: {exc.code_name}: {exc.message}", file=sys.stderr)
    for field, description in exc.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    if exc.retry_after is not None:
        print(f"  retry after {exc.retry_after:g}s", file=sys.stderr)


def _guarded(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except DiscoveryError as exc:
            _print_service_error(exc)
            return EXIT_SERVICE_ERROR
        except InvalidNumberError as exc:
            # The message never contains the number itself.
            missing = exc.reason is InvalidReason.MISSING_REGION
            hint = " (give --region for numbers without +country code)" if missing else ""
            print(f"error: {exc}{hint}", file=sys.stderr)
            return EXIT_INPUT_ERROR
        except (_InputError, ValueError, UnicodeDecodeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT_ERROR

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _table(rows: list[tuple[str, str]], headers: tuple[str, str]) -> list[str]:
    width = max([len(headers[0])] + [len(a) for a, _ in rows])
    lines = [f"{headers[0]:<{width}}  {headers[1]}"]
    lines.extend(f"{a:<{width}}  {b}" for a, b in rows)
    return lines


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


# ---------------------------------------------------------------------------
# messenger-client commands


def format_discover_result(result: DiscoverResult, total: int) -> str:
    """The text report of ``discover``: an aligned table of matches, then invalid entries by reason."""
    lines: list[str] = []
    if result.matches:
        lines.extend(_table([(m.entry, m.user_id) for m in result.matches], ("ENTRY", "USER ID")))
        lines.append("")
    lines.append(
        f"{_plural(len(result.matches), 'match', 'matches')} among {_plural(total, 'entry', 'entries')}"
    )
    if result.invalid:
        by_reason = Counter(str(i.reason) for i in result.invalid)
        breakdown = ", ".join(f"{reason}: {count}" for reason, count in by_reason.most_common())
        lines.append(f"invalid entries: {len(result.invalid)} ({breakdown})")
        lines.extend(f"  {i.entry!r}: {i.reason}" for i in result.invalid)
    return "\n".join(lines)


@_guarded
def _cmd_discover(args: argparse.Namespace) -> int:
    with _open_text(args.contacts) as f:
        entries = parse_contacts(f)
    with DiscoveryClient(args.target, max_per_request=args.max_per_request, **_client_kwargs(args)) as client:
        result = client.discover(entries)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(format_discover_result(result, len(entries)))
    return EXIT_OK


def _print_settings(settings: Settings, as_json: bool) -> None:
    if as_json:
        _print_json(settings.to_dict())
        return
    for name, value in settings.to_dict().items():
        print(f"{name}: {'on' if value else 'off'}")


@_guarded
def _cmd_settings(args: argparse.Namespace) -> int:
    changes = (args.discoverable, args.announce_join, args.notify_on_join)
    with DiscoveryClient(args.target, **_client_kwargs(args)) as client:
        if all(value is None for value in changes):
            settings = client.get_settings()
        else:
            settings = client.update_settings(*changes)
    _print_settings(settings, args.json)
    return EXIT_OK


@_guarded
def _cmd_delete_my_data(args: argparse.Namespace) -> int:
    with DiscoveryClient(args.target, **_client_kwargs(args)) as client:
        deleted = client.delete_my_data()
    if args.json:
        _print_json({"records_deleted": deleted})
    else:
        print(f"deleted {_plural(deleted, 'record')}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# backend commands


def _done(args: argparse.Namespace, status: str, text: str) -> int:
    if args.json:
        _print_json({"user_id": args.user_id, "status": status})
    else:
        print(text)
    return EXIT_OK


@_guarded
def _cmd_register(args: argparse.Namespace) -> int:
    with AdminClient(args.target, **_client_kwargs(args)) as admin:
        admin.register_user(args.user_id, args.number)
    return _done(args, "registered", f"registered user {args.user_id}")


@_guarded
def _cmd_unregister(args: argparse.Namespace) -> int:
    with AdminClient(args.target, **_client_kwargs(args)) as admin:
        admin.unregister_user(args.user_id)
    return _done(args, "unregistered", f"unregistered user {args.user_id}")


@_guarded
def _cmd_change_number(args: argparse.Namespace) -> int:
    with AdminClient(args.target, **_client_kwargs(args)) as admin:
        admin.change_number(args.user_id, args.number)
    return _done(args, "number_changed", f"changed the number of user {args.user_id}")


class ProgressReporter:
    """``on_progress`` for imports: a text bar on a TTY, else a line at most every ``interval`` seconds."""

    BAR_WIDTH = 30

    def __init__(self, stream: IO[str], total: int | None = None, interval: float = 2.0) -> None:
        self.stream = stream
        self.total = total
        self.interval = interval
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = float("-inf")
        self._lock = threading.Lock()
        self._drawn = False
        self._latest = 0
        self._written = -1

    def __call__(self, processed: int) -> None:
        with self._lock:
            self._latest = processed
            if self.tty:
                self.stream.write("\r" + self._bar(processed))
                self._drawn = True
            else:
                now = time.monotonic()
                if now - self._last < self.interval and processed != self.total:
                    return
                self._last = now
                self._line(processed)
            self.stream.flush()

    def _line(self, processed: int) -> None:
        self.stream.write(f"import: {self._count(processed)} rows processed\n")
        self._written = processed

    def _count(self, processed: int) -> str:
        return f"{processed:,}/{self.total:,}" if self.total else f"{processed:,}"

    def _bar(self, processed: int) -> str:
        if not self.total:
            return f"importing... {processed:,} rows"
        fraction = min(1.0, processed / self.total)
        filled = int(fraction * self.BAR_WIDTH)
        bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
        return f"[{bar}] {fraction:4.0%} {self._count(processed)} rows"

    def finish(self) -> None:
        """End the bar's line (TTY), or write the last count if it was not written yet."""
        with self._lock:
            if self.tty:
                if self._drawn:
                    self.stream.write("\n")
            elif self._latest != self._written and self._latest > 0:
                self._line(self._latest)
            self.stream.flush()


def format_import_summary(summary: ImportSummary) -> str:
    lines = [
        f"imported:  {summary.imported}",
        f"unchanged: {summary.unchanged}",
        f"rejected:  {summary.rejected_total}",
    ]
    for r in summary.rejections:
        reason = r.reason.removeprefix("REJECTION_REASON_")
        detail = f" ({r.detail})" if r.detail else ""
        lines.append(f"  row {r.position + 1}, user {r.user_id!r}: {reason}{detail}")
    hidden = summary.rejected_total - len(summary.rejections)
    if hidden > 0:
        lines.append(f"  ... and {hidden} more not listed by the server")
    return "\n".join(lines)


def _count_rows(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return sum(1 for _ in parse_import_rows(f))
    except (OSError, UnicodeDecodeError):
        return None


@_guarded
def _cmd_import(args: argparse.Namespace) -> int:
    total = None
    if args.file != "-" and sys.stderr.isatty():
        total = _count_rows(args.file)
    progress = ProgressReporter(sys.stderr, total)
    with _open_text(args.file) as f, AdminClient(args.target, **_client_kwargs(args)) as admin:
        try:
            summary = admin.import_users(
                parse_import_rows(f), batch_size=args.batch_size, on_progress=progress
            )
        finally:
            progress.finish()
    if args.json:
        _print_json(summary.to_dict())
    else:
        print(format_import_summary(summary))
    return EXIT_OK
