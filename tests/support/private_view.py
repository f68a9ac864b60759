"""What a private-mode client finds in a snapshot, opened as the SDK opens it (sealed ids, no bucket)."""

from __future__ import annotations

from discovery.contact_hash import contact_hash
from discovery.private_scheme import Snapshot, open_sealed, tag_of


def holders(snapshot: Snapshot, outputs: dict[bytes, bytes], numbers: list[str]) -> set[tuple[str, str]]:
    """(number, user id) for each of ``numbers`` the snapshot holds; ``outputs``: contact hash -> y."""
    found: set[tuple[str, str]] = set()
    for number in numbers:
        y = outputs[contact_hash(number)]
        if snapshot.contains([tag_of(y)])[0]:
            for sealed in snapshot.sealed_for(tag_of(y)):
                user_id = open_sealed(y, snapshot.epoch, sealed, snapshot.id_pad)
                if user_id is not None:
                    found.add((number, user_id))
    return found
