"""Re-syncing an address book for free: the previous set and token of each request chunk.

The server charges a user's quota only for contacts that were not in the previous
request, proven by the token of that request's response. The SDK keeps, per request
chunk, the contact hashes it sent and the token it got back, on the client side only,
and sends them with the next request of that chunk.

Chunking is sticky so that chunks line up between syncs: each contact goes back into
the chunk that held it last time; new contacts fill chunks that have room, in hash
order, then new chunks. So re-syncing an unchanged address book sends the same chunks
and costs nothing, adding a contact costs one, and removing contacts costs nothing.

API::

    DiscoverState()                         # empty; or DiscoverState.from_bytes(saved)
        .to_bytes() -> bytes                # to persist it (it holds contact hashes: keep it
                                            # as private as the address book itself)
        .clear()
        len(state)                          # number of chunks remembered
    DiscoverRun(state, hashes, max_per_request)   # one discover_hashes call (used by the clients)

A chunk whose token the server refuses (expired, or the server secret changed) is sent
again without it, paying for its contacts once.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from discovery.client.errors import DiscoveryError
from discovery.contact_hash import HASH_SIZE
from discovery.v1 import discovery_pb2, errors_pb2

__all__ = ["DiscoverRun", "DiscoverState"]

_STATE_MAGIC = b"DSS1"


@dataclass(frozen=True, slots=True)
class _Chunk:
    hashes: tuple[bytes, ...]  # exactly the contact hashes the token covers, in the order sent
    token: bytes


class DiscoverState:
    """The previous set and token of each request chunk; see the module docstring."""

    def __init__(self) -> None:
        self._chunks: list[_Chunk] = []

    def __len__(self) -> int:
        return len(self._chunks)

    def clear(self) -> None:
        self._chunks = []

    def to_bytes(self) -> bytes:
        parts = [_STATE_MAGIC, struct.pack(">I", len(self._chunks))]
        for chunk in self._chunks:
            parts.append(struct.pack(">IH", len(chunk.hashes), len(chunk.token)))
            parts.append(chunk.token)
            parts.extend(chunk.hashes)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> DiscoverState:
        """Load what :meth:`to_bytes` saved; ValueError if it is not such data."""
        state = cls()
        view = memoryview(data)
        try:
            if bytes(view[:4]) != _STATE_MAGIC:
                raise ValueError("not a saved DiscoverState")
            (count,) = struct.unpack_from(">I", view, 4)
            at = 8
            for _ in range(count):
                n, token_len = struct.unpack_from(">IH", view, at)
                at += 6
                token = bytes(view[at : at + token_len])
                at += token_len
                hashes = tuple(bytes(view[at + i * HASH_SIZE : at + (i + 1) * HASH_SIZE]) for i in range(n))
                at += n * HASH_SIZE
                if len(token) != token_len or at > len(view):
                    raise ValueError("truncated DiscoverState")
                state._chunks.append(_Chunk(hashes, token))
        except struct.error:
            raise ValueError("truncated DiscoverState") from None
        if at != len(view):
            raise ValueError("trailing bytes after DiscoverState")
        return state


@dataclass(slots=True)
class _Planned:
    indices: list[int]  # into the hashes of the run, in the order sent
    previous: _Chunk | None


class DiscoverRun:
    """One ``discover_hashes`` call: the sticky plan, the matches, and the state to keep.

    The clients call :meth:`request` and :meth:`accept` for each planned chunk, and
    :meth:`finish` at the end whether or not every call succeeded: chunks that were
    answered keep their new token, the others keep their old one.
    """

    def __init__(self, state: DiscoverState, hashes: list[bytes], max_per_request: int) -> None:
        if max_per_request < 1:
            raise ValueError("max_per_request must be at least 1")
        for h in hashes:
            if len(h) != HASH_SIZE:
                raise ValueError(f"a contact hash must be {HASH_SIZE} bytes")
        self._state = state
        self._hashes = hashes
        self._planned = _plan(state._chunks, hashes, max_per_request)
        self._kept: list[_Chunk | None] = [p.previous for p in self._planned]
        self.matches: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._planned)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._planned)))

    def request(self, k: int, *, with_previous: bool = True) -> discovery_pb2.DiscoverRequest:
        planned = self._planned[k]
        request = discovery_pb2.DiscoverRequest(
            contact_hashes=b"".join(self._hashes[i] for i in planned.indices)
        )
        if with_previous and planned.previous is not None:
            request.previous_token = planned.previous.token
            request.previous_contact_hashes = b"".join(planned.previous.hashes)
        return request

    def has_previous(self, k: int) -> bool:
        return self._planned[k].previous is not None

    @staticmethod
    def refused_previous(error: DiscoveryError) -> bool:
        """Whether the server refused the previous set (then resend without it)."""
        return error.reason_is(errors_pb2.PREVIOUS_SET_REFUSED)

    def accept(self, k: int, response: discovery_pb2.DiscoverResponse) -> None:
        planned = self._planned[k]
        indices = list(response.match_indices)
        user_ids = list(response.match_user_ids)
        if len(indices) != len(user_ids):
            raise ValueError("malformed DiscoverResponse: match_indices and match_user_ids differ in length")
        for index, user_id in zip(indices, user_ids, strict=True):
            if index >= len(planned.indices):
                raise ValueError("malformed DiscoverResponse: match index out of range")
            self.matches.append((planned.indices[index], user_id))
        sent = tuple(self._hashes[i] for i in planned.indices)
        self._kept[k] = _Chunk(sent, bytes(response.token)) if response.token else None

    def finish(self) -> None:
        """Keep the chunks of this run as the state; chunks with no contact left are dropped."""
        self._state._chunks = [chunk for chunk in self._kept if chunk is not None]
        self.matches.sort()


def _plan(chunks: list[_Chunk], hashes: list[bytes], max_per_request: int) -> list[_Planned]:
    position: dict[bytes, int] = {}
    for i, h in enumerate(hashes):
        position.setdefault(h, i)
    placed: set[int] = set()
    planned: list[_Planned] = []
    for chunk in chunks:
        kept = [position[h] for h in chunk.hashes if h in position and position[h] not in placed]
        kept = kept[:max_per_request]
        placed.update(kept)
        planned.append(_Planned(kept, chunk))
    # Duplicates of a hash stay in the request so the server reports them as before.
    remaining = sorted((i for i in range(len(hashes)) if i not in placed), key=lambda i: (hashes[i], i))
    at = 0
    for slot in planned:
        room = max_per_request - len(slot.indices)
        if room > 0 and at < len(remaining):
            slot.indices.extend(remaining[at : at + room])
            at += room
    while at < len(remaining):
        planned.append(_Planned(remaining[at : at + max_per_request], None))
        at += max_per_request
    return [slot for slot in planned if slot.indices]


class HasDiscoverState:
    """The ``discover_state`` attribute of the discovery clients."""

    _discover_state: DiscoverState | None = None

    @property
    def discover_state(self) -> DiscoverState:
        """The previous sets and tokens of this client's Discover requests. Assign one
        loaded with :meth:`DiscoverState.from_bytes` to continue from a saved state."""
        if self._discover_state is None:
            self._discover_state = DiscoverState()
        return self._discover_state

    @discover_state.setter
    def discover_state(self, state: DiscoverState) -> None:
        self._discover_state = state
