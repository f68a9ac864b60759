"""The ``discovery`` command: ``serve`` and the client and backend commands."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discovery", description="Privacy-aware contact discovery over gRPC."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Imported here, so that the client commands load no server module.
    from discovery.cli.serve import add_serve_command

    add_serve_command(commands)
    from discovery.cli.token import add_token_command

    add_token_command(commands)
    from discovery.cli.private_key import add_private_key_command

    add_private_key_command(commands)
    from discovery.cli.client_commands import add_client_commands

    add_client_commands(commands)
    from discovery.cli.joins_commands import add_joins_commands

    add_joins_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
