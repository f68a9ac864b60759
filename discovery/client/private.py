"""Private discovery mode in the SDK: the client's state, persistable like DiscoverState.

`PrivateState` holds the pinned public key, and per key epoch the OPRF output of every contact evaluated so
far (so a re-sync of an unchanged book evaluates and sends nothing), the snapshot as of a cursor (kept fresh
with deltas), and the user ids already opened for a tag (dropped when a delta touches the tag, or replaced
by the ids a join-stream delta carries). The plans in `client/_calls.py` use it; the wire scheme is
`discovery.private_scheme` (docs/private-mode.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from discovery.private_scheme import Delta, Snapshot

_MAGIC = b"DPC1"
_HASH = 32


_OUTPUT_SIZE = 64


class PrivateKeyMismatch(ValueError):
    """The server's public key is not the pinned one: its evaluations could tag this client."""


@dataclass
class PrivateState:
    """What a private-mode client keeps between syncs (`to_bytes` / `from_bytes` to persist it).

    ``pinned_key``: the 32-byte public key the deployment publishes; a server presenting another key is
    refused (``PrivateKeyMismatch``). Without one, the first key seen is pinned (trust on first use).
    """

    pinned_key: bytes | None = None
    epoch: int | None = None
    outputs: dict[bytes, bytes] = field(default_factory=dict)  # contact hash -> y, for `epoch`
    snapshot: Snapshot | None = None
    opened: dict[bytes, tuple[str, ...]] = field(default_factory=dict)  # tag -> user ids (bucket opened)
    evaluations: int = 0  # elements sent for evaluation by this state, all syncs together
    tags: dict[bytes, bytes] = field(default_factory=dict, repr=False, compare=False)  # y -> its tag

    def tag_of(self, y: bytes) -> bytes:
        """The tag of an output (an HMAC), computed once per output and kept for later syncs and deltas."""
        tag = self.tags.get(y)
        if tag is None:
            from discovery.private_scheme import tag_of

            tag = self.tags[y] = tag_of(y)
        return tag

    def check_key(self, epoch: int, public_key: bytes) -> None:
        """Pin the key (first use) or refuse a different one; a new epoch clears the epoch's cache."""
        if self.pinned_key is None:
            self.pinned_key = bytes(public_key)
        elif bytes(public_key) != self.pinned_key:
            raise PrivateKeyMismatch("the server's private-mode public key is not the pinned key")
        if self.epoch != epoch:
            self.epoch = epoch
            self.outputs.clear()
            self.tags.clear()
            self.opened.clear()
            self.snapshot = None

    def missing(self, hashes: Iterable[bytes]) -> list[bytes]:
        """The hashes without a cached output, once each, in order."""
        return [h for h in dict.fromkeys(hashes) if h not in self.outputs]

    def apply(self, delta: Delta, opened: Mapping[bytes, tuple[str, ...]] | None = None) -> None:
        """Bring the snapshot to the delta's cursor (SchemeError: fetch a new snapshot). The ids opened for
        the tags it touches are dropped, or replaced by ``opened`` (those `joins` opened from the delta)."""
        from discovery.private_scheme import SchemeError, apply_delta

        if self.snapshot is None:
            raise SchemeError("no snapshot to apply a delta to")
        self.snapshot = apply_delta(self.snapshot, delta)
        for record in delta.records:
            self.opened.pop(record.tag, None)
        self.opened.update(opened or {})

    def joins(
        self, delta: Delta, hashes: Sequence[bytes]
    ) -> tuple[list[tuple[bytes, str]], dict[bytes, tuple[str, ...]]]:
        """The joins a join-stream delta (one with sealed ids) tells of among the evaluated ``hashes``:
        ``(contact hash, user id)``, opened from the delta's own records (no bucket); and the ids opened
        per tag, for `apply` (which the caller runs: this changes nothing).

        A user id is a join when its tag was absent from the snapshot, or was present with other opened ids;
        a delta that starts before the snapshot's cursor (a stream resumed from an older cursor) reports
        every id it carries for these contacts (at least once). A record that only restates a present
        contact (a change of other settings) is no join.
        """
        from discovery.private_scheme import SchemeError, open_any

        if not delta.with_sealed_ids:
            raise SchemeError("join events need a delta with sealed ids")
        by_tag: dict[bytes, list[bytes]] = {}
        for h in dict.fromkeys(hashes):
            y = self.outputs.get(h)
            if y is not None:
                by_tag.setdefault(self.tag_of(y), []).append(h)
        records = [r for r in delta.records if r.tag in by_tag]
        snapshot = self.snapshot
        catching_up = snapshot is not None and delta.from_cursor < snapshot.cursor
        before = snapshot.contains([r.tag for r in records]) if snapshot is not None else []
        events: list[tuple[bytes, str]] = []
        opened: dict[bytes, tuple[str, ...]] = {}
        for i, record in enumerate(records):
            was_present = bool(before[i]) if before else False
            for h in by_tag[record.tag]:
                user_ids = open_any(self.outputs[h], delta.epoch, record.sealed, delta.id_pad)
                old = self.opened.get(record.tag)
                events += [
                    (h, user_id)
                    for user_id in user_ids
                    if catching_up or not was_present or (old is not None and user_id not in old)
                ]
                opened[record.tag] = tuple(user_ids)
        return events, opened

    # -- persistence ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        parts = [
            _MAGIC,
            struct.pack(
                ">B32sqI",
                self.pinned_key is not None,
                self.pinned_key or bytes(32),
                self.epoch or -1,
                len(self.outputs),
            ),
        ]
        parts += [h + y for h, y in self.outputs.items()]
        snapshot = self.snapshot.serialize() if self.snapshot is not None else b""
        parts.append(struct.pack(">QI", self.evaluations, len(snapshot)))
        parts.append(snapshot)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> PrivateState:
        from discovery.private_scheme import SchemeError, Snapshot

        if data[:4] != _MAGIC:
            raise SchemeError("not a private-mode state")
        head = struct.Struct(">B32sqI")
        has_key, key, epoch, n = head.unpack_from(data, 4)
        at = 4 + head.size
        step = _HASH + _OUTPUT_SIZE
        outputs = {
            bytes(data[i : i + _HASH]): bytes(data[i + _HASH : i + step])
            for i in range(at, at + n * step, step)
        }
        at += n * step
        evaluations, size = struct.unpack_from(">QI", data, at)
        at += 12
        snapshot = Snapshot.deserialize(bytes(data[at : at + size])) if size else None
        return cls(
            bytes(key) if has_key else None, None if epoch < 0 else epoch, outputs, snapshot, {}, evaluations
        )


class HasPrivateState:
    """The ``private_state`` attribute of the discovery clients."""

    _private_state: PrivateState | None = None

    @property
    def private_state(self) -> PrivateState:
        """Private mode's pinned key and caches. Assign one (``PrivateState(pinned_key=...)`` or loaded
        with :meth:`PrivateState.from_bytes`) to pin a key or continue from a saved state."""
        if self._private_state is None:
            self._private_state = PrivateState()
        return self._private_state

    @private_state.setter
    def private_state(self, state: PrivateState) -> None:
        self._private_state = state
