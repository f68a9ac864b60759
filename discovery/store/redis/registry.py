"""The registry and its change feed on Redis: one Lua script per update, on the registry's slot.

Record formats (docs/redis-keys.md):

* user bucket field ``USER_ID`` -> ``KEY(16) FLAGS(1) SEQ(decimal)``, where SEQ is the
  feed entry that last named the user (it is deleted when a newer one supersedes it, so
  an unregistered user is named by no feed entry).
* key bucket field ``KEY[2:16]`` -> ``""``: the directory key is taken.
* feed entry ``SEQ-0`` with one field ``c`` -> ``KEY(16) DISCOVERABLE(1) USER_ID``, or
  ``KEY(16) \\0`` when the key left the registry.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from discovery.core.errors import ContactHashTaken, FeedTruncated, UserIdTaken, UserNotRegistered
from discovery.core.hashing import KEY_SIZE
from discovery.core.model import (
    Announcement,
    AnnounceMode,
    FeedRun,
    ImportGroup,
    ImportRejectionReason,
    ImportReport,
    NewUser,
    PrivacySettings,
    PrivateRefill,
    RegisterOutcome,
    RegistryChange,
    RegistrySlice,
    RejectedUser,
    UserRecord,
)
from discovery.store.imports import GroupImports
from discovery.store.redis.base import (
    BUCKETS,
    MAX_BLOCK_SECONDS,
    Call,
    LuaScript,
    RedisBase,
    user_bucket_suffix,
)
from discovery.store.redis.lua import FAN_OUT, FORGET, PRELUDE

IMPORT_CHUNK = 500
LOAD_BUCKETS = 1024  # user buckets read by one script call (about 15,000 users at 1M)
LOAD_CALLS = 4  # script calls per round trip

# Script results shared by the scripts below.
UNCHANGED, CREATED, USER_ID_TAKEN, CONTACT_HASH_TAKEN, RETRY, NOT_REGISTERED = 0, 1, -1, -2, -3, -4
NEEDS_ANNOUNCEMENTS = -5

_WITH_JOINS = PRELUDE + FAN_OUT + FORGET

# KEYS: meta, feed, user bucket, key bucket. ARGV: user id, directory key, flags, inbox TTL (ms),
# then the announcement: watch tag, joiner tag, notice, delay (s); then the private-mode entry
# ('' for none).
REGISTER = LuaScript(
    _WITH_JOINS
    + """
local rec = redis.call('HGET', KEYS[3], ARGV[1])
if rec then
  if string.sub(rec, 1, 16) == ARGV[2] then return 0 end
  return -1
end
local field = string.sub(ARGV[2], 3)
if redis.call('HEXISTS', KEYS[4], field) == 1 then return -2 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
add_feed(seq, feed_entry(ARGV[2], ARGV[3], ARGV[1]), ARGV[9])
set_private(ARGV[1], ARGV[3], ARGV[9])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ARGV[3] .. seq)
redis.call('HSET', KEYS[4], field, '')
redis.call('HINCRBY', KEYS[1], 'users', 1)
announce(ARGV[1], announcement(ARGV[5], ARGV[6], ARGV[7], ARGV[8]), ARGV[3], mode_of(ARGV[3], false), ARGV[4])
return 1
"""
)

# KEYS: meta, feed. ARGV: inbox TTL (ms); the users packed as LEN(1) USER_BUCKET KEY(16)
# FLAGS(1) KEY_BUCKET KEY(16) DISCOVERABLE(1) USER_ID each: the bucket names whole and the key
# twice, so that each string a command needs is one string.sub (a few large arguments cost
# far less to send than several per user, and making Lua strings is much of the script's
# cost); the lengths of the two bucket names; the private-mode entry size (0: none) and the
# entries, in user order; the names of the users' watch keys (``{NS}:wk:WTAG``), packed;
# their announcements packed as JOINER_TAG(16) LEN(1) NOTICE DELAY_MS(4, big-endian) each,
# or '' for none. Before any write, one EXISTS tells whether somebody watches a key of the
# chunk: if so and the announcements were not sent, the script writes nothing and returns
# NEEDS_ANNOUNCEMENTS (the caller sends the chunk again with them). Otherwise returns the
# feed head before the call and, flat, the position (from 1) and code of each user not
# created; the users created have the next seqs, in order.
IMPORT = LuaScript(
    _WITH_JOINS
    + "local DIGITS = {[0] = "
    + ", ".join(f"'{d:02d}'" for d in range(100))
    + """}
local call, sub, byte, fmt = redis.call, string.sub, string.byte, string.format
local blob, psize, pentries, wkeys, notes = ARGV[2], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local ul, kl, wl = tonumber(ARGV[3]), tonumber(ARGV[4]), #TAG + 20
local n = #wkeys / wl
local announce = false
if n > 0 then
  local watched = {}
  for j = 1, n do watched[j] = sub(wkeys, wl * j - wl + 1, wl * j) end
  announce = call('EXISTS', unpack(watched)) > 0
end
if announce and notes == '' then return -5 end
local seq = tonumber(call('HGET', KEYS[1], 'seq') or '0')
local before, feed = seq, KEYS[2]
local failed, joined = {}, {}
local pos, i, last = 1, 0, #blob
-- Decimal seqs without a string.format per user: the digits above the last two change
-- every 100 users.
local hi, high = -1, ''
while pos <= last do
  i = i + 1
  local ulen = byte(blob, pos)
  local r = pos + ul + 1  -- the record's KEY(16) FLAGS(1)
  local k = r + 17 + kl  -- the feed entry: KEY(16) DISCOVERABLE(1) USER_ID
  local ub, uid = sub(blob, pos + 1, r - 1), sub(blob, k + 17, k + 16 + ulen)
  local v, s = seq + 1, nil
  if v < 100 then
    s = fmt('%d', v)
  else
    local low = v % 100
    if (v - low) / 100 ~= hi then
      hi = (v - low) / 100
      high = fmt('%d', hi)
    end
    s = DIGITS[low]
  end
  -- Claim the user id, then the key (undoing the claim when the key is taken). HSET
  -- of the key's field: its value is always '', so it changes nothing when taken.
  if call('HSETNX', ub, uid, sub(blob, r, r + 16) .. high .. s) == 0 then
    failed[#failed + 1] = i
    if sub(call('HGET', ub, uid), 1, 16) == sub(blob, k, k + 15) then
      failed[#failed + 1] = 0
    else
      failed[#failed + 1] = -1
    end
  elseif call('HSET', sub(blob, r + 17, k - 1), sub(blob, k + 2, k + 15), '') == 0 then
    call('HDEL', ub, uid)
    failed[#failed + 1] = i
    failed[#failed + 1] = -2
  else
    seq = seq + 1
    local value = sub(blob, k, k + 16 + ulen)
    if psize > 0 then
      -- (A user just created has no private entry to delete: unregistering deleted it.)
      local private = sub(pentries, (i - 1) * psize + 1, i * psize)
      set_private(uid, sub(blob, r + 16, r + 16), private)
      call('XADD', feed, high .. s .. '-0', 'c', value, 'p', private)
    else
      call('XADD', feed, high .. s .. '-0', 'c', value)
    end
    if announce then joined[#joined + 1] = {uid, i, sub(blob, r + 16, r + 16)} end
  end
  pos = k + 17 + ulen
end
if seq > before then
  call('HSET', KEYS[1], 'seq', seq)
  call('HINCRBY', KEYS[1], 'users', seq - before)
  if announce then
    local at, offsets = 1, {}
    for j = 1, n do
      offsets[j] = at
      at = at + 21 + byte(notes, at + 16)
    end
    local now, notified = now_s(), {}
    for _, u in ipairs(joined) do
      local a = offsets[u[2]]
      local notice = sub(notes, a + 17, a + 16 + byte(notes, a + 16))
      local b1, b2, b3, b4 = byte(notes, a + 17 + #notice, a + 20 + #notice)
      local delay = (((b1 * 256 + b2) * 256 + b3) * 256 + b4) / 1000
      local wtag = sub(wkeys, wl * u[2] - 15, wl * u[2])
      local ann = announcement(wtag, sub(notes, a, a + 15), notice, delay)
      fan_out(u[1], ann, u[3], mode_of(u[3], false), now, ARGV[1], notified)
    end
    signal(notified)
  end
end
return {before, failed}
"""
)

# KEYS: meta, feed, user bucket, key bucket. ARGV: user id, the key the caller read, joiner tag.
UNREGISTER = LuaScript(
    _WITH_JOINS
    + """
local rec, code = record_with(KEYS[3], ARGV[1], ARGV[2])
if not rec then return code end
unfeed(rec)
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], string.sub(ARGV[2], 3))
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
add_feed(seq, ARGV[2] .. '\\0', private_of(ARGV[1]))
redis.call('HDEL', TAG .. ':pe', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'users', -1)
forget(ARGV[1], false, ARGV[3])
return rec
"""
)

# KEYS: meta. ARGV: user id, joiner tag. Forgets the user's join data (see FORGET).
FORGET_USER = LuaScript(
    _WITH_JOINS
    + """
local registered = redis.call('HGET', user_bucket(ARGV[1]), ARGV[1])
return forget(ARGV[1], registered ~= false, ARGV[2])
"""
)

# KEYS: meta, feed, user bucket, old key bucket, new key bucket.
# ARGV: user id, old key, new key, inbox TTL (ms), then the announcement (see REGISTER), then
# the new private-mode entry ('' for none).
CHANGE_NUMBER = LuaScript(
    _WITH_JOINS
    + """
local rec, code = record_with(KEYS[3], ARGV[1], ARGV[2])
if not rec then return code end
if ARGV[2] == ARGV[3] then return rec end
local field = string.sub(ARGV[3], 3)
if redis.call('HEXISTS', KEYS[5], field) == 1 then return -2 end
local flags = string.sub(rec, 17, 17)
unfeed(rec)
redis.call('HDEL', KEYS[4], string.sub(ARGV[2], 3))
redis.call('HSET', KEYS[5], field, '')
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 2)
add_feed(seq - 1, ARGV[2] .. '\\0', private_of(ARGV[1]))
add_feed(seq, feed_entry(ARGV[3], flags, ARGV[1]), ARGV[9])
set_private(ARGV[1], flags, ARGV[9])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3] .. flags .. seq)
announce(ARGV[1], announcement(ARGV[5], ARGV[6], ARGV[7], ARGV[8]), flags, mode_of(flags, true), ARGV[4])
return rec
"""
)

# KEYS: meta, feed, user bucket. ARGV: user id, flags.
UPDATE_SETTINGS = LuaScript(
    PRELUDE
    + """
local rec = redis.call('HGET', KEYS[3], ARGV[1])
if not rec then return -4 end
local key = string.sub(rec, 1, 16)
local seq = string.sub(rec, 18)
if string.byte(rec, 17) % 2 ~= string.byte(ARGV[2]) % 2 then
  unfeed(rec)
  seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local private = private_of(ARGV[1])
  add_feed(seq, feed_entry(key, ARGV[2], ARGV[1]), private)
  if private ~= '' then set_private(ARGV[1], ARGV[2], private) end
end
redis.call('HSET', KEYS[3], ARGV[1], key .. ARGV[2] .. seq)
return rec
"""
)

# KEYS: meta (for routing). ARGV: user bucket prefix, first bucket, bucket count. The bucket
# keys are built here rather than passed: they share the registry's hash tag, so they are on
# this node, and 1,024 key arguments per call would cost more than the reads.
READ_BUCKETS = LuaScript(
    """
local out, n = {}, 0
local first = tonumber(ARGV[2])
for b = first, first + tonumber(ARGV[3]) - 1 do
  local h = redis.call('HGETALL', ARGV[1] .. string.char(math.floor(b / 256), b % 256))
  for i = 1, #h do
    n = n + 1
    out[n] = h[i]
  end
end
return out
"""
)

# KEYS: meta, feed. ARGV: first id, count. One script, so head, floor and entries agree.
FEED_READ = LuaScript(
    """
local m = redis.call('HMGET', KEYS[1], 'seq', 'floor')
return {m[1] or '0', m[2] or '0', redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])}
"""
)


# KEYS: meta, feed, user bucket. ARGV: user id, the entry read before ('0': none, else '1' .. entry), the
# new entry, '1' to announce it on the feed. Private-mode key rotation (core/ports.py refill_private).
REFILL_PRIVATE = LuaScript(
    PRELUDE
    + """
local rec = redis.call('HGET', KEYS[3], ARGV[1])
if not rec then return 0 end
local p = redis.call('HGET', TAG .. ':pe', ARGV[1])
local stored = '0'
if p then stored = '1' .. string.sub(p, 2) end
if stored ~= ARGV[2] then return 0 end
local flags = string.sub(rec, 17, 17)
if ARGV[4] == '1' then
  unfeed(rec)
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  add_feed(seq, feed_entry(string.sub(rec, 1, 16), flags, ARGV[1]), ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[1], string.sub(rec, 1, 17) .. seq)
end
set_private(ARGV[1], flags, ARGV[3])
return 1
"""
)

# KEYS: meta (for routing). ARGV: user ids. For each: its record ('' when not registered) and its
# private-mode entry with the discoverable byte ('' for none).
READ_PRIVATE = LuaScript(
    PRELUDE
    + """
local out = {}
for i = 1, #ARGV do
  out[2 * i - 1] = redis.call('HGET', user_bucket(ARGV[i]), ARGV[i]) or ''
  out[2 * i] = redis.call('HGET', TAG .. ':pe', ARGV[i]) or ''
end
return out
"""
)
READ_PRIVATE_CHUNK = 500


# FLAGS bits 1 and 3: the announce mode.
_MODE_BITS = {AnnounceMode.OFF: 0, AnnounceMode.EVERYONE: 2, AnnounceMode.MUTUAL: 8}


def _record(user_id: str, rec: bytes) -> UserRecord:
    flags = rec[16]
    mode = AnnounceMode.EVERYONE if flags & 2 else AnnounceMode.MUTUAL if flags & 8 else AnnounceMode.OFF
    return UserRecord(
        user_id=user_id,
        directory_key=rec[:16],
        settings=PrivacySettings(
            discoverable=bool(flags & 1),
            announce_mode=mode,
            notify_on_join=bool(flags & 4),
            announce_number_change=bool(flags & 16),
        ),
    )


@functools.cache
def _flags(settings: PrivacySettings) -> bytes:
    return bytes(
        (
            settings.discoverable
            | _MODE_BITS[settings.announce_mode]
            | settings.notify_on_join << 2
            | settings.announce_number_change << 4,
        )
    )


def announcement_args(a: Announcement) -> list[bytes | str]:
    """An announcement as the scripts' last four arguments."""
    return [a.watch_tag, a.joiner_tag, a.notice, repr(a.delay)]


_LENGTH = [bytes((n,)) for n in range(256)]

#: Per settings object (by id): FLAGS(1) with the key bucket names' prefix, and DISCOVERABLE(1),
#: as IMPORT packs them (fewer parts per user).
FlagParts = dict[int, tuple[bytes, bytes]]


@functools.cache
def _heads(user_prefix: bytes) -> list[bytes]:
    """Per user id length: LEN(1) and the user bucket names' prefix, as IMPORT packs them."""
    return [bytes((n,)) + user_prefix for n in range(256)]


_REJECTION = {
    USER_ID_TAKEN: ImportRejectionReason.USER_ID_TAKEN,
    CONTACT_HASH_TAKEN: ImportRejectionReason.CONTACT_HASH_TAKEN,
}


async def _no_replies() -> list[Any]:
    return []


class RedisRegistry(GroupImports, RedisBase):
    def _registry_keys(self, uid: bytes, *directory_keys: bytes) -> list[bytes]:
        k = self.keys
        return [k.meta, k.feed, k.user_bucket(uid), *(k.key_bucket(d) for d in directory_keys)]

    async def _written(self) -> None:
        await self._maybe_prune_feed()

    # -- single-user writes ---------------------------------------------------------------------

    async def register(self, user: NewUser) -> RegisterOutcome:
        uid = user.user_id.encode()
        code = await self._write(
            REGISTER,
            self._registry_keys(uid, user.directory_key),
            [
                uid,
                user.directory_key,
                _flags(user.settings),
                self._inbox_ttl_ms,
                *announcement_args(user.announcement),
                user.private or b"",
            ],
        )
        if code == UNCHANGED:
            return RegisterOutcome.UNCHANGED
        if code == USER_ID_TAKEN:
            raise UserIdTaken()
        if code == CONTACT_HASH_TAKEN:
            raise ContactHashTaken()
        await self._written()
        return RegisterOutcome.CREATED

    async def _current_key(self, uid: bytes) -> bytes | None:
        rec: bytes | None = await self._redis.hget(self.keys.user_bucket(uid), uid)  # type: ignore[assignment]
        return None if rec is None else rec[:16]

    async def unregister(self, user_id: str, joiner_tag: bytes) -> UserRecord | None:
        uid = user_id.encode()
        reply: Any = NOT_REGISTERED
        while (key := await self._current_key(uid)) is not None:
            reply = await self._write(UNREGISTER, self._registry_keys(uid, key), [uid, key, joiner_tag])
            if reply != RETRY:
                break
        if not isinstance(reply, bytes):
            # Data kept on behalf of an unknown user (watches) is forgotten too.
            await self.delete_user_data(user_id, joiner_tag)
            return None
        await self._written()
        return _record(user_id, reply)

    async def delete_user_data(self, user_id: str, joiner_tag: bytes) -> int:
        return int(await self._write(FORGET_USER, [self.keys.meta], [user_id.encode(), joiner_tag]))

    async def erase_traces(self) -> None:
        """Nothing to do: the store writes no file itself (Redis persistence is the operator's,
        see docs/threat-model.md)."""

    async def change_number(
        self,
        user_id: str,
        directory_key: bytes,
        announcement: Announcement,
        private: bytes | None = None,
    ) -> UserRecord:
        uid = user_id.encode()
        while True:
            key = await self._current_key(uid)
            if key is None:
                raise UserNotRegistered()
            reply = await self._write(
                CHANGE_NUMBER,
                self._registry_keys(uid, key, directory_key),
                [
                    uid,
                    key,
                    directory_key,
                    self._inbox_ttl_ms,
                    *announcement_args(announcement),
                    private or b"",
                ],
            )
            if reply == NOT_REGISTERED:
                raise UserNotRegistered()
            if reply == CONTACT_HASH_TAKEN:
                raise ContactHashTaken()
            if isinstance(reply, bytes):
                break
        record = _record(user_id, reply)
        if key != directory_key:
            await self._written()
        return record

    async def update_settings(self, user_id: str, settings: PrivacySettings) -> UserRecord | None:
        uid = user_id.encode()
        reply = await self._write(UPDATE_SETTINGS, self._registry_keys(uid), [uid, _flags(settings)])
        if not isinstance(reply, bytes):
            return None
        await self._written()
        return UserRecord(user_id, reply[:16], settings)

    # -- bulk import ----------------------------------------------------------------------------

    async def _import_groups(self, groups: Sequence[ImportGroup], first_position: int) -> list[ImportReport]:
        """One group after the other: a later group's scripts must see the earlier ones' writes,
        so each is sent when the one before has answered. Meanwhile the next group's calls are
        packed: the node and this process work at the same time instead of in turns."""
        flags_of: FlagParts = {}
        reports: list[ImportReport] = []
        calls = [c async for c in self._import_calls(groups[0], flags_of)] if groups else []
        for g, group in enumerate(groups):
            write = asyncio.ensure_future(self._write_many(IMPORT, calls) if calls else _no_replies())
            try:
                calls = []
                if g + 1 < len(groups):
                    calls = [c async for c in self._import_calls(groups[g + 1], flags_of)]
                replies = await write
            except BaseException:
                write.cancel()
                raise
            reports.append(await self._import_report(group, replies, first_position, flags_of))
        return reports

    async def _import_calls(self, group: ImportGroup, flags_of: FlagParts) -> AsyncIterator[Call]:
        """The group's IMPORT calls, one per chunk, letting the loop run between them (a write
        in flight sends its commands)."""
        sealed = not group.distinct
        for start in range(0, len(group), IMPORT_CHUNK):
            await asyncio.sleep(0)
            yield self._import_call(group, start, sealed, flags_of)

    async def _import_report(
        self, group: ImportGroup, replies: list[Any], first_position: int, flags_of: FlagParts
    ) -> ImportReport:
        """The group's outcome from its scripts' replies.

        A group of distinct users goes without announcements; a chunk with a watched key is
        refused whole by its script and sent again here with them, after the chunks that
        followed it. Distinct users' outcomes do not depend on that order, only their feed
        entries' order does. Other groups carry every announcement, so their chunks run in order."""
        report = ImportReport()
        if not len(group):
            return report
        starts = range(0, len(group), IMPORT_CHUNK)
        again = [j for j, reply in enumerate(replies) if reply == NEEDS_ANNOUNCEMENTS]
        if again:
            calls = [self._import_call(group, starts[j], True, flags_of) for j in again]
            for j, reply in zip(again, await self._write_many(IMPORT, calls), strict=True):
                replies[j] = reply
        ids, keys, settings = group.user_ids, group.directory_keys, group.settings
        for start, (before, failed) in zip(starts, replies, strict=True):
            end = min(start + IMPORT_CHUNK, len(group))
            created: Sequence[int]
            if failed:
                # Positions (from 1 in the chunk) and codes of the users not created.
                codes = dict(zip((start + int(i) - 1 for i in failed[::2]), failed[1::2], strict=True))
                for i, code in codes.items():
                    if code == UNCHANGED:
                        report.unchanged += 1
                    else:
                        report.rejections.append(RejectedUser(first_position + i, ids[i], _REJECTION[code]))
                created = [i for i in range(start, end) if i not in codes]
                run_keys = b"".join(keys[i * KEY_SIZE : (i + 1) * KEY_SIZE] for i in created)
                run_ids = [ids[i] for i in created]
            else:
                created = range(start, end)
                run_keys, run_ids = keys[start * KEY_SIZE : end * KEY_SIZE], list(ids[start:end])
            if created:
                # The chunk's script numbered its new users' feed entries after ``before``.
                report.feed.append(
                    FeedRun(int(before) + 1, run_keys, run_ids, [settings[i].discoverable for i in created])
                )
                report.imported += len(created)
        report.feed.sort()
        report.rejected_total = len(report.rejections)
        if report.imported:
            await self._written()
        return report

    def _import_call(self, group: ImportGroup, start: int, sealed: bool, flags_of: FlagParts) -> Call:
        """The IMPORT script's keys and arguments for the chunk of ``group`` at ``start``, with
        the announcements when ``sealed``."""
        end = min(start + IMPORT_CHUNK, len(group))
        keys = group.directory_keys
        settings = group.settings
        heads = _heads(self.keys.user_bucket_at(0)[:-2])
        key_prefix = self.keys.key_bucket(b"")
        packed: list[bytes] = []
        add = packed.extend
        for i, user_id in enumerate(group.user_ids[start:end], start):
            uid = user_id.encode()
            s = settings[i]
            # Most users of an import share one settings object (the default): flags once per
            # object (by identity: the group keeps them alive for the call).
            flags = flags_of.get(id(s))
            if flags is None:
                flags = flags_of[id(s)] = (_flags(s) + key_prefix, bytes((s.discoverable,)))
            key = keys[i * KEY_SIZE : (i + 1) * KEY_SIZE]
            add((heads[len(uid)], user_bucket_suffix(uid), key, flags[0], key[:2], key, flags[1], uid))
        notes: list[bytes] = []
        if sealed:
            for a in group.announce(range(start, end)):
                notes.extend(
                    (
                        a.joiner_tag,
                        _LENGTH[len(a.notice)],
                        a.notice,
                        min(int(a.delay * 1000), 2**32 - 1).to_bytes(4, "big"),
                    )
                )
        tags = group.watch_tags[start * KEY_SIZE : end * KEY_SIZE]
        prefix = self.keys.watchers_prefix
        watch_keys = (
            prefix + prefix.join([tags[j : j + KEY_SIZE] for j in range(0, len(tags), KEY_SIZE)])
            if tags
            else b""
        )
        entries = [p or b"" for p in group.private[start:end]] if group.private is not None else []
        size = len(entries[0]) if entries else 0
        if any(len(entry) != size for entry in entries):
            raise ValueError("the private-mode entries of an import are all of one size, or none")
        return (
            [self.keys.meta, self.keys.feed],
            [
                self._inbox_ttl_ms,
                b"".join(packed),
                len(heads[0]) + 1,
                len(key_prefix) + 2,
                size,
                b"".join(entries),
                watch_keys,
                b"".join(notes),
            ],
        )

    # -- reads ----------------------------------------------------------------------------------

    async def get_user(self, user_id: str) -> UserRecord | None:
        uid = user_id.encode()
        rec: bytes | None = await self._redis.hget(self.keys.user_bucket(uid), uid)  # type: ignore[assignment]
        return None if rec is None else _record(user_id, rec)

    async def registry_size(self) -> int:
        return int(await self._redis.hget(self.keys.meta, "users") or 0)

    async def iter_registry(self, batch_size: int) -> AsyncIterator[RegistrySlice]:
        """Every user bucket in turn, many per script call; not a snapshot (the feed replays)."""
        if await self.registry_size() == 0:
            return
        prefix = self.keys.user_bucket_at(0)[:-2]
        calls: list[Call] = [
            ([self.keys.meta], [prefix, first, LOAD_BUCKETS]) for first in range(0, BUCKETS, LOAD_BUCKETS)
        ]
        keys: list[bytes] = []
        user_ids: list[str] = []
        flags: list[int] = []
        for start in range(0, len(calls), LOAD_CALLS):
            for flat in await self._eval_many(READ_BUCKETS, calls[start : start + LOAD_CALLS]):
                for i in range(0, len(flat), 2):
                    rec = flat[i + 1]
                    keys.append(rec[:16])
                    user_ids.append(flat[i].decode())
                    flags.append(rec[16])
            if user_ids and (len(user_ids) >= batch_size or start + LOAD_CALLS >= len(calls)):
                yield RegistrySlice(
                    keys=b"".join(keys),
                    user_ids=user_ids,
                    discoverable=(np.array(flags, dtype=np.uint8) & 1).astype(np.bool_),
                )
                keys, user_ids, flags = [], [], []

    async def iter_private(self, batch_size: int) -> AsyncIterator[list[bytes]]:
        batch: list[bytes] = []
        async for _, value in self._redis.hscan_iter(self.keys.private, count=1000):
            if value[:1] == b"\x01":
                batch.append(bytes(value[1:]))
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    # -- private-mode key rotation ----------------------------------------------------------------

    async def private_entries(self, user_ids: Sequence[str]) -> list[tuple[bytes, bytes | None] | None]:
        uids = [u.encode() for u in user_ids]
        calls: list[Call] = [
            ([self.keys.meta], list(uids[i : i + READ_PRIVATE_CHUNK]))
            for i in range(0, len(uids), READ_PRIVATE_CHUNK)
        ]
        flat = [value for reply in await self._eval_many(READ_PRIVATE, calls) for value in reply]
        return [
            (bytes(rec[:16]), bytes(p[1:]) if p else None) if rec else None
            for rec, p in zip(flat[::2], flat[1::2], strict=True)
        ]

    async def refill_private(self, refills: Sequence[PrivateRefill]) -> int:
        if not refills:
            return 0
        calls: list[Call] = []
        for refill in refills:
            uid = refill.user_id.encode()
            stored = b"0" if refill.stored is None else b"1" + refill.stored
            calls.append(
                (self._registry_keys(uid), [uid, stored, refill.private, b"1" if refill.announce else b"0"])
            )
        replaced = sum(int(code) for code in await self._write_many(REFILL_PRIVATE, calls))
        if any(r.announce for r in refills):
            await self._written()
        return replaced

    # -- change feed ----------------------------------------------------------------------------

    async def feed_head(self) -> int:
        self._feed_node_id = await self._feed_node_identity()
        return int(await self._redis.hget(self.keys.meta, "seq") or 0)

    async def feed_read(self, after: int, limit: int) -> list[RegistryChange]:
        identity = await self._feed_node_identity()
        if self._feed_node_id is None:
            self._feed_node_id = identity
        elif identity != self._feed_node_id:
            self._feed_node_id = identity
            raise FeedTruncated("the redis node holding the feed restarted or failed over")
        head_raw, floor_raw, entries = await self._eval(
            FEED_READ, [self.keys.meta, self.keys.feed], [f"{after + 1}-0", limit]
        )
        head, floor = int(head_raw), int(floor_raw)
        if after < floor:
            raise FeedTruncated(f"changes after {after} were pruned (floor {floor})")
        if after > head:
            raise FeedTruncated(f"the feed head {head} is behind the cursor {after}: the store was reset")
        changes = []
        for entry_id, fields in entries:
            value = fields[1]
            private = bytes(fields[3]) if len(fields) > 3 else None
            seq = int(entry_id.split(b"-", 1)[0])
            if len(value) == 17:
                changes.append(RegistryChange(seq, value[:16], None, False, private))
            else:
                changes.append(RegistryChange(seq, value[:16], value[17:].decode(), value[16] == 1, private))
        return changes

    async def feed_wait(self, after: int, timeout: float) -> None:
        """XREAD BLOCK: returns as soon as any instance appends a newer entry."""
        block_ms = int(min(timeout, MAX_BLOCK_SECONDS) * 1000)
        if block_ms <= 0:
            return
        await self._blocking(self._redis.xread({self.keys.feed: f"{after}-0"}, count=1, block=block_ms))
