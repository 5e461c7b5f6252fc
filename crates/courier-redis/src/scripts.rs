//! The Lua scripts that make each multi-key change atomic on the server.
//!
//! Key layout, for prefix `p` (see [`Keys`](crate::keys::Keys)): `p:queues` (set of queue names), `p:q:<queue>`
//! (the queue's stream, consumer group `courier`), `p:dlq:<queue>` (its dead letters), `p:bind:<type>` (set of
//! queues bound to a message type), `p:qbind:<queue>` (types bound to a queue), `p:delayed` (sorted set of
//! delayed messages by due time, member `<32 hex id><queue>`), `p:delayed:data` (hash member -> packed message),
//! `p:delayed:count` (hash queue -> delayed count), `p:bindver` (a token that changes whenever a binding is added or
//! removed; `p:bindseq` keeps it unique).
//!
//! A stream entry has fields `n` (deliveries already counted before this entry; absent means 0, as on every first
//! publish), `h` (headers as JSON, without the attribute values every message shares) and `b`
//! (body). A delivery's count is `n` plus the times Redis delivered the entry (1 unless a dead consumer's entry
//! was claimed).

use redis::Script;

/// Lua helpers shared by the scripts.
macro_rules! lua {
    ($body:expr) => {
        concat!(
            r#"
local G = 'courier'
local function ensure(p, q, force)
  if redis.call('SADD', p .. ':queues', q) == 1 or force then
    redis.pcall('XGROUP', 'CREATE', p .. ':q:' .. q, G, '0', 'MKSTREAM')
  end
end
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
local function delay(p, q, id, due, n, h, b)
  local m = id .. q
  redis.call('ZADD', p .. ':delayed', due, m)
  redis.call('HSET', p .. ':delayed:data', m, cmsgpack.pack(n, h, b))
  redis.call('HINCRBY', p .. ':delayed:count', q, 1)
end
-- The entry `id` of queue `q` if `me` holds it: its fields and how often Redis delivered it.
local function held(p, q, id, me)
  local k = p .. ':q:' .. q
  local pe = redis.call('XPENDING', k, G, id, id, 1)
  if not pe[1] or pe[1][2] ~= me then return nil end
  local e = redis.call('XRANGE', k, id, id)
  if not e[1] then
    redis.call('XACK', k, G, id)
    return nil
  end
  return e[1][2], pe[1][4]
end
-- Marks a change of bindings: publishers that read them earlier read them again (see the transport's publish).
-- Unique even after the keys are flushed and the counter starts again, hence the server time in it.
local function bindings_changed(p)
  local t = redis.call('TIME')
  redis.call('SET', p .. ':bindver', t[1] .. '.' .. t[2] .. '-' .. redis.call('INCR', p .. ':bindseq'))
end
local function remove(p, q, id)
  local k = p .. ':q:' .. q
  redis.call('XACK', k, G, id)
  redis.call('XDEL', k, id)
end
-- Puts a held entry back at the end of its queue without counting a delivery.
local function release(p, q, id, me)
  local f, d = held(p, q, id, me)
  if not f then return 0 end
  remove(p, q, id)
  local n = (tonumber(field(f, 'n')) or 0) + d - 1
  redis.call('XADD', p .. ':q:' .. q, '*', 'n', n, 'h', field(f, 'h') or '{}', 'b', field(f, 'b') or '')
  return 1
end
"#,
            $body
        )
    };
}

/// ARGV: prefix, queue, force ('1' re-creates the group), [message type]. Declares a queue (and binds it).
const DECLARE: &str = lua!(
    r#"
local p, q = ARGV[1], ARGV[2]
ensure(p, q, ARGV[3] == '1')
if ARGV[4] then
  if redis.call('SADD', p .. ':bind:' .. ARGV[4], q) == 1 then
    bindings_changed(p)
  end
  redis.call('SADD', p .. ':qbind:' .. q, ARGV[4])
end
return 1
"#
);

/// ARGV: prefix, then message types. Returns the bindings version (set first if there is none, so a cache of
/// bindings always has one to check), then for each type the queues bound to it.
const BINDINGS: &str = lua!(
    r#"
local p = ARGV[1]
local version = redis.call('GET', p .. ':bindver')
if not version then
  bindings_changed(p)
  version = redis.call('GET', p .. ':bindver')
end
local out = {version}
for i = 2, #ARGV do
  out[i] = redis.call('SMEMBERS', p .. ':bind:' .. ARGV[i])
end
return out
"#
);

/// ARGV: prefix, queue, bindings version. Declares a bound queue whose stream vanished (deleted by hand, evicted)
/// again, only if the bindings are still at that version (else the queue may have been deleted meanwhile; the
/// publisher reads the bindings again instead). Returns 1 if declared.
const REVIVE: &str = lua!(
    r#"
local p, q = ARGV[1], ARGV[2]
if redis.call('GET', p .. ':bindver') ~= ARGV[3] then return 0 end
ensure(p, q, true)
return 1
"#
);

/// ARGV: prefix, queue, headers, body. Appends to one queue (declaring it).
const SEND: &str = lua!(
    r#"
ensure(ARGV[1], ARGV[2], false)
redis.call('XADD', ARGV[1] .. ':q:' .. ARGV[2], '*', 'h', ARGV[3], 'b', ARGV[4])
return 1
"#
);

/// ARGV: prefix, due ms, id, headers, body, 'q' or 't', queue or type. Delays a send or a publish.
const SCHEDULE: &str = lua!(
    r#"
local p = ARGV[1]
local qs
if ARGV[6] == 't' then
  qs = redis.call('SMEMBERS', p .. ':bind:' .. ARGV[7])
else
  ensure(p, ARGV[7], false)
  qs = { ARGV[7] }
end
for _, q in ipairs(qs) do delay(p, q, ARGV[3], ARGV[2], 0, ARGV[4], ARGV[5]) end
return #qs
"#
);

/// ARGV: prefix, now ms, limit. Moves due delayed messages to their queues; returns {moved, next due or -1}.
const PUMP: &str = lua!(
    r#"
local p = ARGV[1]
local z, data, count = p .. ':delayed', p .. ':delayed:data', p .. ':delayed:count'
local due = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  local q = string.sub(m, 33)
  local packed = redis.call('HGET', data, m)
  redis.call('ZREM', z, m)
  redis.call('HDEL', data, m)
  if redis.call('HINCRBY', count, q, -1) <= 0 then redis.call('HDEL', count, q) end
  if packed and redis.call('SISMEMBER', p .. ':queues', q) == 1 then
    local n, h, b = cmsgpack.unpack(packed)
    redis.call('XADD', p .. ':q:' .. q, '*', 'n', n, 'h', h, 'b', b)
  end
end
local nxt = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
return { #due, tonumber(nxt[2]) or -1 }
"#
);

/// ARGV: prefix, queue, entry id, consumer, headers, due ms, now ms, fresh id. Redelivers later, counted.
const RETRY: &str = lua!(
    r#"
local p, q, id = ARGV[1], ARGV[2], ARGV[3]
local f, d = held(p, q, id, ARGV[4])
if not f then return 0 end
remove(p, q, id)
local n = (tonumber(field(f, 'n')) or 0) + d
local b = field(f, 'b') or ''
if tonumber(ARGV[6]) <= tonumber(ARGV[7]) then
  redis.call('XADD', p .. ':q:' .. q, '*', 'n', n, 'h', ARGV[5], 'b', b)
else
  delay(p, q, ARGV[8], ARGV[6], n, ARGV[5], b)
end
return 1
"#
);

/// ARGV: prefix, queue, entry id, consumer. Puts the entry back uncounted.
const RELEASE: &str = lua!(
    r#"
return release(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"#
);

/// ARGV: prefix, queue, entry id, consumer, headers. Moves the entry to the dead-letter stream.
const DEAD_LETTER: &str = lua!(
    r#"
local p, q, id = ARGV[1], ARGV[2], ARGV[3]
local f = held(p, q, id, ARGV[4])
if not f then return 0 end
remove(p, q, id)
redis.call('XADD', p .. ':dlq:' .. q, '*', 'h', ARGV[5], 'b', field(f, 'b') or '')
return 1
"#
);

/// KEYS: the stream. ARGV: consumer, min idle ms, count, cursor. Claims entries of dead consumers; returns
/// {next cursor, {{id, fields, times delivered}, ...}}. Also forgets consumers idle for an hour holding nothing.
const CLAIM: &str = r#"
local k, me = KEYS[1], ARGV[1]
local r = redis.call('XAUTOCLAIM', k, 'courier', me, ARGV[2], ARGV[4], 'COUNT', ARGV[3])
local out = {}
for _, e in ipairs(r[2]) do
  if e and e[2] then
    local pe = redis.call('XPENDING', k, 'courier', e[1], e[1], 1)
    local d = 1
    if pe[1] then d = pe[1][4] end
    table.insert(out, { e[1], e[2], d })
  end
end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', k, 'courier')) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name ~= me and pending == 0 and idle and idle > 3600000 then
    redis.call('XGROUP', 'DELCONSUMER', k, 'courier', name)
  end
end
return { r[1], out }
"#;

/// KEYS: the stream. ARGV: consumer, entry ids... Resets the idle time of entries the consumer still holds.
const RENEW: &str = r#"
local k, me, renewed = KEYS[1], ARGV[1], 0
for i = 2, #ARGV do
  local pe = redis.call('XPENDING', k, 'courier', ARGV[i], ARGV[i], 1)
  if pe[1] and pe[1][2] == me then
    redis.call('XCLAIM', k, 'courier', me, 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"#;

/// ARGV: prefix, queue, consumer, entry ids still being handled... Releases entries the consumer took but never
/// handed out (a cancelled read); forgets the consumer if it then holds nothing. Returns how many it released.
const RETIRE: &str = lua!(
    r#"
local p, q, me = ARGV[1], ARGV[2], ARGV[3]
local k = p .. ':q:' .. q
if redis.call('EXISTS', k) == 0 then return 0 end
local keep = {}
for i = 4, #ARGV do keep[ARGV[i]] = true end
local ok, pending = pcall(redis.call, 'XPENDING', k, G, '-', '+', 1000, me)
if not ok then return 0 end
local released = 0
for _, pe in ipairs(pending) do
  if not keep[pe[1]] then released = released + release(p, q, pe[1], me) end
end
if #ARGV == 3 then redis.pcall('XGROUP', 'DELCONSUMER', k, G, me) end
return released
"#
);

/// ARGV: prefix, queue. Deletes a queue: its stream, dead letters, bindings and delayed messages.
const DELETE_QUEUE: &str = lua!(
    r#"
local p, q = ARGV[1], ARGV[2]
redis.call('DEL', p .. ':q:' .. q, p .. ':dlq:' .. q)
redis.call('SREM', p .. ':queues', q)
local types = redis.call('SMEMBERS', p .. ':qbind:' .. q)
for _, t in ipairs(types) do
  redis.call('SREM', p .. ':bind:' .. t, q)
end
if #types > 0 then
  bindings_changed(p)
end
redis.call('DEL', p .. ':qbind:' .. q)
if redis.call('HDEL', p .. ':delayed:count', q) == 1 then
  for _, m in ipairs(redis.call('ZRANGE', p .. ':delayed', 0, -1)) do
    if string.sub(m, 33) == q then
      redis.call('ZREM', p .. ':delayed', m)
      redis.call('HDEL', p .. ':delayed:data', m)
    end
  end
end
return 1
"#
);

/// ARGV: prefix. Returns {queue, length, pending, delayed, dead letters, ...} for every queue.
const STATS: &str = r#"
local p = ARGV[1]
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', p .. ':queues')) do
  local k = p .. ':q:' .. q
  local ok, pe = pcall(redis.call, 'XPENDING', k, 'courier')
  local pending = 0
  if ok then pending = pe[1] end
  local delayed = tonumber(redis.call('HGET', p .. ':delayed:count', q)) or 0
  table.insert(out, q)
  table.insert(out, redis.call('XLEN', k))
  table.insert(out, pending)
  table.insert(out, delayed)
  table.insert(out, redis.call('XLEN', p .. ':dlq:' .. q))
end
return out
"#;

/// ARGV: prefix, queue, dead-letter id, headers. Returns a dead letter to its queue, uncounted; 0 if it is gone.
const REPLAY: &str = lua!(
    r#"
local p, q, id = ARGV[1], ARGV[2], ARGV[3]
local d = p .. ':dlq:' .. q
local e = redis.call('XRANGE', d, id, id)
if not e[1] then return 0 end
redis.call('XDEL', d, id)
ensure(p, q, false)
redis.call('XADD', p .. ':q:' .. q, '*', 'h', ARGV[4], 'b', field(e[1][2], 'b') or '')
return 1
"#
);

/// The scripts, loaded once per transport (Redis caches them by SHA1).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) declare: Script,
    pub(crate) bindings: Script,
    pub(crate) revive: Script,
    pub(crate) send: Script,
    pub(crate) schedule: Script,
    pub(crate) pump: Script,
    pub(crate) retry: Script,
    pub(crate) release: Script,
    pub(crate) dead_letter: Script,
    pub(crate) claim: Script,
    pub(crate) renew: Script,
    pub(crate) retire: Script,
    pub(crate) delete_queue: Script,
    pub(crate) stats: Script,
    pub(crate) replay: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            declare: Script::new(DECLARE),
            bindings: Script::new(BINDINGS),
            revive: Script::new(REVIVE),
            send: Script::new(SEND),
            schedule: Script::new(SCHEDULE),
            pump: Script::new(PUMP),
            retry: Script::new(RETRY),
            release: Script::new(RELEASE),
            dead_letter: Script::new(DEAD_LETTER),
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            retire: Script::new(RETIRE),
            delete_queue: Script::new(DELETE_QUEUE),
            stats: Script::new(STATS),
            replay: Script::new(REPLAY),
        }
    }
}
