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

1. The request and the previous set are validated and the token verified (CPU only).
   A request refused here is charged the request rate alone and charges no contact
   quota: the rate is what stops a flood of requests that are then rejected.
2. A valid request is charged, in one store round trip, one unit of the request rate
   and then its new contacts only; if the rate refuses it, no contacts are charged.
   A request refused by either is refused before the lookup, so it learns nothing
   about any number.
3. The lookup runs.

Token layout (41 bytes): version 0x02, issue time as uint64 big-endian seconds, then
BLAKE3 keyed with ``KeyRing.token_key`` over ``version || issued || len(user id) as
uint16 big-endian || user id (UTF-8) || n as uint32 big-endian || S``, where ``S`` is
the sum of the set's ``n`` elements ``AES-128(k_e, directory key)``, each read as two
little-endian 64-bit words and added word by word modulo 2^64 (16 bytes); ``k_e`` is
derived from the token key (BLAKE3 keyed with it, over :data:`ELEMENT_KEY_CONTEXT`).
The issue time bounds replay; an expired or forged token gets INVALID_ARGUMENT, and the
client starts over without one.

The sum does not depend on the keys' order, so a request is never sorted for its token.
It stays sound: the elements are outputs of a PRF under a key that never leaves the
server, so a set other than the proven one has the same ``(n, S)`` with probability about
2^-128 per guess whatever the client chooses (an additive multiset hash with a secret key;
duplicates, the only way to cancel an element, are refused), and the outer MAC binds the
caller and the issue time, so a token is neither forgeable nor usable by another caller.
Version 0x01 (the MAC over the directory keys sorted as byte strings, in place of ``n || S``)
is still accepted until its tokens expire; only 0x02 is issued.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import blake3
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from discovery.core.errors import InvalidArgument, QuotaExceeded, Reason
from discovery.core.hashing import KeyRing
from discovery.core.keyset import SortedKeys, sort_keys
from discovery.core.model import BucketCharge, QuotaCharge, UserRecord
from discovery.core.options import Options, non_negative, option, positive
from discovery.core.ports import QuotaStore
from discovery.core.validation import check_no_duplicate_keys, check_packed_hashes

TOKEN_VERSION = 2
#: The previous format (MAC over the sorted keys): verified, never issued.
SORTED_TOKEN_VERSION = 1
TOKEN_SIZE = 1 + 8 + 32
ELEMENT_KEY_CONTEXT = b"discovery.v1 previous-set token elements"
MAX_RETRY_SECONDS = 365 * 86400.0


@dataclass(frozen=True, slots=True)
class QuotaPolicy(Options):
    """The limits of one user. A capacity or burst of 0 switches that limit off."""

    capacity: int = option(
        50_000,
        "new contacts a user may look up in a burst (0: no quota)",
        name="quota_capacity",
        check=non_negative,
    )
    refill_per_hour: float = option(
        6.0, "new contacts per hour that the quota refills", name="quota_refill_per_hour", check=non_negative
    )
    rate_burst: int = option(
        30,
        "Discover requests a user may make in a burst (0: no limit)",
        name="rate_limit_burst",
        check=non_negative,
    )
    rate_per_minute: float = option(
        10.0,
        "Discover requests per minute that the rate limit refills",
        name="rate_limit_per_minute",
        check=non_negative,
    )
    token_ttl: float = option(
        30 * 86400.0,
        "how long a Discover token makes its contacts free on the next request",
        name="previous_token_ttl_seconds",
        check=positive,
    )
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
        self._element_key = blake3.blake3(ELEMENT_KEY_CONTEXT, key=key).digest(length=16)
        self._per_thread = threading.local()

    def digest(self, keys: SortedKeys) -> bytes:
        """``n || S`` of the module docstring: what a token of version 2 proves about ``keys``."""
        encryptor: CipherContext | None = getattr(self._per_thread, "encryptor", None)
        if encryptor is None:  # ECB keeps no state between blocks: one context per thread
            encryptor = Cipher(algorithms.AES(self._element_key), modes.ECB()).encryptor()
            self._per_thread.encryptor = encryptor
        words = np.frombuffer(encryptor.update(keys.raw), dtype="<u8").reshape(-1, 2)
        # Word-wise, modulo 2^64, one column at a time: ``words.sum(axis=0)`` goes through numpy's
        # buffered iterator (about 4x the CPU for 1,000 keys) and releases the GIL, which on the
        # event loop's thread costs a wait to take it back from the store's thread.
        total = np.array([words[:, 0].sum(), words[:, 1].sum()], dtype="<u8")
        return len(keys).to_bytes(4, "big") + total.tobytes()

    def _tag(self, caller: str, version: int, issued: bytes, body: bytes) -> bytes:
        user = caller.encode("utf-8")
        mac = blake3.blake3(key=self._key)
        mac.update(bytes([version]) + issued + len(user).to_bytes(2, "big") + user)
        mac.update(body)
        return mac.digest()

    def issue(self, caller: str, keys: SortedKeys, now: float, digest: bytes | None = None) -> bytes:
        """The token for ``keys``; ``digest`` is ``digest(keys)`` when the caller has it already."""
        issued = int(now).to_bytes(8, "big")
        body = digest or self.digest(keys)
        return bytes([TOKEN_VERSION]) + issued + self._tag(caller, TOKEN_VERSION, issued, body)

    def verify(
        self, caller: str, keys: SortedKeys, token: bytes, now: float, digest: bytes | None = None
    ) -> None:
        """Raise InvalidArgument unless ``token`` was issued to ``caller`` for exactly this set."""
        if len(token) != TOKEN_SIZE or token[0] not in (TOKEN_VERSION, SORTED_TOKEN_VERSION):
            raise InvalidArgument.field(
                "previous_token", "is not a token this server issued", Reason.PREVIOUS_SET_REFUSED
            )
        version, issued = token[0], token[1:9]
        body = (digest or self.digest(keys)) if version == TOKEN_VERSION else keys.packed()
        if not hmac.compare_digest(self._tag(caller, version, issued, body), token[9:]):
            raise InvalidArgument.field(
                "previous_token",
                "does not match previous_contact_hashes and the caller; "
                "send the request without previous_token and previous_contact_hashes",
                Reason.PREVIOUS_SET_REFUSED,
            )
        age = now - int.from_bytes(issued, "big")
        if age > self._ttl or age < -self._skew:
            raise InvalidArgument.field(
                "previous_token",
                "has expired; send the request without previous_token and previous_contact_hashes",
                Reason.PREVIOUS_SET_REFUSED,
            )


BUCKET_PURPOSES = ("requests", "contacts")
#: Told the caller's record (None: not registered) read in the charge's own store round trip.
CallerReader = Callable[[UserRecord | None], None]


class Gate(Protocol):
    """What Discover passes before the lookup (DiscoverGate, or AllowAllGate without quotas)."""

    async def admit(self, caller: str) -> None:
        """Charge the request rate alone: for a request refused before ``charge``."""
        ...

    async def charge(
        self,
        caller: str,
        current: SortedKeys,
        previous_hashes: bytes,
        previous_token: bytes,
        current_hashes: bytes = b"",
        reader: CallerReader | None = None,
    ) -> bytes:
        """Charge the request rate and the new contacts of a valid request; returns its token.
        ``current_hashes`` (the request's contact hashes, when given) lets an unchanged
        re-sync skip keying and sorting its previous set again. ``reader`` is told the
        caller's record when the charge's store round trip read it too (not when nothing
        was charged: no round trip)."""
        ...

    async def charge_count(self, caller: str, count: int) -> None:
        """Charge the request rate and ``count`` new contacts of a valid request, in one round trip
        (private mode: blinded elements cannot be tied to a previous set, so each one is new)."""
        ...

    async def forget(self, user_id: str) -> int: ...

    async def levels(self, user_id: str) -> list[tuple[str, float, float]]:
        """(purpose, level now, capacity) of each of the user's buckets (ExportMyData)."""
        ...


class AllowAllGate:
    """A gate that admits every request, charges nothing and issues no token (tests, tools)."""

    async def admit(self, caller: str) -> None:
        return None

    async def charge(
        self,
        caller: str,
        current: SortedKeys,
        previous_hashes: bytes,
        previous_token: bytes,
        current_hashes: bytes = b"",
        reader: CallerReader | None = None,
    ) -> bytes:
        return b""

    async def charge_count(self, caller: str, count: int) -> None:
        return None

    async def forget(self, user_id: str) -> int:
        return 0

    async def levels(self, user_id: str) -> list[tuple[str, float, float]]:
        return []


ALLOW_ALL = AllowAllGate()


@dataclass(frozen=True, slots=True)
class _Refusal:
    """What QuotaExceeded says when one bucket refuses."""

    reason: Reason
    message: str
    describe: Callable[[QuotaCharge], str]


class DiscoverGate:
    """What Discover checks before the lookup: request rate, previous set, contact quota.

    A valid request costs one store round trip: the request rate and its new contacts are
    charged together (``QuotaStore.charge`` applies them in order and stops at a refusal,
    so a request refused by the rate charges no contacts). A request found invalid before
    that is charged the rate alone (``admit``), so a flood of bad requests still hits it.
    """

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
        #: The same for every caller: made once, not per request.
        self._rate_refusal = _Refusal(
            Reason.RATE_LIMITED,
            "too many Discover requests",
            lambda _: (
                f"at most {self.policy.rate_burst} Discover requests in a burst, "
                f"refilling {self.policy.rate_per_minute:g} per minute"
            ),
        )

    async def forget(self, user_id: str) -> int:
        """Drop the user's buckets: an unregistered user leaves no record that names them."""
        return await self._store.forget_buckets([f"{purpose}:{user_id}" for purpose in BUCKET_PURPOSES])

    async def levels(self, user_id: str) -> list[tuple[str, float, float]]:
        """Each enforced bucket's level, read in one round trip by charging nothing (which
        leaves the buckets as they are)."""
        policy = self.policy
        limits = (
            ("requests", policy.rate_burst, policy.rate_per_minute / 60.0),
            ("contacts", policy.capacity, policy.refill_per_hour / 3600.0),
        )
        enforced = [(purpose, capacity, leak) for purpose, capacity, leak in limits if capacity > 0]
        charges = [BucketCharge(f"{purpose}:{user_id}", 0, cap, leak) for purpose, cap, leak in enforced]
        outcomes = await self._store.charge(charges, self._clock()) if charges else []
        return [
            (purpose, outcome.level, float(capacity))
            for (purpose, capacity, _), outcome in zip(enforced, outcomes, strict=True)
        ]

    async def admit(self, caller: str) -> None:
        """Charge one request to the caller's request rate, or QuotaExceeded."""
        await self._charge(caller, self._rate(caller), self._clock())

    async def charge(
        self,
        caller: str,
        current: SortedKeys,
        previous_hashes: bytes,
        previous_token: bytes,
        current_hashes: bytes = b"",
        reader: CallerReader | None = None,
    ) -> bytes:
        """Charge the request and the contacts of ``current`` not in the proven previous set;
        returns the token for ``current``. Raises InvalidArgument for a bad previous set (then
        only the request rate is charged), QuotaExceeded over quota (then no contacts are).

        An unchanged re-sync (``previous_hashes`` equal to ``current_hashes``, byte for byte)
        is the common case: its previous set is the current one, already keyed and
        checked, so only the token is verified, with the same digest it is issued with."""
        policy = self.policy
        now = self._clock()
        digest: bytes | None = None
        previous: SortedKeys | None = None
        try:
            if policy.capacity <= 0:
                # No contact quota: nothing to charge, and a token would prove nothing.
                check_packed_hashes(
                    previous_hashes, self._max_hashes, "previous_contact_hashes", Reason.PREVIOUS_SET_REFUSED
                )
            elif previous_token and current_hashes and previous_hashes == current_hashes:
                digest = self._tokens.digest(current)
                self._tokens.verify(caller, current, previous_token, now, digest)
                previous = current
            else:
                previous = self._previous(caller, previous_hashes, previous_token, now)
        except InvalidArgument:
            await self.admit(caller)
            raise
        if policy.capacity <= 0:
            await self._charge(caller, self._rate(caller), now, reader)
            return b""
        if previous is current:
            new = 0
        else:
            new = count_new(current, previous) if previous is not None else len(current)
        await self._charge(caller, self._rate(caller) + self._contacts(caller, new), now, reader)
        return self._tokens.issue(caller, current, now, digest)

    async def charge_count(self, caller: str, count: int) -> None:
        contacts = self._contacts(caller, count) if self.policy.capacity > 0 else []
        await self._charge(caller, self._rate(caller) + contacts, self._clock())

    def _rate(self, caller: str) -> list[tuple[BucketCharge, _Refusal]]:
        policy = self.policy
        if policy.rate_burst <= 0:
            return []
        charge = BucketCharge(f"requests:{caller}", 1, policy.rate_burst, policy.rate_per_minute / 60.0)
        return [(charge, self._rate_refusal)]

    def _contacts(self, caller: str, new: int) -> list[tuple[BucketCharge, _Refusal]]:
        policy = self.policy
        if not new:
            return []
        refusal = _Refusal(
            Reason.QUOTA_EXCEEDED,
            "the quota of new contacts is exhausted",
            lambda outcome: (
                f"this request has {new} new contacts and the quota allows "
                f"{max(0, math.floor(policy.capacity - outcome.level))} now; it holds {policy.capacity} "
                f"and refills {policy.refill_per_hour:g} per hour"
            ),
        )
        charge = BucketCharge(f"contacts:{caller}", new, policy.capacity, policy.refill_per_hour / 3600.0)
        return [(charge, refusal)]

    async def _charge(
        self,
        caller: str,
        charges: list[tuple[BucketCharge, _Refusal]],
        now: float,
        reader: CallerReader | None = None,
    ) -> None:
        """Charge the caller's buckets in one round trip; QuotaExceeded at the first refusal.
        Bucket names hold a purpose and the user id, never anything of the request. With a
        ``reader``, the same round trip reads the caller's record for it."""
        if not charges:
            return
        bucket_charges = [charge for charge, _ in charges]
        if reader is not None:
            outcomes, record = await self._store.charge_and_read(bucket_charges, now, caller)
            reader(record)
        else:
            outcomes = await self._store.charge(bucket_charges, now)
        for (charge, refusal), outcome in zip(charges, outcomes, strict=False):
            if not outcome.allowed:
                raise QuotaExceeded(
                    refusal.message,
                    subject=f"user:{caller}",
                    description=refusal.describe(outcome),
                    retry_after=_bounded(outcome.retry_after, outcome.level, charge.leak_per_second),
                    reason=refusal.reason,
                )

    def _previous(
        self, caller: str, previous_hashes: bytes, previous_token: bytes, now: float
    ) -> SortedKeys | None:
        """The verified previous set, or None when none was sent."""
        if not previous_token:
            if previous_hashes:
                raise InvalidArgument.field(
                    "previous_token", "is required with previous_contact_hashes", Reason.PREVIOUS_SET_REFUSED
                )
            return None
        check_packed_hashes(
            previous_hashes, self._max_hashes, "previous_contact_hashes", Reason.PREVIOUS_SET_REFUSED
        )
        previous = sort_keys(self._keys.directory_keys(previous_hashes))
        check_no_duplicate_keys(previous, "previous_contact_hashes", Reason.PREVIOUS_SET_REFUSED)
        self._tokens.verify(caller, previous, previous_token, now)
        return previous


def _bounded(retry_after: float, level: float, leak: float) -> float:
    """A finite RetryInfo delay: when the cost can never fit, the time until the bucket is empty."""
    if math.isfinite(retry_after):
        return retry_after
    if leak > 0:
        return min(level / leak, MAX_RETRY_SECONDS)
    return MAX_RETRY_SECONDS
