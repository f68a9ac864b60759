"""Client-side CLI commands: ``discover``, ``settings``, ``export-my-data``, ``delete-my-data``
(messenger-client API) and ``register``, ``unregister``, ``change-number``, ``import`` (backend API).

``add_client_commands(subparsers)`` registers them, from the :data:`COMMANDS` table, on the
lead's argparse parser; each sets ``func`` to its handler. Exit codes and the common flags:
:mod:`discovery.cli._shared`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from discovery.cli._shared import (
    EXIT_OK,
    Handler,
    Subparsers,
    add_private_arguments,
    client_kwargs,
    common_parser,
    guarded,
    open_text,
    positive_int,
    print_json,
    private_state,
    save_private_state,
    write_private_file,
)
from discovery.cli.progress import ProgressReporter
from discovery.client.address_book import DEFAULT_MAX_PER_REQUEST
from discovery.client.contacts_file import parse_contacts, parse_import_rows
from discovery.client.models import DiscoverResult, ImportSummary, Settings
from discovery.client.sync_client import DEFAULT_IMPORT_BATCH_SIZE, AdminClient, DiscoveryClient

__all__ = ["COMMANDS", "add_client_commands", "format_discover_result", "format_import_summary"]


def _table(rows: list[tuple[str, str]], headers: tuple[str, str]) -> list[str]:
    width = max([len(headers[0])] + [len(a) for a, _ in rows])
    lines = [f"{headers[0]:<{width}}  {headers[1]}"]
    lines.extend(f"{a:<{width}}  {b}" for a, b in rows)
    return lines


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


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


@guarded
def _cmd_discover(args: argparse.Namespace) -> int:
    with open_text(args.contacts) as f:
        entries = parse_contacts(f)
    with DiscoveryClient(args.target, max_per_request=args.max_per_request, **client_kwargs(args)) as client:
        if args.private:
            client.private_state = state = private_state(args)
            result = client.discover_private(entries)
            save_private_state(args, state)
        else:
            result = client.discover(entries)
    if args.json:
        print_json(result.to_dict())
    else:
        print(format_discover_result(result, len(entries)))
    return EXIT_OK


def _print_settings(settings: Settings, as_json: bool) -> None:
    if as_json:
        print_json(settings.to_dict())
        return
    for name, value in settings.to_dict().items():
        print(f"{name}: {'on' if value else 'off'}")


@guarded
def _cmd_settings(args: argparse.Namespace) -> int:
    changes = (args.discoverable, args.announce_join, args.notify_on_join)
    with DiscoveryClient(args.target, **client_kwargs(args)) as client:
        if all(value is None for value in changes):
            settings = client.get_settings()
        else:
            settings = client.update_settings(*changes)
    _print_settings(settings, args.json)
    return EXIT_OK


@guarded
def _cmd_delete_my_data(args: argparse.Namespace) -> int:
    with DiscoveryClient(args.target, **client_kwargs(args)) as client:
        deleted = client.delete_my_data(disable_notify_on_join=args.disable_notify_on_join)
    if args.json:
        print_json({"records_deleted": deleted})
    else:
        print(f"deleted {_plural(deleted, 'record')}")
    return EXIT_OK


def _delete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--disable-notify-on-join",
        action="store_true",
        help="also turn join notifications off in the same call, so later discovers store no watches",
    )


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        "-o",
        metavar="FILE.json",
        default="-",
        help="write the export here, made with mode 0600 and replaced if it exists (default: - for stdout)",
    )


@guarded
def _cmd_export_my_data(args: argparse.Namespace) -> int:
    with DiscoveryClient(args.target, **client_kwargs(args)) as client:
        exported = client.export_my_data()
    text = json.dumps(exported, indent=2, ensure_ascii=False) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
        return EXIT_OK
    # Created private: the export holds the caller's contact hash prefixes and events.
    write_private_file(args.out, text.encode("utf-8"))
    events = exported.get("pending_events", [])
    print(f"wrote {args.out}: {_plural(len(events), 'pending event')}, format {exported.get('format')}")
    return EXIT_OK


def _done(args: argparse.Namespace, status: str, text: str) -> int:
    if args.json:
        print_json({"user_id": args.user_id, "status": status})
    else:
        print(text)
    return EXIT_OK


@guarded
def _cmd_register(args: argparse.Namespace) -> int:
    with AdminClient(args.target, **client_kwargs(args)) as admin:
        admin.register_user(args.user_id, args.number)
    return _done(args, "registered", f"registered user {args.user_id}")


@guarded
def _cmd_unregister(args: argparse.Namespace) -> int:
    with AdminClient(args.target, **client_kwargs(args)) as admin:
        admin.unregister_user(args.user_id)
    return _done(args, "unregistered", f"unregistered user {args.user_id}")


@guarded
def _cmd_change_number(args: argparse.Namespace) -> int:
    with AdminClient(args.target, **client_kwargs(args)) as admin:
        admin.change_number(args.user_id, args.number)
    return _done(args, "number_changed", f"changed the number of user {args.user_id}")


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


@guarded
def _cmd_import(args: argparse.Namespace) -> int:
    total = None
    if args.file != "-" and sys.stderr.isatty():
        total = _count_rows(args.file)
    progress = ProgressReporter(sys.stderr, total)
    with open_text(args.file) as f, AdminClient(args.target, **client_kwargs(args)) as admin:
        try:
            summary = admin.import_users(
                parse_import_rows(f), batch_size=args.batch_size, on_progress=progress
            )
        finally:
            progress.finish()
    if args.json:
        print_json(summary.to_dict())
    else:
        print(format_import_summary(summary))
    return EXIT_OK


# ---------------------------------------------------------------------------
# arguments and the command table


def _discover_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--contacts",
        required=True,
        metavar="FILE",
        help="CSV (phone/number/tel/mobile column) or one number per line; - for stdin",
    )
    p.add_argument(
        "--max-per-request",
        type=positive_int,
        default=DEFAULT_MAX_PER_REQUEST,
        help="contact hashes per request (default %(default)s)",
    )
    add_private_arguments(p)


def _settings_arguments(p: argparse.ArgumentParser) -> None:
    for flag in ("--discoverable", "--announce-join", "--notify-on-join"):
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)


def _user_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("user_id", metavar="USER_ID")


def _user_number_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("number", metavar="NUMBER")


def _import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_IMPORT_BATCH_SIZE,
        help="users per stream message (default %(default)s)",
    )


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its name, help texts, handler and own arguments (beside the common ones)."""

    name: str
    help: str
    description: str
    handler: Handler
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


COMMANDS: tuple[Command, ...] = (
    Command(
        "discover",
        "find which contacts use the messenger",
        "Find which entries of an address book belong to registered, discoverable users.",
        _cmd_discover,
        _discover_arguments,
    ),
    Command(
        "settings",
        "show or change your privacy settings",
        "Show the caller's privacy settings, or change those given.",
        _cmd_settings,
        _settings_arguments,
    ),
    Command(
        "export-my-data",
        "write everything kept on your behalf to a JSON file",
        "Export what the service keeps on the caller's behalf (ExportMyData) as JSON: settings, "
        "registration, watch count and expiry, pending join events (also those not released "
        "yet), devices and quota levels. The format is the protobuf JSON mapping of "
        "discovery.v1.ExportMyDataResponse (see docs/joins.md, 'Your data').",
        _cmd_export_my_data,
        _export_arguments,
    ),
    Command(
        "delete-my-data",
        "forget everything kept on your behalf",
        "Delete the caller's watches, undelivered join events and devices (DeleteMyData). The "
        "registration, settings and quota levels stay; --disable-notify-on-join also turns join "
        "notifications off, so that later discovers keep no watches.",
        _cmd_delete_my_data,
        _delete_arguments,
    ),
    Command(
        "register",
        "(backend) register a user",
        "Register a user with their phone number (normalised and hashed locally).",
        _cmd_register,
        _user_number_arguments,
    ),
    Command(
        "unregister",
        "(backend) unregister a user",
        "Remove every record that names the user.",
        _cmd_unregister,
        _user_arguments,
    ),
    Command(
        "change-number",
        "(backend) move a user to a new number",
        "Move a registered user to a new phone number (normalised and hashed locally).",
        _cmd_change_number,
        _user_number_arguments,
    ),
    Command(
        "import",
        "(backend) bulk-import users from a CSV",
        "Bulk-register users from a CSV of user_id,number (header optional); - for stdin.",
        _cmd_import,
        _import_arguments,
    ),
)


def add_client_commands(subparsers: Subparsers) -> None:
    """Register the client-side subcommands on ``subparsers``."""
    common = common_parser()
    for command in COMMANDS:
        p = subparsers.add_parser(
            command.name, parents=[common], help=command.help, description=command.description
        )
        command.arguments(p)
        p.set_defaults(func=command.handler)
