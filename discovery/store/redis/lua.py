"""Lua shared by the store's scripts: key names, record formats, join fan-out and forgetting.

Every script runs on the registry's slot: KEYS[1] is always the ``{NS}:meta`` hash, and the
other keys of the registry and of join notifications are derived from its hash tag (they
hash to the same slot, so Redis Cluster runs the script on one node, atomically).
"""

from __future__ import annotations

# Names and formats (docs/redis-keys.md). ``TAG`` is the registry's hash tag, e.g. "{discovery}".
PRELUDE = """
local TAG = string.sub(KEYS[1], 1, -6)
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function user_bucket(uid)
  local h = redis.sha1hex(uid)
  return TAG .. ':u:' .. string.char(tonumber(string.sub(h, 1, 2), 16), tonumber(string.sub(h, 3, 4), 16))
end
local function key_bucket(key) return TAG .. ':d:' .. string.sub(key, 1, 2) end
local function watchers_of(key) return TAG .. ':wk:' .. key end
local function watches_of(uid) return TAG .. ':ww:' .. uid end
local function inbox_of(uid) return TAG .. ':in:' .. uid end
local function devices_of(uid) return TAG .. ':dv:' .. uid end
local function notified_by(jtag) return TAG .. ':jn:' .. jtag end
-- FLAGS: bit 0 discoverable, 1 announce EVERYONE, 2 notify_on_join, 3 announce MUTUAL,
-- 4 announce number changes (neither 1 nor 3: OFF).
local function bit(f, n) return math.floor(f / 2 ^ n) % 2 == 1 end
local function wants_joins(uid)
  local rec = redis.call('HGET', user_bucket(uid), uid)
  return rec and bit(string.byte(rec, 17), 2)
end
local function feed_entry(key, flags, uid) return key .. string.char(string.byte(flags) % 2) .. uid end
local function inbox_time(member)
  local first = string.find(member, ':', 1, true)
  return tonumber(string.sub(member, first + 1, string.find(member, ':', first + 1, true) - 1))
end
-- The user's record while it still holds the key the caller read, else nil and -4 (not
-- registered) or -3 (changed meanwhile: the caller reads again and retries).
local function record_with(ub, uid, key)
  local rec = redis.call('HGET', ub, uid)
  if not rec then return nil, -4 end
  if string.sub(rec, 1, 16) ~= key then return nil, -3 end
  return rec
end
-- Appends a feed entry; a user's private-mode entry rides along in field 'p'.
local function add_feed(seq, value, private)
  if private ~= '' then
    redis.call('XADD', KEYS[2], seq .. '-0', 'c', value, 'p', private)
  else
    redis.call('XADD', KEYS[2], seq .. '-0', 'c', value)
  end
end
-- The user's private-mode entry, or ''; kept with the discoverable bit of the user's flags.
local function private_of(uid)
  local p = redis.call('HGET', TAG .. ':pe', uid)
  if p then return string.sub(p, 2) end
  return ''
end
local function set_private(uid, flags, entry)
  if entry == '' then
    redis.call('HDEL', TAG .. ':pe', uid)
  else
    redis.call('HSET', TAG .. ':pe', uid, string.char(string.byte(flags) % 2) .. entry)
  end
end
-- Deletes the feed entry that named the user (a newer one supersedes it).
local function unfeed(rec) redis.call('XDEL', KEYS[2], string.sub(rec, 18) .. '-0') end
-- TTLs of join keys are a backstop, an hour after their newest content expires: the sweeper
-- (purge_expired) removes expired members within a minute, and counts them.
local function extend_to(key, at_s)
  local ms = math.ceil((at_s + 3600) * 1000)
  if redis.call('PEXPIRETIME', key) < ms then redis.call('PEXPIREAT', key, ms) end
end
-- Remove watch entries (uid watching each key) from both indexes.
local function unwatch(uid, keys)
  for _, key in ipairs(keys) do redis.call('ZREM', watchers_of(key), uid) end
  if #keys > 0 then redis.call('ZREM', watches_of(uid), unpack(keys)) end
end
"""

# Inbox cursor epochs (core.ports.JoinStore.inbox_epochs). Meta field ``jnode`` is the run id
# of the process that issued the newest cursors; another process (a promoted replica, a
# restart) may hold a shorter history, so before it issues a cursor it starts a new epoch: the
# first 15 hex digits of its run id, with the newest cursor it holds as the base. ``jepochs``
# lists "EPOCH:BASE" oldest first (the last 16). Returns that list.
EPOCHS = """
local function inbox_epochs()
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local known = redis.call('HMGET', KEYS[1], 'jnode', 'jepochs')
  if known[1] == run then return known[2] end
  local list = {}
  for item in string.gmatch(known[2] or '', '[^,]+') do list[#list + 1] = item end
  list[#list + 1] = string.sub(run, 1, 15) .. ':' .. (redis.call('HGET', KEYS[1], 'jseq') or '0')
  while #list > 16 do table.remove(list, 1) end
  local joined = table.concat(list, ',')
  redis.call('HSET', KEYS[1], 'jnode', run, 'jepochs', joined)
  return joined
end
local epoch_checked = false
local function next_cursor()
  if not epoch_checked then
    inbox_epochs()
    epoch_checked = true
  end
  return redis.call('HINCRBY', KEYS[1], 'jseq', 1)
end
"""

# An announcement, as the domain made it (core.model.Announcement): the watch tag, the joiner
# tag, the sealed notice and the release delay in seconds.
# ``fan_out`` applies the mode to the watches on the tag: EVERYONE consumes them and appends an
# event to the inbox of each watcher whose watch is unexpired, who is registered with
# notify_on_join and is not the joiner, when the joiner is discoverable; OFF consumes them and
# tells no one; MUTUAL leaves them for the joiner's Discover (ANNOUNCE_MUTUAL).
FAN_OUT = (
    EPOCHS
    + """
local function announcement(wtag, jtag, notice, delay)
  return {wtag = wtag, jtag = jtag, notice = notice, delay = tonumber(delay)}
end
-- The mode that applies: 'everyone', 'mutual' or 'off' (a number change announces only
-- with bit 4).
local function mode_of(flags, number_change)
  local f = string.byte(flags)
  if number_change and not bit(f, 4) then return 'off' end
  if bit(f, 1) then return 'everyone' end
  if bit(f, 3) then return 'mutual' end
  return 'off'
end
local function append_event(watcher, a, now, inbox_ttl, notified)
  local cursor = next_cursor()
  local inbox = inbox_of(watcher)
  local ttl = tonumber(inbox_ttl) + math.ceil(a.delay * 1000)
  local released = string.format('%.6f', now + a.delay)
  redis.call('ZADD', inbox, cursor, cursor .. ':' .. released .. ':' .. a.jtag .. a.notice)
  redis.call('PEXPIRE', inbox, ttl)
  redis.call('SADD', notified_by(a.jtag), watcher)
  redis.call('PEXPIRE', notified_by(a.jtag), ttl)
  notified[#notified + 1] = watcher
end
local function fan_out(joiner, a, flags, mode, now, inbox_ttl, notified)
  if mode == 'mutual' then return end
  local wk = watchers_of(a.wtag)
  local watches = redis.call('ZRANGE', wk, 0, -1, 'WITHSCORES')
  if #watches == 0 then return end
  redis.call('DEL', wk)
  local announce = mode == 'everyone' and bit(string.byte(flags), 0)
  for i = 1, #watches, 2 do
    local watcher = watches[i]
    redis.call('ZREM', watches_of(watcher), a.wtag)
    if announce and watcher ~= joiner and tonumber(watches[i + 1]) > now and wants_joins(watcher) then
      append_event(watcher, a, now, inbox_ttl, notified)
    end
  end
end
-- Wake-ups: a short stream that every instance reads with XREAD BLOCK (see joins.py).
local function signal(notified)
  if #notified > 0 then
    local key = TAG .. ':joins'
    redis.call('XADD', key, 'MAXLEN', '~', 1000, '*', 'u', table.concat(notified, '\\n'))
    redis.call('PEXPIRE', key, 60000)
  end
end
local function announce(joiner, a, flags, mode, inbox_ttl)
  local notified = {}
  fan_out(joiner, a, flags, mode, now_s(), inbox_ttl, notified)
  signal(notified)
end
"""
)

# Forgets what is kept on a user's behalf (watches, inbox, devices); when the user is not
# registered, also the events in other inboxes tagged with their joiner tag.
# Returns how many watches, inbox entries and devices were removed.
FORGET = """
local function forget(uid, registered, jtag)
  local ww = watches_of(uid)
  local keys = redis.call('ZRANGE', ww, 0, -1)
  unwatch(uid, keys)
  local removed = #keys + redis.call('ZCARD', inbox_of(uid)) + redis.call('HLEN', devices_of(uid))
  -- The joiners' sets of whom they told no longer name this watcher.
  for _, member in ipairs(redis.call('ZRANGE', inbox_of(uid), 0, -1)) do
    local second = string.find(member, ':', string.find(member, ':', 1, true) + 1, true)
    redis.call('SREM', notified_by(string.sub(member, second + 1, second + 16)), uid)
  end
  redis.call('DEL', ww, inbox_of(uid), devices_of(uid))
  if not registered then
    local jn = notified_by(jtag)
    for _, watcher in ipairs(redis.call('SMEMBERS', jn)) do
      local inbox = inbox_of(watcher)
      for _, member in ipairs(redis.call('ZRANGE', inbox, 0, -1)) do
        local second = string.find(member, ':', string.find(member, ':', 1, true) + 1, true)
        if string.sub(member, second + 1, second + 16) == jtag then redis.call('ZREM', inbox, member) end
      end
    end
    redis.call('DEL', jn)
    -- Wake-ups that name the user are re-added without them (others still get theirs).
    local js = TAG .. ':joins'
    for _, entry in ipairs(redis.call('XRANGE', js, '-', '+')) do
      local kept, named = {}, false
      for line in string.gmatch(entry[2][2], '[^\\n]+') do
        if line == uid then named = true else kept[#kept + 1] = line end
      end
      if named then
        redis.call('XDEL', js, entry[1])
        if #kept > 0 then redis.call('XADD', js, '*', 'u', table.concat(kept, '\\n')) end
      end
    end
  end
  return removed
end
"""
