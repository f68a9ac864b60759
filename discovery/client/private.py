"""Private discovery mode in the SDK: the client's state, persistable like DiscoverState.

`PrivateState` holds the pinned public key, and per key epoch the OPRF output of every contact evaluated so
far (so a re-sync of an unchanged book evaluates and sends nothing), the snapshot as of a cursor (kept fresh
with deltas), and the user ids already opened for a tag (dropped when a delta touches the tag). The plans in
`client/_calls.py` use it; the wire scheme is `discovery.private_scheme` (docs/private-mode.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
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

    def check_key(self, epoch: int, public_key: bytes) -> None:
        """Pin the key (first use) or refuse a different one; a new epoch clears the epoch's cache."""
        if self.pinned_key is None:
            self.pinned_key = bytes(public_key)
        elif bytes(public_key) != self.pinned_key:
            raise PrivateKeyMismatch("the server's private-mode public key is not the pinned key")
        if self.epoch != epoch:
            self.epoch = epoch
            self.outputs.clear()
            self.opened.clear()
            self.snapshot = None

    def missing(self, hashes: Iterable[bytes]) -> list[bytes]:
        """The hashes without a cached output, once each, in order."""
        return [h for h in dict.fromkeys(hashes) if h not in self.outputs]

    def apply(self, delta: Delta) -> None:
        """Bring the snapshot to the delta's cursor (SchemeError: fetch a new snapshot)."""
        from discovery.private_scheme import SchemeError, apply_delta

        if self.snapshot is None:
            raise SchemeError("no snapshot to apply a delta to")
        self.snapshot = apply_delta(self.snapshot, delta)
        for record in delta.records:
            self.opened.pop(record.tag, None)

    def joined(self, delta: Delta) -> list[bytes]:
        """The evaluated contacts (hashes) whose tag a delta reports present: join events, from deltas."""
        from discovery.private_scheme import tag_of

        present = {record.tag for record in delta.records if record.present}
        return [h for h, y in self.outputs.items() if tag_of(y) in present]

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
