"""A request's directory keys sorted once, shared by the duplicate check and the quota.

Discover sorts the keys of a request a single time: the sorted form finds duplicates
(validation), counts the keys that are new against a previous set, and is what the
previous-set token is computed over (quota).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Words = npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class SortedKeys:
    """n directory keys in byte-string order, as the numbers of their big-endian halves
    (contiguous, so sorting and searching run at native speed); ``order[i]`` is the
    position in the request of the i-th key."""

    high: Words
    low: Words
    order: npt.NDArray[np.intp]

    def __len__(self) -> int:
        return int(self.high.shape[0])

    def packed(self) -> bytes:
        """The keys, 16 bytes each, in byte-string order."""
        out = np.empty((len(self), 2), dtype=">u8")
        out[:, 0] = self.high
        out[:, 1] = self.low
        return out.tobytes()

    def first_duplicate(self) -> tuple[int, int] | None:
        """Request positions (first, second) of a key that occurs twice, or None."""
        same = np.flatnonzero((self.high[1:] == self.high[:-1]) & (self.low[1:] == self.low[:-1]))
        if not same.size:
            return None
        a, b = int(self.order[same[0]]), int(self.order[same[0] + 1])
        return min(a, b), max(a, b)


def sort_keys(keys: bytes) -> SortedKeys:
    """Sort packed 16-byte keys. Sorting on the high half alone is exact unless two keys
    share it (a 2^-64 event for PRF outputs, or a duplicate); only then sort on both."""
    words = np.frombuffer(keys, dtype=">u8").reshape(-1, 2)
    high = words[:, 0].astype(np.uint64)
    low = words[:, 1].astype(np.uint64)
    order = np.argsort(high)
    sorted_high = high[order]
    if sorted_high.size > 1 and bool((sorted_high[1:] == sorted_high[:-1]).any()):
        order = np.lexsort((low, high))
        sorted_high = high[order]
    return SortedKeys(sorted_high, low[order], order)
