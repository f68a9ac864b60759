"""``discovery watch-joins``: print join events as they arrive.

The address book is read locally only to map each event back to the caller's own entry;
it is never sent by this command (``discover`` uploads it and creates the watches).
Stops after ``--max-events`` events, or on Ctrl-C; either way it prints the cursor to
resume from on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from discovery.cli import _shared
from discovery.client.async_client import AsyncDiscoveryClient
from discovery.client.contacts_file import parse_contacts
from discovery.client.joins import JoinEvent

__all__ = ["add_joins_commands", "format_join_event"]


def add_joins_commands(subparsers: _shared.Subparsers) -> None:
    p = subparsers.add_parser(
        "watch-joins",
        parents=[_shared.common_parser()],
        help="print join notifications as they arrive",
        description="Stream join notifications and map them to entries of your address book.",
    )
    p.add_argument(
        "--contacts",
        required=True,
        metavar="FILE",
        help="CSV (phone/number/tel/mobile column) or one number per line; - for stdin",
    )
    p.add_argument("--cursor", type=int, default=0, help="resume after this cursor (default: from the start)")
    p.add_argument("--device-id", default="", help="this device's id; acknowledgements are kept per device")
    p.add_argument("--ack", action="store_true", help="acknowledge events once printed")
    p.add_argument(
        "--max-events", type=_shared.positive_int, default=None, help="stop after this many events"
    )
    _shared.add_private_arguments(p)
    p.set_defaults(func=_cmd_watch_joins)


def format_join_event(event: JoinEvent) -> str:
    who = event.entry if event.entry is not None else "(a contact no longer in this address book)"
    when = event.joined_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{who} joined as {event.user_id} at {when} (cursor {event.cursor})"


async def _watch_private(args: argparse.Namespace, entries: list[str]) -> int:
    """Private mode: joins matched on this machine against the delta stream (no ack). With
    ``--private-state`` it resumes where the last run stopped; ``--cursor`` resumes after an event."""
    kwargs = _shared.client_kwargs(args)
    kwargs["timeout"] = None
    seen = 0
    state = _shared.private_state(args)
    start = args.cursor or None
    cursor = start
    async with AsyncDiscoveryClient(args.target, **kwargs) as client:
        client.private_state = state
        try:
            async for entry, user_id, cursor in client.private_joins(entries, cursor=start):
                event = {"entry": entry, "user_id": user_id, "cursor": cursor}
                print(
                    json.dumps(event) if args.json else f"{entry} joined as {user_id} (cursor {cursor})",
                    flush=True,
                )
                seen += 1
                if args.max_events is not None and seen >= args.max_events:
                    break
        finally:
            _shared.save_private_state(args, state)
            if cursor is not None:
                print(f"resume with --cursor {cursor}", file=sys.stderr)
    return _shared.EXIT_OK


async def _watch(args: argparse.Namespace, entries: list[str]) -> int:
    kwargs = _shared.client_kwargs(args)
    kwargs["timeout"] = None  # the stream has no deadline; unary acks use gRPC's default
    seen = 0
    cursor = args.cursor
    async with AsyncDiscoveryClient(args.target, **kwargs) as client:
        subscription = client.subscribe_joins(
            entries, cursor=args.cursor, device_id=args.device_id, auto_ack=args.ack
        )
        try:
            async for event in subscription:
                cursor = event.cursor
                print(json.dumps(event.to_dict()) if args.json else format_join_event(event), flush=True)
                seen += 1
                if args.max_events is not None and seen >= args.max_events:
                    if args.ack:
                        await subscription.ack()
                    break
        finally:
            await subscription.aclose()
            print(f"resume with --cursor {cursor}", file=sys.stderr)
    return _shared.EXIT_OK


@_shared.guarded
def _cmd_watch_joins(args: argparse.Namespace) -> int:
    with _shared.open_text(args.contacts) as f:
        entries = parse_contacts(f)
    try:
        return asyncio.run((_watch_private if args.private else _watch)(args, entries))
    except KeyboardInterrupt:
        return _shared.EXIT_OK
