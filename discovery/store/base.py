"""The Store protocol: everything the service keeps at rest, for every backend.

What may be kept is fixed by the privacy model (see README): directory keys and the
user ids and settings they belong to, the change feed of that registry, and later
watches, inboxes and quota counters. Never a number or a contact hash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from discovery.core.model import (
    ImportReport,
    NewUser,
    RegisterOutcome,
    RegistryChange,
    RegistrySlice,
    Settings,
    UserRecord,
)


class RegistryStore(Protocol):
    """Directory key -> user, with a change feed that keeps in-memory indexes fresh.

    Every mutation appends to the change feed in the same atomic step.
    """

    async def register(self, user: NewUser) -> RegisterOutcome:
        """Add a user. Re-registering the same user with the same key is UNCHANGED.

        Raises ContactHashTaken or UserIdTaken.
        """
        ...

    async def unregister(self, user_id: str) -> UserRecord | None:
        """Remove every record that names the user; None if not registered."""
        ...

    async def delete_user_data(self, user_id: str) -> int:
        """Forget what is kept on the user's behalf (watches, inbox); the registration stays.

        Returns how many records were removed.
        """
        ...

    async def change_number(self, user_id: str, directory_key: bytes) -> UserRecord:
        """Move a user to a new key; returns the record as it was before.

        Raises UserNotRegistered or ContactHashTaken.
        """
        ...

    async def import_users(self, users: Sequence[NewUser], first_position: int) -> ImportReport:
        """Register a batch; each user is imported, unchanged or rejected with a reason."""
        ...

    async def get_user(self, user_id: str) -> UserRecord | None: ...

    async def update_settings(self, user_id: str, settings: Settings) -> UserRecord | None:
        """Replace a user's settings; None if not registered."""
        ...

    def iter_registry(self, batch_size: int) -> AsyncIterator[RegistrySlice]:
        """The whole registry in batches, for loading an index."""
        ...

    async def registry_size(self) -> int: ...

    async def feed_head(self) -> int:
        """The sequence number of the newest change (0 when there is none)."""
        ...

    async def feed_read(self, after: int, limit: int) -> list[RegistryChange]:
        """Changes with seq > after, oldest first. Raises FeedTruncated when they were pruned."""
        ...

    async def feed_wait(self, after: int, timeout: float) -> None:
        """Return when a change newer than ``after`` may exist, or after ``timeout`` seconds."""
        ...


class Store(RegistryStore, Protocol):
    """The whole persistence surface of the service."""

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        ...

    async def close(self) -> None: ...
