"""``discovery token``: mint a development token from the server's configured key.

A client token names the user (``--sub``); a backend token adds ``--scope
directory:write``. With the default HS256 key the command reads (or makes) the same
``DATA_DIR/jwt.secret`` as ``discovery serve``; for EdDSA or ES256 it needs the account
service's private key (``--signing-key``). The token goes to stdout alone, so that
``export DISCOVERY_TOKEN=$(discovery token --sub bob)`` works.
"""

from __future__ import annotations

import argparse
import sys

from discovery.app.credentials import mint_token, signing_key
from discovery.config import add_server_options, config_from_args
from discovery.core.validation import user_id_problem

TOKEN_OPTIONS = (
    "data_dir",
    "jwt_algorithm",
    "jwt_secret_file",
    "jwt_secret_env",
    "jwt_issuer",
    "jwt_audience",
)


def add_token_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "token",
        help="mint a development token",
        description="Mint a bearer token signed with the server's configured key, as the account "
        "service would. For development and tests; production tokens come from the account service.",
    )
    parser.add_argument("--sub", required=True, help="subject: the user id (or the backend's name)")
    parser.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds (default %(default)s)")
    parser.add_argument("--scope", default="", help="space-separated scopes, e.g. directory:write")
    parser.add_argument(
        "--signing-key", default="", metavar="PEM", help="private key for EdDSA or ES256 (not HS256)"
    )
    add_server_options(parser, only=TOKEN_OPTIONS)
    parser.set_defaults(func=run_token)


def run_token(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    problem = user_id_problem(args.sub)
    if problem is not None:
        print(f"error: --sub {problem}", file=sys.stderr)
        return 2
    if args.ttl <= 0:
        print("error: --ttl must be positive", file=sys.stderr)
        return 2
    try:
        key = signing_key(config, args.signing_key)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    auth = config.auth
    token = mint_token(
        auth.jwt_algorithm,
        key,
        args.sub,
        args.ttl,
        scope=args.scope,
        issuer=auth.jwt_issuer,
        audience=auth.jwt_audience,
    )
    print(token)
    return 0
