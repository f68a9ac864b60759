"""Loading the server secret, which lives outside the datastore.

On first start the secret is generated into its own file with mode 0600; a
deployment can instead pass it in an environment variable (from a KMS or a
secrets manager). A dump of the datastore without it reveals no number.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from discovery.core.hashing import MIN_SECRET_SIZE

SECRET_BYTES = 32


def load_or_create_secret(path: Path) -> bytes:
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(
                f"{path} must not be readable by group or others (mode {mode:o}); chmod 600 it"
            )
        return _decode(path.read_text().strip(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(SECRET_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return secret


def secret_from_env(variable: str) -> bytes:
    value = os.environ.get(variable)
    if not value:
        raise ValueError(f"environment variable {variable} holds no server secret")
    return _decode(value.strip(), variable)


def _decode(text: str, source: str) -> bytes:
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"the server secret in {source} is not hex") from None
    if len(secret) < MIN_SECRET_SIZE:
        raise ValueError(f"the server secret in {source} is shorter than {MIN_SECRET_SIZE} bytes")
    return secret
