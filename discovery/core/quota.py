"""Anti-enumeration for Discover: a quota on new contacts, a request rate, previous-set tokens.

A scraper enumerates a number space through contact discovery; an honest client keeps
asking about the same address book. So a user pays quota only for contacts that were
not in their previous request (Signal's CDSI works this way):

* Each user has a leaky bucket of new contacts (capacity and refill configurable,
  50,000 and 6 per hour by default) and a second bucket of requests (a rate limit).
  Both live in the store, so every instance shares them, and each charge is atomic.
* Every Discover response carries a token: a MAC, under a key derived from the server
  secret, over the caller's user id, the issue time and the request's directory keys
  sorted as byte strings. The next request may send those contact hashes again with
  the token; contacts of the new request that are among them are free. The server
  recomputes the MAC from what the client sent, so it keeps no set to check against.

Order of checks, and why:

1. The request rate is charged first, for every request, valid or not: it is what
   stops a flood of requests that are then rejected (those charge no contact quota).
2. The request and the previous set are validated and the token verified. A request
   refused here, or by the contact quota, charges no contact quota and is refused
   before the lookup, so it learns nothing about any number.
3. The contact quota is charged for the new contacts only, then the lookup runs.

Token layout (41 bytes): version 0x01, issue time as uint64 big-endian seconds, then
BLAKE3 keyed with ``KeyRing.token_key`` over ``version || issued || len(user id) as
uint16 big-endian || user id (UTF-8) || sorted directory keys``. The issue time bounds
replay; an expired or forged token gets INVALID_ARGUMENT, and the client starts over
without one.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import blake3
import numpy as np

from discovery.core.errors import InvalidArgument, QuotaExceeded
from discovery.core.hashing import KeyRing
from discovery.core.keyset import SortedKeys, sort_keys
from discovery.core.model import QuotaCharge
from discovery.core.ports import QuotaStore
from discovery.core.validation import check_no_duplicate_keys, check_packed_hashes

TOKEN_VERSION = 1
TOKEN_SIZE = 1 + 8 + 32
MAX_RETRY_SECONDS = 365 * 86400.0


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """The limits of one user. A capacity or burst of 0 switches that limit off."""

    capacity: int = 50_000
    refill_per_hour: float = 6.0
    rate_burst: int = 30
    rate_per_minute: float = 10.0
    token_ttl: float = 30 * 86400.0
    max_clock_skew: float = 300.0


def count_new(current: SortedKeys, previous: SortedKeys) -> int:
    """How many keys of ``current`` are not in ``previous``, vectorised.

    Each key is found by binary search on the high half (sorted queries keep the search
    in cache) and compared in full. If the previous set held two keys with the same high
    half (2^-64 for PRF outputs), a key equal to the second would count as new: this can
    overcharge, never undercharge.
    """
    n, m = len(current), len(previous)
    if n == 0 or m == 0:
        return n
    index = np.minimum(np.searchsorted(previous.high, current.high), m - 1)
    found = (previous.high[index] == current.high) & (previous.low[index] == current.low)
    return n - int(np.count_nonzero(found))


class SetTokens:
    """Issues and verifies previous-set tokens; see the module docstring for the layout."""

    def __init__(self, key: bytes, ttl: float, max_clock_skew: float) -> None:
        self._key = key
        self._ttl = ttl
        self._skew = max_clock_skew

    def _tag(self, caller: str, issued: bytes, keys: SortedKeys) -> bytes:
        user = caller.encode("utf-8")
        mac = blake3.blake3(key=self._key)
        mac.update(bytes([TOKEN_VERSION]) + issued + len(user).to_bytes(2, "big") + user)
        mac.update(keys.packed())
        return mac.digest()

    def issue(self, caller: str, keys: SortedKeys, now: float) -> bytes:
        issued = int(now).to_bytes(8, "big")
        return bytes([TOKEN_VERSION]) + issued + self._tag(caller, issued, keys)

    def verify(self, caller: str, keys: SortedKeys, token: bytes, now: float) -> None:
        """Raise InvalidArgument unless ``token`` was issued to ``caller`` for exactly this set."""
        if len(token) != TOKEN_SIZE or token[0] != TOKEN_VERSION:
            raise InvalidArgument.field("previous_token", "is not a token this server issued")
        issued = token[1:9]
        if not hmac.compare_digest(self._tag(caller, issued, keys), token[9:]):
            raise InvalidArgument.field(
                "previous_token",
                "does not match previous_contact_hashes and the caller; "
                "send the request without previous_token and previous_contact_hashes",
            )
        age = now - int.from_bytes(issued, "big")
        if age > self._ttl or age < -self._skew:
            raise InvalidArgument.field(
                "previous_token",
                "has expired; send the request without previous_token and previous_contact_hashes",
            )


BUCKET_PURPOSES = ("requests", "contacts")


class Gate(Protocol):
    """What Discover passes before the lookup (DiscoverGate, or AllowAllGate without quotas)."""

    async def admit(self, caller: str) -> None: ...

    async def charge(
        self, caller: str, current: SortedKeys, previous_hashes: bytes, previous_token: bytes
    ) -> bytes: ...

    async def forget(self, user_id: str) -> int: ...

    async def levels(self, user_id: str) -> list[tuple[str, float, float]]:
        """(purpose, level now, capacity) of each of the user's buckets (ExportMyData)."""
        ...


class AllowAllGate:
    """A gate that admits every request, charges nothing and issues no token (tests, tools)."""

    async def admit(self, caller: str) -> None:
        return None

    async def charge(
        self, caller: str, current: SortedKeys, previous_hashes: bytes, previous_token: bytes
    ) -> bytes:
        return b""

    async def forget(self, user_id: str) -> int:
        return 0

    async def levels(self, user_id: str) -> list[tuple[str, float, float]]:
        return []


ALLOW_ALL = AllowAllGate()


class DiscoverGate:
    """What Discover checks before the lookup: request rate, previous set, contact quota."""

    def __init__(
        self,
        store: QuotaStore,
        keys: KeyRing,
        policy: QuotaPolicy,
        max_hashes_per_request: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._keys = keys
        self.policy = policy
        self._max_hashes = max_hashes_per_request
        self._clock = clock
        self._tokens = SetTokens(keys.token_key, policy.token_ttl, policy.max_clock_skew)

    async def forget(self, user_id: str) -> int:
        """Drop the user's buckets: an unregistered user leaves no record that names them."""
        return await self._store.forget_buckets([f"{purpose}:{user_id}" for purpose in BUCKET_PURPOSES])

    async def levels(self, user_id: str) -> list[tuple[str, float, float]]:
        """Each enforced bucket's level, read by charging nothing (which leaves it as it is)."""
        policy, now = self.policy, self._clock()
        limits = (
            ("requests", policy.rate_burst, policy.rate_per_minute / 60.0),
            ("contacts", policy.capacity, policy.refill_per_hour / 3600.0),
        )
        out = []
        for purpose, capacity, leak in limits:
            if capacity > 0:
                outcome = await self._store.charge(f"{purpose}:{user_id}", 0, capacity, leak, now)
                out.append((purpose, outcome.level, float(capacity)))
        return out

    async def admit(self, caller: str) -> None:
        """Charge one request to the caller's request rate, or QuotaExceeded."""
        policy = self.policy
        if policy.rate_burst > 0:
            await self._charge(
                caller,
                "requests",
                1,
                policy.rate_burst,
                policy.rate_per_minute / 60.0,
                self._clock(),
                "too many Discover requests",
                lambda _: (
                    f"at most {policy.rate_burst} Discover requests in a burst, "
                    f"refilling {policy.rate_per_minute:g} per minute"
                ),
            )

    async def charge(
        self, caller: str, current: SortedKeys, previous_hashes: bytes, previous_token: bytes
    ) -> bytes:
        """Charge the contacts of ``current`` not in the proven previous set; returns the token
        for ``current``. Raises InvalidArgument for a bad previous set, QuotaExceeded over quota;
        either way nothing is charged."""
        policy = self.policy
        if policy.capacity <= 0:
            # No contact quota: nothing to charge, and a token would prove nothing.
            check_packed_hashes(previous_hashes, self._max_hashes, field="previous_contact_hashes")
            return b""
        now = self._clock()
        previous = self._previous(caller, previous_hashes, previous_token, now)
        new = count_new(current, previous) if previous is not None else len(current)
        if new:
            await self._charge(
                caller,
                "contacts",
                new,
                policy.capacity,
                policy.refill_per_hour / 3600.0,
                now,
                "the quota of new contacts is exhausted",
                lambda outcome: (
                    f"this request has {new} new contacts and the quota allows "
                    f"{max(0, math.floor(policy.capacity - outcome.level))} now; it holds {policy.capacity} "
                    f"and refills {policy.refill_per_hour:g} per hour"
                ),
            )
        return self._tokens.issue(caller, current, now)

    async def _charge(
        self,
        caller: str,
        purpose: str,
        cost: int,
        capacity: int,
        leak: float,
        now: float,
        message: str,
        describe: Callable[[QuotaCharge], str],
    ) -> None:
        """Charge the caller's bucket for ``purpose``; QuotaExceeded (charging nothing) if it is full.
        The bucket's name holds the user id and never anything of the request."""
        outcome = await self._store.charge(f"{purpose}:{caller}", cost, capacity, leak, now)
        if not outcome.allowed:
            raise QuotaExceeded(
                message,
                subject=f"user:{caller}",
                description=describe(outcome),
                retry_after=_bounded(outcome.retry_after, outcome.level, leak),
            )

    def _previous(
        self, caller: str, previous_hashes: bytes, previous_token: bytes, now: float
    ) -> SortedKeys | None:
        """The verified previous set, or None when none was sent."""
        if not previous_token:
            if previous_hashes:
                raise InvalidArgument.field("previous_token", "is required with previous_contact_hashes")
            return None
        check_packed_hashes(previous_hashes, self._max_hashes, field="previous_contact_hashes")
        previous = sort_keys(self._keys.directory_keys(previous_hashes))
        check_no_duplicate_keys(previous, field="previous_contact_hashes")
        self._tokens.verify(caller, previous, previous_token, now)
        return previous


def _bounded(retry_after: float, level: float, leak: float) -> float:
    """A finite RetryInfo delay: when the cost can never fit, the time until the bucket is empty."""
    if math.isfinite(retry_after):
        return retry_after
    if leak > 0:
        return min(level / leak, MAX_RETRY_SECONDS)
    return MAX_RETRY_SECONDS
