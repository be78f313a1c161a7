"""The heartbeat's hot path in Redis: one atomic script per heartbeat, no Postgres round trip.

Each running sandbox has a *beat record* (`{prefix}:beat:{id}`: owner, project, the charged time,
visibility, the last heartbeat, open or closed). `BEAT` reads it, works out what the heartbeat
owes (as `previews.charging.Charger.plan` does: whole seconds since the charged time, at most one
interval + grace, nothing behind a hidden tab, split at local midnight), reserves it against the
day's cap in the usage mirror, renews the slot, advances the record and appends one *link* to the
pending list — all atomically. The ledger is written behind: `claim_batches` moves the pending
list aside as a numbered batch (atomically, so a link is in exactly one batch), the flusher applies
it to Postgres and `ack`s it. A link names the charged time it continues from, and Postgres
applies it only while the row's `charged_until` still equals that (a compare-and-set), so a batch
applied twice (a replica died between its commit and its ack) charges once, and a batch left by
a dead replica is applied by the next flush: nothing twice, nothing lost.

A stop closes the record first (`close`; a user's stop charges its last seconds as a final link),
so no heartbeat charges a sandbox being stopped; a closed record stays as a tombstone for a day,
so a late heartbeat cannot reload it from a row read before the stop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# KEYS: 1 record, 2 pending list, 3 usage mirror today, 4 usage mirror yesterday, 5 slots zset.
# ARGV: 1 now µs, 2 visible ('1' | '0' | '' = as before), 3 owner ('' = anyone), 4 final ('1'
# closes the record), 5 most seconds, 6 cap, 7 usage ttl, 8 slot lease ms ('0' = none),
# 9 today's local midnight µs, 10 today, 11 yesterday, 12 record ttl, 13 sandbox id,
# 14..18 (a record to load when there is none): owner, project, charged µs, row's charged µs
# ('' = NULL), visible.
# → {'ok', granted, total today} | {'miss'} | {'closed'} | {'other'} | {'nomirror', day}
BEAT = """
local rec = KEYS[1]
local st = redis.call('HGET', rec, 'st')
if not st then
  if #ARGV < 18 then return {'miss'} end
  redis.call('HSET', rec, 'st', 'open', 'u', ARGV[14], 'p', ARGV[15], 'cu', ARGV[16],
             'pcu', ARGV[17], 'v', ARGV[18], 'last', ARGV[16])
  st = 'open'
end
if st ~= 'open' then return {'closed'} end
local f = redis.call('HMGET', rec, 'u', 'p', 'cu', 'pcu', 'v')
if ARGV[3] ~= '' and f[1] ~= ARGV[3] then return {'other'} end
if not redis.call('GET', KEYS[3]) then return {'nomirror', ARGV[10]} end
local now = tonumber(ARGV[1])
local cu = tonumber(f[3])
local most = tonumber(ARGV[5])
local seconds, begin, upto = 0, now, cu
local gap = now - cu
if f[5] == '0' then
  upto = now
elseif gap >= most * 1000000 then
  seconds = most; begin = now - most * 1000000; upto = now
elseif gap >= 1000000 then
  seconds = math.floor(gap / 1000000); begin = cu; upto = cu + seconds * 1000000
end
local parts = {}
if seconds > 0 then
  local y = 0
  local midnight = tonumber(ARGV[9])
  if begin < midnight then
    local room = math.floor((midnight - begin) / 1000000)
    if room > 0 then y = math.min(seconds, room) end
  end
  if y > 0 then
    if not redis.call('GET', KEYS[4]) then return {'nomirror', ARGV[11]} end
    parts[#parts + 1] = {KEYS[4], ARGV[11], y}
  end
  if seconds - y > 0 then parts[#parts + 1] = {KEYS[3], ARGV[10], seconds - y} end
end
local cap = tonumber(ARGV[6])
local granted_all = 0
local link = {ARGV[13], f[1], f[2], f[4]}
for _, part in ipairs(parts) do
  local cur = tonumber(redis.call('GET', part[1]))
  local room = cap - cur
  if room < 0 then room = 0 end
  local granted = math.min(part[3], room)
  if granted < part[3] then upto = now end
  if granted > 0 then redis.call('INCRBY', part[1], granted) end
  redis.call('EXPIRE', part[1], tonumber(ARGV[7]))
  granted_all = granted_all + granted
  link[#link + 1] = part[2] .. '=' .. granted
end
if tonumber(ARGV[8]) > 0 then
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[5], ms + tonumber(ARGV[8]), ARGV[13])
  redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[8]) * 2)
end
local v = f[5]
if ARGV[2] ~= '' then v = ARGV[2] end
local upto_s = string.format('%.0f', upto)
redis.call('HSET', rec, 'cu', upto_s, 'pcu', upto_s, 'v', v, 'last', ARGV[1])
if ARGV[4] == '1' then redis.call('HSET', rec, 'st', 'closed') end
redis.call('EXPIRE', rec, tonumber(ARGV[12]))
table.insert(link, 5, upto_s)
table.insert(link, 6, v)
table.insert(link, 7, ARGV[1])
redis.call('RPUSH', KEYS[2], table.concat(link, '\\t'))
return {'ok', granted_all, tonumber(redis.call('GET', KEYS[3]))}
"""

# KEYS: 1 record. ARGV: 1 mode ('idle': only when no heartbeat came after ARGV[2] µs), 2 seen µs,
# 3 tombstone ttl. → 'closed' (by this call, or already) | 'fresh' (a heartbeat came: keep it)
CLOSE = """
local st = redis.call('HGET', KEYS[1], 'st')
if st == 'open' and ARGV[1] == 'idle' then
  local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
  if last > tonumber(ARGV[2]) then return 'fresh' end
end
redis.call('HSET', KEYS[1], 'st', 'closed')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 'closed'
"""

# CLOSE for many records at once (the reaper's batches). KEYS: the records. ARGV: 1 tombstone
# ttl, 1+i: key i's seen µs ('' = close whatever came). → the indexes (1-based) left open.
CLOSE_MANY = """
local fresh = {}
for i, key in ipairs(KEYS) do
  local keep = false
  if ARGV[1 + i] ~= '' and redis.call('HGET', key, 'st') == 'open' then
    local last = tonumber(redis.call('HGET', key, 'last') or '0')
    keep = last > tonumber(ARGV[1 + i])
  end
  if keep then
    fresh[#fresh + 1] = i
  else
    redis.call('HSET', key, 'st', 'closed')
    redis.call('EXPIRE', key, tonumber(ARGV[1]))
  end
end
return fresh
"""

# KEYS: 1 pending list, 2 batches list, 3 batch counter. ARGV: batch key prefix.
# → the batch keys to apply, oldest first (a batch left by a dead replica comes first).
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local key = ARGV[1] .. redis.call('INCR', KEYS[3])
  redis.call('RENAME', KEYS[1], key)
  redis.call('RPUSH', KEYS[2], key)
end
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

TOMBSTONE_SECONDS = 86400


def micros(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def moment(us: int) -> datetime:
    from datetime import timedelta

    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class BeatResult:
    kind: str  # ok | miss | closed | other | nomirror
    granted: int = 0
    total_today: int = 0
    day: str = ""  # the day whose mirror is missing (nomirror)


@dataclass(frozen=True, slots=True)
class Link:
    """One heartbeat's charge, as the ledger applies it."""

    sandbox_id: str
    user_id: str
    project_id: str
    after: datetime | None  # the row's charged_until it continues from (None = NULL)
    until: datetime
    visible: bool
    at: datetime  # when the heartbeat came
    days: list[tuple[str, int]]  # seconds charged per usage day

    @classmethod
    def parse(cls, text: str) -> Link:
        sid, user, project, after, until, visible, at, *days = text.split("\t")
        return cls(
            sid,
            user,
            project,
            moment(int(after)) if after else None,
            moment(int(until)),
            visible == "1",
            moment(int(at)),
            [(d, int(s)) for d, s in (part.split("=") for part in days)],
        )


@dataclass(frozen=True, slots=True)
class Terms:
    """What a heartbeat's charge depends on besides the record."""

    most: int
    cap: int
    usage_ttl: int
    lease_seconds: int
    record_ttl: int


class BeatStore:
    def __init__(self, redis: Any, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._beat = redis.register_script(BEAT)
        self._close = redis.register_script(CLOSE)
        self._close_many = redis.register_script(CLOSE_MANY)
        self._claim = redis.register_script(CLAIM)
        self.pending_key = f"{prefix}:beats:pending"
        self.batches_key = f"{prefix}:beats:batches"

    def record_key(self, sandbox_id: str) -> str:
        return f"{self.prefix}:beat:{sandbox_id}"

    async def beat(
        self,
        sandbox_id: str,
        now: datetime,
        *,
        terms: Terms,
        keys: tuple[str, str, str],  # usage mirror today, yesterday; the slots zset
        days: tuple[str, str, datetime],  # today, yesterday, today's local midnight
        visible: bool | None,
        owner: str | None,
        final: bool = False,
        renew: bool = True,
        load: tuple[str, str, datetime, datetime | None, bool] | None = None,
    ) -> BeatResult:
        """One heartbeat (or a user's stop, `final`): see the module's text."""
        args: list[Any] = [
            micros(now), "" if visible is None else int(visible), owner or "", int(final),
            terms.most, terms.cap, terms.usage_ttl, terms.lease_seconds * 1000 if renew else 0,
            micros(days[2]), days[0], days[1], terms.record_ttl, sandbox_id,
        ]  # fmt: skip
        if load is not None:
            user, project, start, charged, shown = load
            args += [user, project, micros(start), "" if charged is None else micros(charged)]
            args.append(int(shown))
        res = await self._beat(
            keys=[self.record_key(sandbox_id), self.pending_key, *keys], args=args
        )
        kind = str(res[0])
        if kind == "ok":
            return BeatResult(kind, int(res[1]), int(res[2]))
        return BeatResult(kind, day=str(res[1]) if len(res) > 1 else "")

    async def close(self, sandbox_id: str, *, seen: datetime | None = None) -> bool:
        """Close the record (no heartbeat charges it any more): False when `seen` is given and
        a heartbeat came after it (the sandbox is watched after all)."""
        mode, at = ("idle", micros(seen)) if seen is not None else ("any", 0)
        res = await self._close(
            keys=[self.record_key(sandbox_id)], args=[mode, at, TOMBSTONE_SECONDS]
        )
        return str(res) == "closed"

    async def close_many(self, records: Sequence[tuple[str, datetime | None]]) -> set[str]:
        """`close` for many (sandbox id, seen) in one call: the ids a heartbeat came to after
        their `seen` (left open: watched after all)."""
        if not records:
            return set()
        left_open = await self._close_many(
            keys=[self.record_key(sandbox_id) for sandbox_id, _ in records],
            args=[TOMBSTONE_SECONDS, *("" if s is None else micros(s) for _, s in records)],
        )
        return {records[int(i) - 1][0] for i in left_open}

    async def claim_batches(self) -> list[str]:
        """Move the pending links aside as a batch; every batch to apply, oldest first."""
        keys = [self.pending_key, self.batches_key, f"{self.prefix}:beats:seq"]
        return [str(k) for k in await self._claim(keys=keys, args=[f"{self.prefix}:beats:b:"])]

    async def links(self, batch: str) -> list[Link]:
        return [Link.parse(text) for text in await self.redis.lrange(batch, 0, -1)]

    async def ack(self, batch: str) -> None:
        """The batch is in Postgres: forget it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self.batches_key, 0, batch)
            pipe.delete(batch)
            await pipe.execute()

    async def pending(self) -> int:
        """Links not yet applied (pending and claimed batches)."""
        total = int(await self.redis.llen(self.pending_key))
        for batch in await self.redis.lrange(self.batches_key, 0, -1):
            total += int(await self.redis.llen(batch))
        return total
