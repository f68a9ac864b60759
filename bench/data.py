"""Registries of realistic size, generated with numpy (no Python loop per user).

A registry is n users, each with a contact hash ``h`` (32 bytes), a directory key (one
AES call keys them all, exactly as the server does), a user id and a discoverable flag.
Contact hashes are uniformly random 32-byte values: that is how BLAKE3 outputs look,
and the server never sees the number behind one. The baselines that need phone numbers
derive them separately (:func:`msisdns`).

User ids are 10..20 ASCII characters (mean 15): seven base-32 digits of the user's index,
most significant first (so they are unique and ascend with the index), then random
base-32 characters. Users are numbered in the order of their directory keys, so the
store writer appends to both unique indexes of the ``users`` table instead of inserting
at random places (10M rows in tens of seconds rather than many minutes).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt

from discovery.core.hashing import HASH_SIZE, KeyRing
from discovery.index import DirectoryIndex

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

ALPHABET = np.frombuffer(b"234567abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)  # in ASCII order
ID_MIN, ID_MAX = 10, 20
DISCOVERABLE_FRACTION = 0.9
REGISTERED_FRACTION = 0.5  # of the contacts in a request
_UNIQUE_DIGITS = 7  # 32**7 > 3 * 10**10 distinct ids
_V32 = np.dtype((np.void, HASH_SIZE))
_V16 = np.dtype((np.void, 16))


def user_ids(rng: np.random.Generator, n: int) -> tuple[bytes, I64]:
    """n unique NUL-terminated ASCII ids as one blob, and their lengths (without the NUL)."""
    lens = rng.integers(ID_MIN, ID_MAX + 1, n, dtype=np.int64)
    ends = np.cumsum(lens + 1)
    starts = ends - lens - 1
    blob = ALPHABET[rng.integers(0, ALPHABET.size, int(ends[-1]) if n else 0)]
    index = np.arange(n, dtype=np.int64)
    for digit in range(_UNIQUE_DIGITS):
        shift = 5 * (_UNIQUE_DIGITS - 1 - digit)
        blob[starts + digit] = ALPHABET[(index >> shift) & 31]
    blob[ends - 1] = 0
    return blob.tobytes(), lens


def split_ids(blob: bytes) -> list[str]:
    """The ids of a NUL-terminated blob as a list (one C-level split)."""
    ids = blob.decode("ascii").split("\x00")
    ids.pop()
    return ids


def rows_as_bytes(array: U8) -> list[bytes]:
    """Rows of an (n, w) uint8 array as a list of n bytes objects, without a Python loop."""
    width = array.shape[1]
    rows: list[bytes] = np.ascontiguousarray(array).view(np.dtype((np.void, width))).ravel().tolist()  # type: ignore[assignment]
    return rows


@dataclass
class Registry:
    """n registered users, as the server holds them and as a load generator needs them."""

    seed: int
    hashes: U8  # (n, 32) contact hashes, in the order of their directory keys (unless shuffled)
    id_blob: bytes
    id_lens: I64
    discoverable: npt.NDArray[np.bool_]
    secret: bytes

    @property
    def size(self) -> int:
        return int(self.hashes.shape[0])

    keys: bytes  # n packed directory keys, ascending

    @cached_property
    def keyring(self) -> KeyRing:
        return KeyRing.from_secret(self.secret)

    def build_index(self) -> DirectoryIndex:
        index = DirectoryIndex()
        index.bulk_load_packed(self.keys, self.id_blob, self.discoverable)
        return index

    def requests(
        self, count: int, contacts: int, *, registered: float = REGISTERED_FRACTION, seed: int = 0
    ) -> list[bytes]:
        """``count`` packed Discover batches of ``contacts`` distinct hashes each.

        A ``registered`` fraction of each batch are hashes of registered users (distinct,
        chosen at random), the rest are fresh random hashes; their order is shuffled.
        """
        rng = np.random.default_rng([self.seed, seed, contacts])
        k = min(round(contacts * registered), self.size)
        picks = rng.integers(0, self.size, (count, k))
        for row in np.flatnonzero([np.unique(p).size != k for p in picks]):
            picks[row] = rng.choice(self.size, k, replace=False)
        known = self.hashes[picks]  # (count, k, 32)
        fresh = rng.integers(0, 256, (count, contacts - k, HASH_SIZE), dtype=np.uint8)
        batch = np.concatenate((known, fresh), axis=1)
        order = rng.permuted(np.tile(np.arange(contacts), (count, 1)), axis=1)
        shuffled = np.take_along_axis(batch, order[:, :, None], axis=1)
        return rows_as_bytes(shuffled.reshape(count, contacts * HASH_SIZE))

    def shuffled(self, seed: int = 0) -> Registry:
        """The same users in a random order (as an account service would export them)."""
        rng = np.random.default_rng([self.seed, seed, self.size])
        order = rng.permutation(self.size)
        lens = self.id_lens[order]
        starts = (np.cumsum(self.id_lens + 1) - self.id_lens - 1)[order]
        spans = lens + 1  # with the NUL
        within = np.arange(int(spans.sum())) - np.repeat(np.cumsum(spans) - spans, spans)
        blob = np.frombuffer(self.id_blob, dtype=np.uint8)[np.repeat(starts, spans) + within]
        keys = np.frombuffer(self.keys, dtype=np.uint8).reshape(self.size, 16)[order]
        return Registry(
            seed=self.seed,
            hashes=self.hashes[order],
            id_blob=blob.tobytes(),
            id_lens=lens,
            discoverable=self.discoverable[order],
            secret=self.secret,
            keys=keys.tobytes(),
        )


def make_registry(n: int, seed: int = 1) -> Registry:
    """A registry of n users; the same (n, seed) always gives the same registry."""
    rng = np.random.default_rng([seed, n])
    secret = rng.bytes(32)
    hashes = np.frombuffer(rng.bytes(HASH_SIZE * n), dtype=np.uint8).reshape(n, HASH_SIZE)
    keys = np.frombuffer(KeyRing.from_secret(secret).directory_keys(hashes.tobytes()), dtype=np.uint8)
    # Order users by key (the first 8 bytes decide, ties are astronomically rare and harmless).
    order = np.argsort(keys.reshape(n, 16)[:, :8].copy().view(">u8").ravel(), kind="stable")
    blob, lens = user_ids(rng, n)
    return Registry(
        seed=seed,
        hashes=hashes[order],
        id_blob=blob,
        id_lens=lens,
        discoverable=rng.random(n) < DISCOVERABLE_FRACTION,
        secret=secret,
        keys=keys.reshape(n, 16)[order].tobytes(),
    )


def msisdns(n: int, seed: int = 1) -> npt.NDArray[np.int64]:
    """n distinct German mobile numbers in MSISDN form (digits, no ``+``): 49 15x xxxxxxxx."""
    rng = np.random.default_rng([seed, n, 49])
    space = 10**9
    # i * a mod space is a bijection of 0..space-1 when gcd(a, space) = 1: distinct numbers, no sort.
    a = 2 * int(rng.integers(10**7, 10**8)) + 1
    while a % 5 == 0:
        a += 2
    offset = int(rng.integers(0, space))
    return 4915000000000 + (np.arange(n, dtype=np.int64) * a + offset) % space


# -- the embedded store ----------------------------------------------------------------------------

SQLITE_ROWS_PER_CHUNK = 500_000


def write_server_secret(data_dir: Path, secret: bytes) -> None:
    """The server secret file as ``discovery serve`` expects it (hex, mode 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "server.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex() + "\n")


def create_store(data_dir: Path) -> Path:
    """An empty embedded store with the service's current schema (made by the service's own code)."""
    from discovery.store import open_store

    path = data_dir / "discovery.db"

    async def init() -> None:
        store = await open_store(f"sqlite://{path}")
        await store.close()

    asyncio.run(init())
    return path


def write_store(data_dir: Path, registry: Registry) -> Path:
    """The embedded store of ``registry`` plus its server secret, written directly.

    The schema comes from the service (``create_store``); the ``users`` rows go in with
    ``executemany`` in chunks, from lists made by numpy (no Python loop per user). A store left in
    ``data_dir`` by an earlier run (``--work-dir``) is replaced: its users would collide with the
    rows written again, and its quota buckets would hold the earlier run's charges.
    """
    write_server_secret(data_dir, registry.secret)
    for suffix in ("", "-wal", "-shm"):
        (data_dir / f"discovery.db{suffix}").unlink(missing_ok=True)
    path = create_store(data_dir)
    ids = split_ids(registry.id_blob)
    keys: list[bytes] = np.frombuffer(registry.keys, dtype=_V16).tolist()
    discoverable = registry.discoverable.astype(np.int64).tolist()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB
        conn.execute("BEGIN")
        for start in range(0, registry.size, SQLITE_ROWS_PER_CHUNK):
            end = start + SQLITE_ROWS_PER_CHUNK
            conn.executemany(
                "INSERT INTO users(user_id, dkey, discoverable, announce_join, notify_on_join)"
                " VALUES (?, ?, ?, 1, 0)",
                zip(ids[start:end], keys[start:end], discoverable[start:end], strict=True),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path
