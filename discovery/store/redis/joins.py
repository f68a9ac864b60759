"""Join notifications on Redis: watches, inboxes and devices (the JoinStore protocol).

Everything lives under the registry's hash tag, so the fan-out runs inside the
registering script (lua.FAN_OUT) and a registration commits with its events, on a
cluster too. Inbox cursors come from one counter (``jseq`` in the meta hash): increasing
in append order and never reused, even after a user's data was forgotten.

Wake-ups: the registering script appends the ids of the notified users to the short
stream ``{NS}:joins`` (trimmed to about 1,000 entries, gone a minute after the last
one), which every instance reads with XREAD BLOCK. Nothing is lost while an instance
reads; one that reconnects starts from the newest entry, and a missed wake-up only delays
delivery until the subscriber's next read.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from discovery.core.errors import InvalidArgument, Reason
from discovery.core.model import Announcement, DeviceState, InboxEntry, InboxEpoch, WatchSummary
from discovery.store.redis.base import MAX_BLOCK_SECONDS, Arg, LuaScript, RedisBase
from discovery.store.redis.lua import EPOCHS, FAN_OUT, PRELUDE
from discovery.store.redis.registry import announcement_args

AHEAD, NOT_REGISTERED = -5, -4
MAX_BLOCK_MS = int(MAX_BLOCK_SECONDS * 1000)
PURGE_SCAN = 500
# Inbox and device keys expire this long after their retention (a backstop to the sweeper).
INBOX_TTL_GRACE = 3600.0

_CHECKS = (
    PRELUDE
    + """
local function cursor_ok(cursor)
  return tonumber(cursor) <= tonumber(redis.call('HGET', KEYS[1], 'jseq') or '0')
end
local function registered(uid) return redis.call('HEXISTS', user_bucket(uid), uid) == 1 end
local function device_acked(v) return tonumber(string.sub(v, 1, string.find(v, ':', 1, true) - 1)) end
local function device_seen(v) return tonumber(string.sub(v, string.find(v, ':', 1, true) + 1)) end
local function device(acked, now) return acked .. ':' .. string.format('%.6f', now) end
"""
)

# KEYS: meta. ARGV: watcher, packed keys, ttl (s), cap.
ADD_WATCHES = LuaScript(
    _CHECKS
    + """
local watcher = ARGV[1]
local rec = redis.call('HGET', user_bucket(watcher), watcher)
if not rec or math.floor(string.byte(rec, 17) / 4) % 2 == 0 then return 0 end
local now = now_s()
local ww = watches_of(watcher)
unwatch(watcher, redis.call('ZRANGEBYSCORE', ww, '-inf', now))
local expires = now + tonumber(ARGV[3])
local blob = ARGV[2]
for i = 1, #blob, 16 do
  local key = string.sub(blob, i, i + 15)
  local current = redis.call('ZSCORE', ww, key)
  if not current or tonumber(current) < expires then
    redis.call('ZADD', ww, expires, key)
    redis.call('ZADD', watchers_of(key), expires, watcher)
    extend_to(watchers_of(key), expires)
  end
end
local count = redis.call('ZCARD', ww)
local cap = tonumber(ARGV[4])
if count > cap then
  unwatch(watcher, redis.call('ZRANGE', ww, 0, count - cap - 1))
  count = cap
end
if count > 0 then extend_to(ww, tonumber(redis.call('ZRANGE', ww, -1, -1, 'WITHSCORES')[2])) end
return count
"""
)

# KEYS: meta. ARGV: watcher.
DROP_WATCHES = LuaScript(
    PRELUDE
    + """
local keys = redis.call('ZRANGE', watches_of(ARGV[1]), 0, -1)
unwatch(ARGV[1], keys)
return #keys
"""
)

# KEYS: meta. ARGV: user id, device id, after, inbox TTL (ms).
ATTACH = LuaScript(
    _CHECKS
    + """
if not cursor_ok(ARGV[3]) then return -5 end
if not registered(ARGV[1]) then return -4 end
local dv = devices_of(ARGV[1])
local value = redis.call('HGET', dv, ARGV[2])
local acked = 0
if value then acked = device_acked(value) end
redis.call('HSET', dv, ARGV[2], device(acked, now_s()))
redis.call('PEXPIRE', dv, ARGV[4])
return math.max(tonumber(ARGV[3]), acked)
"""
)

# KEYS: meta. ARGV: user id, after, limit, max age (s), released only (1/0). Skips entries
# older than max age and, with released only, stops at the first entry not released yet.
READ = LuaScript(
    _CHECKS
    + """
local inbox = inbox_of(ARGV[1])
local limit = tonumber(ARGV[3])
local now = now_s()
local cutoff = now - tonumber(ARGV[4])
local out, offset = {}, 0
while #out < limit do
  local batch = redis.call('ZRANGEBYSCORE', inbox, '(' .. ARGV[2], '+inf', 'LIMIT', offset, limit)
  if #batch == 0 then break end
  for _, member in ipairs(batch) do
    local t = inbox_time(member)
    if t > now and ARGV[5] == '1' then return out end
    if #out < limit and t > cutoff then out[#out + 1] = member end
  end
  offset = offset + #batch
end
return out
"""
)

# KEYS: meta. ARGV: joiner, inbox TTL (ms), the announcement (watch tag, joiner tag, notice,
# delay), then the ids of the users the joiner's Discover matched. See JoinStore.announce_mutual.
ANNOUNCE_MUTUAL = LuaScript(
    PRELUDE
    + FAN_OUT
    + """
local joiner = ARGV[1]
local rec = redis.call('HGET', user_bucket(joiner), joiner)
if not rec or mode_of(string.sub(rec, 17, 17), false) ~= 'mutual' or not bit(string.byte(rec, 17), 0) then
  return 0
end
local a = announcement(ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local wk = watchers_of(a.wtag)
if redis.call('EXISTS', wk) == 0 then return 0 end
local now, notified = now_s(), {}
for i = 7, #ARGV do
  local watcher = ARGV[i]
  local expires = redis.call('ZSCORE', wk, watcher)
  if expires and tonumber(expires) > now and watcher ~= joiner and wants_joins(watcher) then
    redis.call('ZREM', wk, watcher)
    redis.call('ZREM', watches_of(watcher), a.wtag)
    append_event(watcher, a, now, ARGV[2], notified)
  end
end
signal(notified)
return #notified
"""
)

# KEYS: meta. ARGV: user id, device id, cursor, max age (s), inbox TTL (ms).
ACK = LuaScript(
    _CHECKS
    + """
if not cursor_ok(ARGV[3]) then return -5 end
if not registered(ARGV[1]) then return -4 end
local now = now_s()
local dv = devices_of(ARGV[1])
local value = redis.call('HGET', dv, ARGV[2])
local acked = tonumber(ARGV[3])
if value then acked = math.max(acked, device_acked(value)) end
redis.call('HSET', dv, ARGV[2], device(acked, now))
redis.call('PEXPIRE', dv, ARGV[5])
local floor = acked
local devices = redis.call('HGETALL', dv)
for i = 2, #devices, 2 do
  if device_seen(devices[i]) > now - tonumber(ARGV[4]) then
    floor = math.min(floor, device_acked(devices[i]))
  end
end
return redis.call('ZREMRANGEBYSCORE', inbox_of(ARGV[1]), '-inf', floor)
"""
)

# KEYS: meta. ARGV: max age (s), then keys found by SCAN (watches, watchers, inboxes, devices).
PURGE = LuaScript(
    _CHECKS
    + """
local now = now_s()
local cutoff = now - tonumber(ARGV[1])
local removed = 0
local function tail(key, kind)
  local prefix = TAG .. ':' .. kind .. ':'
  if string.sub(key, 1, #prefix) == prefix then return string.sub(key, #prefix + 1) end
  return nil
end
for i = 2, #ARGV do
  local key = ARGV[i]
  local uid = tail(key, 'ww')
  if uid then
    local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now)
    unwatch(uid, expired)
    removed = removed + #expired
  elseif tail(key, 'wk') then
    -- Counted on the watcher's side (ww) unless that key already expired.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  elseif tail(key, 'in') then
    for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      if inbox_time(member) <= cutoff then removed = removed + redis.call('ZREM', key, member) end
    end
  elseif tail(key, 'dv') then
    local devices = redis.call('HGETALL', key)
    for j = 1, #devices, 2 do
      if device_seen(devices[j + 1]) <= cutoff then
        removed = removed + redis.call('HDEL', key, devices[j])
      end
    end
  end
end
return removed
"""
)


# KEYS: meta. Starts a new epoch if another process holds the sequence (lua.EPOCHS).
INBOX_EPOCHS = LuaScript(EPOCHS + "return inbox_epochs()")


def _glob_escape(text: bytes) -> bytes:
    out = bytearray()
    for byte in text:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


class RedisJoins(RedisBase):
    def _learn_inbox_ttl(self, max_age: float) -> None:
        self._inbox_ttl_ms = int((max_age + INBOX_TTL_GRACE) * 1000)

    async def _checked(self, reply: int, field: str) -> int | None:
        if reply == AHEAD:
            raise InvalidArgument.field(
                field, "is ahead of every event this server has issued", Reason.CURSOR_OUT_OF_RANGE
            )
        return None if reply == NOT_REGISTERED else int(reply)

    # -- watches --------------------------------------------------------------------------------

    async def add_watches(self, watcher: str, keys: bytes, ttl: float, cap: int) -> int:
        reply = await self._write(ADD_WATCHES, [self.keys.meta], [watcher.encode(), keys, repr(ttl), cap])
        return int(reply)

    async def drop_watches(self, watcher: str) -> int:
        return int(await self._write(DROP_WATCHES, [self.keys.meta], [watcher.encode()]))

    async def count_watches(self, watcher: str) -> int:
        key = self.keys.watches_of(watcher)
        return int(await self._redis.zcount(key, f"({time.time()!r}", "+inf"))

    async def watch_summary(self, watcher: str) -> WatchSummary:
        key = self.keys.watches_of(watcher)
        live = f"({time.time()!r}"
        count = int(await self._redis.zcount(key, live, "+inf"))
        if not count:
            return WatchSummary(0, 0.0, 0.0)
        first = await self._redis.zrangebyscore(key, live, "+inf", start=0, num=1, withscores=True)
        last = await self._redis.zrevrangebyscore(key, "+inf", live, start=0, num=1, withscores=True)
        return WatchSummary(count, float(first[0][1]), float(last[0][1]))

    async def devices(self, user_id: str) -> list[DeviceState]:
        raw: Any = await self._redis.hgetall(self.keys.devices_of(user_id))
        out = []
        for device, value in sorted(raw.items()):
            acked, seen = value.split(b":", 1)
            out.append(DeviceState(device.decode(), int(acked), float(seen)))
        return out

    async def announce_mutual(self, joiner: str, announcement: Announcement, watchers: Sequence[str]) -> int:
        args = [joiner.encode(), self._inbox_ttl_ms, *announcement_args(announcement)]
        return int(
            await self._write(ANNOUNCE_MUTUAL, [self.keys.meta], [*args, *(w.encode() for w in watchers)])
        )

    # -- inbox ----------------------------------------------------------------------------------

    async def inbox_attach(self, user_id: str, device_id: str, after: int) -> int | None:
        if after < 0:
            raise InvalidArgument.field("after_cursor", "must not be negative", Reason.CURSOR_OUT_OF_RANGE)
        reply = await self._eval(
            ATTACH, [self.keys.meta], [user_id.encode(), device_id.encode(), after, self._inbox_ttl_ms]
        )
        return await self._checked(reply, "after_cursor")

    async def inbox_read(
        self, user_id: str, after: int, limit: int, max_age: float, released_only: bool = True
    ) -> list[InboxEntry]:
        self._learn_inbox_ttl(max_age)
        args: list[Arg] = [user_id.encode(), after, limit, repr(max_age), int(released_only)]
        members = await self._eval(READ, [self.keys.meta], args)
        entries = []
        for member in members:
            cursor, joined, rest = member.split(b":", 2)
            entries.append(InboxEntry(int(cursor), cursor.decode(), rest[16:], float(joined)))
        return entries

    async def inbox_ack(self, user_id: str, device_id: str, cursor: int, max_age: float) -> int | None:
        if cursor < 0:
            raise InvalidArgument.field("cursor", "must not be negative", Reason.CURSOR_OUT_OF_RANGE)
        self._learn_inbox_ttl(max_age)
        reply = await self._write(
            ACK,
            [self.keys.meta],
            [user_id.encode(), device_id.encode(), cursor, repr(max_age), self._inbox_ttl_ms],
        )
        return await self._checked(reply, "cursor")

    # -- expiry ---------------------------------------------------------------------------------

    async def purge_expired(self, max_age: float) -> int:
        """SCAN the registry's node for join keys, and trim each batch in one script."""
        self._learn_inbox_ttl(max_age)
        pattern = _glob_escape(self.keys.registry_tag) + b":[wid][wknv]:*"
        purged = 0
        async for found in self._scan_registry_node(pattern, PURGE_SCAN):
            if found:
                purged += int(await self._eval(PURGE, [self.keys.meta], [repr(max_age), *found]))
        return purged

    # -- cursor epochs --------------------------------------------------------------------------

    async def inbox_epochs(self) -> list[InboxEpoch]:
        reply: bytes = await self._eval(INBOX_EPOCHS, [self.keys.meta], [])
        epochs = []
        for item in reply.split(b","):
            epoch, _, base = item.partition(b":")
            epochs.append(InboxEpoch(int(epoch, 16), int(base)))
        return epochs

    # -- wake-ups -------------------------------------------------------------------------------

    async def inbox_signals(self) -> AsyncIterator[set[str]]:
        """XREAD BLOCK on the wake-up stream, from the moment of the call on."""
        last: bytes = b"$"
        while True:
            reply: Any = await self._blocking(
                self._redis.xread({self.keys.join_signals: last}, count=100, block=MAX_BLOCK_MS)
            )
            users: set[str] = set()
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    users.update(fields[b"u"].decode().split("\n"))
            if users:
                yield users
