"""Lua scripts: each rule is one atomic script, deadlines from Redis' own clock (`TIME`)."""

# KEYS[1] slots zset (member = sandbox id, score = lease deadline in ms)
# ARGV: sandbox id, limit, lease ms  → {1} granted | {0, holder ids...}
ACQUIRE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lease = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease * 2)
  return {1}
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local holders = redis.call('ZRANGE', KEYS[1], 0, -1)
  table.insert(holders, 1, 0)
  return holders
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return {1}
"""

# KEYS[1] slots zset. ARGV: lease ms, ids...  → renews the given members that still hold a slot
# and re-asserts (adds) them: used by heartbeats and by sync, which rebuilds slots from Postgres.
RENEW_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
if #ARGV > 1 then redis.call('PEXPIRE', KEYS[1], lease * 2) end
return #ARGV - 1
"""

# KEYS[1] counter key. ARGV: limit, window seconds → {1, 0} allowed | {0, retry-after seconds}
RATE_LIMIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
if n > tonumber(ARGV[1]) then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 1 then ttl = 1 end
  return {0, ttl}
end
return {1, 0}
"""

# KEYS[1] usage counter. ARGV: seconds, ttl → the counter after raising it to at least `seconds`
# (never lowers it). Writers of a total read from Postgres use this: a charge may have committed
# and reached the mirror after the total was read, and overwriting would lose it.
RAISE_USAGE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
local v = tonumber(ARGV[1])
if v > cur then
  redis.call('SET', KEYS[1], v, 'EX', tonumber(ARGV[2]))
  return v
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return cur
"""

# The heartbeat's one Redis call. KEYS[1] usage counter of a day, KEYS[2] the slots zset.
# ARGV: seconds wanted, daily cap, usage ttl, sandbox id ('' = no slot to renew), lease ms.
# Renews the sandbox's slot and reserves up to `seconds` of the day's remaining time, atomically,
# so that two sandboxes of one user charging at once cannot both spend the same remainder.
# → {granted, total after} | {-1, 0} when the mirror is missing (rebuild it from Postgres).
HEARTBEAT = """
if ARGV[4] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]) * 2)
end
local cur = redis.call('GET', KEYS[1])
if not cur then return {-1, 0} end
cur = tonumber(cur)
local want = tonumber(ARGV[1])
local room = tonumber(ARGV[2]) - cur
if room < 0 then room = 0 end
local granted = want
if granted > room then granted = room end
if granted > 0 then redis.call('INCRBY', KEYS[1], granted) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {granted, cur + granted}
"""
