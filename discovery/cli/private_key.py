"""``discovery private-key``: the private-mode public key of a key epoch, from the server secret.

The key is derived from the same secret as ``discovery serve`` reads (``--secret-env``, ``--secret-file``
or ``DATA_DIR/server.secret``), so an operator can publish the next epoch's key in the apps before any
instance serves it (docs/private-mode.md, "Key epochs"). It prints ``EPOCH:HEX``, the form
``--private-key`` of the client commands takes. It never creates a secret: a new one would be another key.
"""

from __future__ import annotations

import argparse
import sys

from discovery.app.credentials import load_secret
from discovery.config import add_server_options, config_from_args
from discovery.core.private import OprfKey

PRIVATE_KEY_OPTIONS = ("data_dir", "secret_file", "secret_env", "private_key_epoch")


def add_private_key_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "private-key",
        help="print the private-mode public key of a key epoch",
        description="Print the private-mode public key of a key epoch (EPOCH:HEX), derived from the "
        "server secret as `discovery serve` derives it: publish it in the apps before serving the epoch.",
    )
    parser.add_argument(
        "--epoch", type=int, default=None, help="the key epoch (default: --private-key-epoch, 1)"
    )
    add_server_options(parser, only=PRIVATE_KEY_OPTIONS)
    parser.set_defaults(func=run_private_key)


def run_private_key(args: argparse.Namespace) -> int:
    try:
        print(public_key_line(args))
    except (OSError, ValueError) as error:
        print(f"discovery private-key: error: {error}", file=sys.stderr)
        return 2
    return 0


def public_key_line(args: argparse.Namespace) -> str:
    """``EPOCH:HEX`` of the configured (or ``--epoch``) key epoch; ValueError or OSError: why not."""
    config = config_from_args(args)
    epoch = config.private.key_epoch if args.epoch is None else args.epoch
    if not 1 <= epoch < 1 << 32:
        raise ValueError(f"--epoch {epoch} is not a key epoch (1 to 2^32 - 1)")
    if not config.secret_env and not config.secret_path.exists():
        raise ValueError(f"no server secret at {config.secret_path}")
    key = OprfKey.from_secret(load_secret(config.secret_env, config.secret_path), epoch)
    return f"{epoch}:{key.public_key.hex()}"
