"""A request's directory keys, sorted at most once, shared by the duplicate check and the quota.

The sorted form finds duplicates (validation), counts the keys that are new against a
previous set (quota), and is what the previous-set tokens of version 1 were computed over;
it is built only when one of them needs it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Words = npt.NDArray[np.uint64]
KEY_BYTES = 16


class SortedKeys:
    """n directory keys and, computed on first use, their byte-string order: the keys as the
    numbers of their big-endian halves (contiguous, so sorting and searching run at native
    speed), sorted; ``order[i]`` is the position in the request of the i-th key.

    The duplicate check of a request (:meth:`first_duplicate`) sorts the keys' first 4 bytes
    alone and builds the order only when two of them are equal (a duplicate, or a rare tie of
    PRF outputs); an unchanged re-sync, whose token is order-independent (core/quota.py), then
    never sorts the keys themselves."""

    __slots__ = ("_high", "_low", "_order", "raw")

    def __init__(self, raw: bytes) -> None:
        #: The keys, 16 bytes each, in request order.
        self.raw = raw
        self._high: Words | None = None
        self._low: Words | None = None
        self._order: npt.NDArray[np.intp] | None = None

    def __len__(self) -> int:
        return len(self.raw) // KEY_BYTES

    def _sorted(self) -> tuple[Words, Words, npt.NDArray[np.intp]]:
        """Sorting on the high half alone is exact unless two keys share it; only then sort on both."""
        if self._high is None or self._low is None or self._order is None:
            words = np.frombuffer(self.raw, dtype=">u8").reshape(-1, 2)
            high = words[:, 0].astype(np.uint64)
            low = words[:, 1].astype(np.uint64)
            order = np.argsort(high)
            sorted_high = high[order]
            if sorted_high.size > 1 and bool((sorted_high[1:] == sorted_high[:-1]).any()):
                order = np.lexsort((low, high))
                sorted_high = high[order]
            self._high, self._low, self._order = sorted_high, low[order], order
        return self._high, self._low, self._order

    @property
    def high(self) -> Words:
        return self._sorted()[0]

    @property
    def low(self) -> Words:
        return self._sorted()[1]

    @property
    def order(self) -> npt.NDArray[np.intp]:
        return self._sorted()[2]

    def packed(self) -> bytes:
        """The keys, 16 bytes each, in byte-string order."""
        high, low, _ = self._sorted()
        out = np.empty((len(self), 2), dtype=">u8")
        out[:, 0] = high
        out[:, 1] = low
        return out.tobytes()

    def first_duplicate(self) -> tuple[int, int] | None:
        """Request positions (first, second) of a key that occurs twice, or None."""
        if len(self) < 2:
            return None
        if self._high is None:
            # Equal keys have equal first 4 bytes (read in any fixed byte order): none equal, no
            # duplicate, and no order to build. Keys are PRF outputs, so a tie without a
            # duplicate (about n^2 / 2^33: 1e-4 for 1,000 keys) is rare, and only costs the sort.
            heads = np.sort(np.frombuffer(self.raw, dtype=np.uint32)[::4])
            if not bool((heads[1:] == heads[:-1]).any()):
                return None
        high, low, order = self._sorted()
        same = np.flatnonzero((high[1:] == high[:-1]) & (low[1:] == low[:-1]))
        if not same.size:
            return None
        a, b = int(order[same[0]]), int(order[same[0] + 1])
        return min(a, b), max(a, b)


def sort_keys(keys: bytes) -> SortedKeys:
    """The packed 16-byte ``keys`` as a SortedKeys (sorted when first needed)."""
    return SortedKeys(keys)
