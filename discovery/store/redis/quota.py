"""Leaky buckets on Redis (the QuotaStore protocol): one script per charge, atomic.

A bucket is one string ``LEVEL,TIME`` whose TTL is the time until it is drained, so
Redis forgets drained buckets by itself. Buckets are spread over the cluster: a user's
buckets share the tag ``{NS:u:USER_ID}`` (see Keys.quota).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from discovery.core.model import QuotaCharge
from discovery.store.redis.base import LuaScript, RedisBase

# KEYS: the bucket. ARGV: cost, capacity, leak per second, now. The rule of QuotaStore.charge.
CHARGE = LuaScript(
    """
local cost, capacity, rate, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local level = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local sep = string.find(stored, ',', 1, true)
  local since = tonumber(string.sub(stored, sep + 1))
  level = math.max(0, tonumber(string.sub(stored, 1, sep - 1)) - rate * math.max(0, now - since))
end
local function num(x) return string.format('%.17g', x) end
if level + cost <= capacity then
  local after = level + cost
  if cost > 0 then
    if rate > 0 then
      redis.call('SET', KEYS[1], num(after) .. ',' .. num(now), 'PX', math.ceil(after / rate * 1000) + 1)
    else
      redis.call('SET', KEYS[1], num(after) .. ',' .. num(now))
    end
  end
  return {1, num(after), '0'}
end
if cost > capacity or rate <= 0 then return {0, num(level), 'inf'} end
return {0, num(level), num((level + cost - capacity) / rate)}
"""
)


class RedisQuota(RedisBase):
    async def charge(
        self, bucket: str, cost: float, capacity: float, leak_per_second: float, now: float
    ) -> QuotaCharge:
        allowed, level, retry_after = await self._write(
            CHARGE,
            [self.keys.quota(bucket)],
            [repr(float(cost)), repr(float(capacity)), repr(float(leak_per_second)), repr(float(now))],
        )
        wait = math.inf if retry_after == b"inf" else float(retry_after)
        return QuotaCharge(bool(allowed), float(level), wait)

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
