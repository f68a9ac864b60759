"""What the domain hands the join store, made under a fixed test server secret.

The store never sees a directory key of a watch, only its watch tag, and events carry a sealed
notice: store-level tests build both here and open notices back.
"""

from __future__ import annotations

from discovery.core.hashing import KeyRing
from discovery.core.joins import make_announcement
from discovery.core.model import Announcement, InboxEntry, NewUser, PrivacySettings

RING = KeyRing.from_secret(bytes(range(32)))


def announcement(user_id: str, directory_key: bytes, delay: float = 0.0) -> Announcement:
    made = make_announcement(RING, user_id, directory_key)
    return Announcement(made.watch_tag, made.joiner_tag, made.notice, delay)


def new_user(user_id: str, directory_key: bytes, settings: PrivacySettings, delay: float = 0.0) -> NewUser:
    return NewUser(user_id, directory_key, settings, announcement(user_id, directory_key, delay))


def tags(*directory_keys: bytes) -> bytes:
    """The watch tags of directory keys, packed (what add_watches takes)."""
    return RING.watch_tags(b"".join(directory_keys))


def jtag(user_id: str) -> bytes:
    return RING.joiner_tag(user_id)


def joiner(entry: InboxEntry) -> str:
    return RING.open_notice(entry.notice)[0]


def joined_key(entry: InboxEntry) -> bytes:
    return RING.open_notice(entry.notice)[1]
