"""Private discovery mode in the SDK: the client's state, persistable like DiscoverState.

`PrivateState` holds the pinned public keys (by key epoch), and for the current key epoch the OPRF output
of every contact evaluated so far (so a re-sync of an unchanged book evaluates and sends nothing), the
snapshot as of a cursor (kept fresh with deltas), and the user ids already opened for a tag (dropped when
a delta touches the tag, or replaced by the ids a join-stream delta carries). The plans in
`client/_calls.py` use it; the wire scheme is `discovery.private_scheme` (docs/private-mode.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from discovery.private_scheme import Delta, Snapshot

_MAGIC_V1 = b"DPC1"  # before key epochs: one pinned key
_MAGIC = b"DPC2"
_HASH = 32
_KEY = 32
_V1_HEAD = struct.Struct(">B32sqI")
_V2_HEAD = struct.Struct(">B32sqHHI")  # has pinned_key, pinned_key, epoch, #pinned_keys, #seen_keys, #outputs
_EPOCH_KEY = struct.Struct(">I32s")


_OUTPUT_SIZE = 64


class PrivateKeyMismatch(ValueError):
    """The server's public key is not the pinned one: its evaluations could tag this client."""


class KeyEpochChanged(ValueError):
    """A response of another key epoch than the params': an instance on the other side of a rolling key
    switch (the SDK starts the sync over once before raising it)."""


@dataclass
class PrivateState:
    """What a private-mode client keeps between syncs (`to_bytes` / `from_bytes` to persist it).

    The keys the deployment publishes, to pin: ``pinned_keys`` (key epoch -> 32-byte public key; during a
    key rotation, the current and the next epoch's), or ``pinned_key`` (one key, whatever the epoch: the
    API before key epochs). With either, a server presenting a key that is not pinned for its epoch is
    refused (``PrivateKeyMismatch``). With neither, keys are trusted on first use, by epoch
    (``seen_keys``): the first key of an epoch newer than every epoch seen is accepted (a rotation is
    announced by its epoch), another key for an epoch seen, or a key of an older epoch, is refused.
    A new epoch drops the outputs, opened ids and snapshot, which are of the old key.
    """

    pinned_key: bytes | None = None
    epoch: int | None = None
    outputs: dict[bytes, bytes] = field(default_factory=dict)  # contact hash -> y, for `epoch`
    snapshot: Snapshot | None = None
    opened: dict[bytes, tuple[str, ...]] = field(default_factory=dict)  # tag -> user ids (bucket opened)
    evaluations: int = 0  # elements sent for evaluation by this state, all syncs together
    tags: dict[bytes, bytes] = field(default_factory=dict, repr=False, compare=False)  # y -> its tag
    pinned_keys: dict[int, bytes] = field(default_factory=dict)  # epoch -> configured public key
    seen_keys: dict[int, bytes] = field(default_factory=dict)  # epoch -> key trusted on first use

    def tag_of(self, y: bytes) -> bytes:
        """The tag of an output (an HMAC), computed once per output and kept for later syncs and deltas."""
        tag = self.tags.get(y)
        if tag is None:
            from discovery.private_scheme import tag_of

            tag = self.tags[y] = tag_of(y)
        return tag

    def check_key(self, epoch: int, public_key: bytes) -> None:
        """Accept the server's key of ``epoch`` (pinned, or trusted on first use) or refuse it; a new
        epoch clears the epoch's cache."""
        key = bytes(public_key)
        if self.pinned_keys or self.pinned_key is not None:
            if self.pinned_keys.get(epoch) != key and self.pinned_key != key:
                pinned = "is not the key pinned" if epoch in self.pinned_keys else "has no key pinned"
                raise PrivateKeyMismatch(f"the server's private-mode key epoch {epoch} {pinned}")
        else:
            seen = self.seen_keys.get(epoch)
            newest = max(self.seen_keys, default=0)
            if seen is None and epoch < newest:
                raise PrivateKeyMismatch(
                    f"the server's private-mode key epoch {epoch} is older than epoch {newest} already "
                    "seen: a key is trusted on first use only for a newer epoch"
                )
            if seen is not None and seen != key:
                raise PrivateKeyMismatch(
                    f"the server's private-mode public key of epoch {epoch} is not the one first seen"
                )
            self.seen_keys[epoch] = key
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
            _V2_HEAD.pack(
                self.pinned_key is not None,
                self.pinned_key or bytes(_KEY),
                self.epoch or -1,
                len(self.pinned_keys),
                len(self.seen_keys),
                len(self.outputs),
            ),
        ]
        parts += [
            _EPOCH_KEY.pack(e, k) for keys in (self.pinned_keys, self.seen_keys) for e, k in keys.items()
        ]
        parts += [h + y for h, y in self.outputs.items()]
        snapshot = self.snapshot.serialize() if self.snapshot is not None else b""
        parts.append(struct.pack(">QI", self.evaluations, len(snapshot)))
        parts.append(snapshot)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> PrivateState:
        from discovery.private_scheme import SchemeError, Snapshot

        keys: list[dict[int, bytes]] = [{}, {}]  # pinned, seen
        if data[:4] == _MAGIC_V1:  # its key (pinned or first seen) stays pinned for every epoch
            has_key, key, epoch, n = _V1_HEAD.unpack_from(data, 4)
            at = 4 + _V1_HEAD.size
        elif data[:4] == _MAGIC:
            has_key, key, epoch, n_pinned, n_seen, n = _V2_HEAD.unpack_from(data, 4)
            at = 4 + _V2_HEAD.size
            for keyring, count in zip(keys, (n_pinned, n_seen), strict=True):
                for _ in range(count):
                    e, k = _EPOCH_KEY.unpack_from(data, at)
                    keyring[e] = bytes(k)
                    at += _EPOCH_KEY.size
        else:
            raise SchemeError("not a private-mode state")
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
            bytes(key) if has_key else None,
            None if epoch < 0 else epoch,
            outputs,
            snapshot,
            {},
            evaluations,
            pinned_keys=keys[0],
            seen_keys=keys[1],
        )


class HasPrivateState:
    """The ``private_state`` attribute of the discovery clients."""

    _private_state: PrivateState | None = None

    @property
    def private_state(self) -> PrivateState:
        """Private mode's pinned keys and caches. Assign one (``PrivateState(pinned_keys={epoch: key})``
        or loaded with :meth:`PrivateState.from_bytes`) to pin keys or continue from a saved state."""
        if self._private_state is None:
            self._private_state = PrivateState()
        return self._private_state

    @private_state.setter
    def private_state(self, state: PrivateState) -> None:
        self._private_state = state
