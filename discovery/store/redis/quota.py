"""Leaky buckets on Redis (the QuotaStore protocol): one script per request's charges, atomic.

A bucket is one string ``LEVEL,TIME`` whose TTL is the time until it is drained, so
Redis forgets drained buckets by itself. Buckets are spread over the cluster: a user's
buckets share the tag ``{NS:u:USER_ID}`` (see Keys.quota).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from discovery.core.model import BucketCharge, QuotaCharge, UserRecord
from discovery.store.redis.base import LuaScript, RedisBase

# KEYS: the buckets (one user's: one slot). ARGV: now, then cost, capacity, leak per second
# for each bucket. The rule of QuotaStore.charge, bucket after bucket, stopping at a refusal.
CHARGE = LuaScript(
    """
local now = tonumber(ARGV[1])
local function num(x) return string.format('%.17g', x) end
local out = {}
for i, key in ipairs(KEYS) do
  local cost, capacity, rate = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local level = 0
  local stored = redis.call('GET', key)
  if stored then
    local sep = string.find(stored, ',', 1, true)
    local since = tonumber(string.sub(stored, sep + 1))
    level = math.max(0, tonumber(string.sub(stored, 1, sep - 1)) - rate * math.max(0, now - since))
  end
  if level + cost <= capacity then
    local after = level + cost
    if cost > 0 then
      if rate > 0 then
        redis.call('SET', key, num(after) .. ',' .. num(now), 'PX', math.ceil(after / rate * 1000) + 1)
      else
        redis.call('SET', key, num(after) .. ',' .. num(now))
      end
    end
    out[i] = {1, num(after), '0'}
  else
    if cost > capacity or rate <= 0 then
      out[i] = {0, num(level), 'inf'}
    else
      out[i] = {0, num(level), num((level + cost - capacity) / rate)}
    end
    return out
  end
end
return out
"""
)


class RedisQuota(RedisBase):
    #: The registry's read (RedisRegistry, mixed into the same store).
    get_user: Callable[[str], Coroutine[Any, Any, UserRecord | None]]

    async def charge_and_read(
        self, charges: Sequence[BucketCharge], now: float, user_id: str
    ) -> tuple[list[QuotaCharge], UserRecord | None]:
        """The charge script and the record's read sent together: the record lives in the
        registry's slot, the buckets in the user's, so one script cannot hold both (Cluster)."""
        outcomes, record = await asyncio.gather(self.charge(charges, now), self.get_user(user_id))
        return outcomes, record

    async def charge(self, charges: Sequence[BucketCharge], now: float) -> list[QuotaCharge]:
        if not charges:
            return []
        args = [repr(float(now))]
        for charge in charges:
            args += [repr(float(x)) for x in (charge.cost, charge.capacity, charge.leak_per_second)]
        replies = await self._write(CHARGE, [self.keys.quota(charge.bucket) for charge in charges], args)
        return [
            QuotaCharge(bool(allowed), float(level), math.inf if wait == b"inf" else float(wait))
            for allowed, level, wait in replies
        ]

    async def forget_buckets(self, buckets: Sequence[str]) -> int:
        # One DEL per key: an unregistered user's buckets share a slot, other callers' may not.
        removed = 0
        for bucket in buckets:
            key = self.keys.quota(bucket)
            if self.min_replicas:
                (deleted,) = await self._confirmed(key, [("DEL", key)])
                removed += int(deleted)
            else:
                removed += int(await self._redis.delete(key))
        return removed
