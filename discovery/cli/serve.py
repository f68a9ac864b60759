"""``discovery serve``: run one instance on its embedded default or on the configured store."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from discovery.app.server import serve
from discovery.config import add_server_options, config_from_args
from discovery.core.errors import StartupRefused
from discovery.logs import configure_logging
from discovery.tracing import Tracing


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the service",
        description="Run the service. With no options it keeps an embedded SQLite store in the data "
        "directory and listens on 127.0.0.1:50051.",
    )
    add_server_options(parser)
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"discovery serve: error: {error}", file=sys.stderr)
        return 2
    # Everything the server writes (store, WAL, secrets) is readable by its owner only.
    os.umask(0o077)
    configure_logging(config.ops.log_level)
    try:
        asyncio.run(serve(config, Tracing.start(config.tracing)))
    except StartupRefused as error:
        print(f"discovery serve: error: {error}", file=sys.stderr)
        return 2
    return 0
