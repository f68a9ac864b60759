"""The SDK (and the CLI's client commands) stand apart from the server: importing them loads no
server module and no AES code."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_SIDE = ("discovery.core", "discovery.api", "discovery.store", "discovery.index", "discovery.app")
SERVER_MODULES = ("discovery.config", "discovery.logs", "discovery.metrics")


def test_sdk_loads_nothing_of_the_server() -> None:
    code = (
        "import json, sys, discovery.client, discovery.contact_hash, discovery.cli.client_commands; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = json.loads(out)
    server = [m for m in loaded if m.startswith(SERVER_SIDE) or m in SERVER_MODULES]
    assert server == []
    assert "cryptography" not in loaded
