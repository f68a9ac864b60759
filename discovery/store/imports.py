"""The bulk import entry points of the Store protocol, for a store that imports column by column."""

from __future__ import annotations

from collections.abc import Sequence

from discovery.core.model import ImportGroup, ImportReport, NewUser


class GroupImports:
    """``import_users`` and ``import_user_groups`` (users with their announcements made) in
    terms of the store's ``_import_groups``, which imports ImportGroups in order."""

    async def _import_groups(self, groups: Sequence[ImportGroup], first_position: int) -> list[ImportReport]:
        """Each group as ``import_users`` would, positions counted from ``first_position``."""
        raise NotImplementedError

    async def import_groups(self, groups: Sequence[ImportGroup]) -> list[ImportReport]:
        return await self._import_groups(groups, 0)

    async def import_users(self, users: Sequence[NewUser], first_position: int) -> ImportReport:
        (report,) = await self._import_groups([ImportGroup.of(users)], first_position)
        return report

    async def import_user_groups(self, groups: Sequence[Sequence[NewUser]]) -> list[ImportReport]:
        return await self._import_groups([ImportGroup.of(users) for users in groups], 0)
