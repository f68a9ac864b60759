"""The bulk import entry points of the Store protocol, for a store that imports column by column."""

from __future__ import annotations

from collections.abc import Sequence

from discovery.core.model import ImportGroup, ImportReport, NewUser


class GroupImports:
    """``import_users`` (users with their announcements made) and ``import_groups`` in terms of
    the store's ``_import_groups``, which imports ImportGroups in order."""

    async def _import_groups(self, groups: Sequence[ImportGroup], first_position: int) -> list[ImportReport]:
        """Each group as ``import_users`` would, positions counted from ``first_position``."""
        raise NotImplementedError

    async def import_groups(self, groups: Sequence[ImportGroup]) -> list[ImportReport]:
        return await self._import_groups(groups, 0)

    async def import_users(self, users: Sequence[NewUser], first_position: int) -> ImportReport:
        (report,) = await self._import_groups([ImportGroup.of(users)], first_position)
        return report
