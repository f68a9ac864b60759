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
local function notified_by(uid) return TAG .. ':jn:' .. uid end
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

# Consumes every watch on ``key`` and appends a join event to the inbox of each watcher
# whose watch is unexpired, who is registered with notify_on_join and is not the joiner,
# when the joiner announces joins and is discoverable. Returns the notified user ids.
FAN_OUT = (
    EPOCHS
    + """
local function fan_out(joiner, key, flags, now, inbox_ttl, notified)
  local wk = watchers_of(key)
  local watches = redis.call('ZRANGE', wk, 0, -1, 'WITHSCORES')
  if #watches == 0 then return end
  redis.call('DEL', wk)
  local f = string.byte(flags)
  local announce = f % 2 == 1 and math.floor(f / 2) % 2 == 1
  for i = 1, #watches, 2 do
    local watcher = watches[i]
    redis.call('ZREM', watches_of(watcher), key)
    if announce and watcher ~= joiner and tonumber(watches[i + 1]) > now then
      local rec = redis.call('HGET', user_bucket(watcher), watcher)
      if rec and math.floor(string.byte(rec, 17) / 4) % 2 == 1 then
        local cursor = next_cursor()
        local inbox = inbox_of(watcher)
        redis.call('ZADD', inbox, cursor, cursor .. ':' .. string.format('%.6f', now) .. ':' .. key .. joiner)
        redis.call('PEXPIRE', inbox, inbox_ttl)
        redis.call('SADD', notified_by(joiner), watcher)
        redis.call('PEXPIRE', notified_by(joiner), inbox_ttl)
        notified[#notified + 1] = watcher
      end
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
local function announce(joiner, key, flags, inbox_ttl)
  local notified = {}
  fan_out(joiner, key, flags, now_s(), inbox_ttl, notified)
  signal(notified)
end
"""
)

# Forgets what is kept on a user's behalf (watches, inbox, devices); when the user is not
# registered, also the events in other inboxes that name them as the one who joined.
# Returns how many watches, inbox entries and devices were removed.
FORGET = """
local function forget(uid, registered)
  local ww = watches_of(uid)
  local keys = redis.call('ZRANGE', ww, 0, -1)
  unwatch(uid, keys)
  local removed = #keys + redis.call('ZCARD', inbox_of(uid)) + redis.call('HLEN', devices_of(uid))
  redis.call('DEL', ww, inbox_of(uid), devices_of(uid))
  if not registered then
    local jn = notified_by(uid)
    for _, watcher in ipairs(redis.call('SMEMBERS', jn)) do
      local inbox = inbox_of(watcher)
      for _, member in ipairs(redis.call('ZRANGE', inbox, 0, -1)) do
        local second = string.find(member, ':', string.find(member, ':', 1, true) + 1, true)
        if string.sub(member, second + 17) == uid then redis.call('ZREM', inbox, member) end
      end
    end
    redis.call('DEL', jn)
  end
  return removed
end
"""
