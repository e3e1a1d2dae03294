//! The Lua scripts of the stream log: every step that reads the meta hash
//! and then writes depending on it runs as one script, so two instances
//! never interleave between the read and the write.
//!
//! Each script names the meta hash in `KEYS`; a generation's stream key is
//! built in the script from `ARGV` (the stream keys' prefix, which ends in
//! `:`) and the generation the hash holds. Both keys share the hash tag
//! `{conversation}`, so they live on one node of a cluster.
//!
//! Meta fields: `gen` (the generation, decimal), `msg` (the message id),
//! `open` (`1` or `0`), `stop` (`1` or `0`), `want` (`1` once a reader on
//! an instance that does not run the generation asked for its events, else
//! `0` or absent), and `tail`
//! (`{generation}:{number}`: the number of the last event the append
//! scripts added to that generation's stream). Stream entries: `e <event
//! name or empty> d <data>` for an event, `end 1` for the end of the log.
//!
//! The append scripts read the last event's number from `tail` when it
//! names the open generation, and from the stream's last entry otherwise
//! (a generation none of them has appended to yet, or one opened and
//! appended to by an instance whose scripts predate `tail`: Confab appends
//! to a generation only from the instance running it, so a generation's
//! appends all come from one version of the scripts; an older instance's
//! append to a newer one's generation would leave `tail` behind, and the
//! running instance's next batch would fail as a gap, never land twice).
//! Reading the stream's last entry back, converted into Lua, costs Redis
//! about twice what writing and reading the hash field does (ADR 0005,
//! fifteenth pass).
//!
//! Numbers are stored with `%d`: Lua's `tostring` would print a
//! millisecond time in exponent form.

/// Opens a new generation. `KEYS[1]`: the meta hash. `ARGV[1]`: the message
/// id. `ARGV[2]`: the lease (ms).
///
/// The generation is `max(previous + 1, now)` in ms of Redis's clock
/// (`now` when there is no previous one), so a conversation's generations
/// keep growing even after its meta hash expired and was made again.
///
/// Returns `{'open'}` while a generation is open (an expired lease has
/// already removed the hash), else `{'ok', generation}`.
const OPEN: &str = r"-- confab stream log open v2
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('HGET', KEYS[1], 'open') == '1' then
  return {'open'}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local generation = tonumber(redis.call('HGET', KEYS[1], 'gen'))
if generation == nil or generation < now then
  generation = now
else
  generation = generation + 1
end
generation = string.format('%d', generation)
redis.call('HSET', KEYS[1], 'gen', generation, 'msg', ARGV[1], 'open', '1', 'stop', '0', 'want', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'ok', generation}
";

/// A Lua function `last_event(stream)` for the scripts that judge numbers:
/// the number of the stream's last event (0 when it has none), read from
/// its last entry or, once closed, from the end entry, which holds it; and
/// whether it is closed. The number is `nil` when the last entry is no
/// numbered event (a stream written before events were numbered).
macro_rules! last_event {
    () => {
        r"local function last_event(stream)
  local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if tail[1] == nil then
    return 0, false
  end
  if tail[1][2][1] == 'end' then
    return tonumber(tail[1][2][2]), true
  end
  return tonumber(string.match(tail[1][1], '^0%-(%d+)$')), false
end
"
    };
}

/// A Lua function `known_last(tail, generation, stream)`: the number of
/// the last event of `generation`'s `stream`, from the meta hash's `tail`
/// field when it names that generation, else as `last_event` reads it
/// (`nil` when the stream's last entry is no numbered event).
macro_rules! known_last {
    () => {
        r"local function known_last(tail, generation, stream)
  if tail then
    local at, n = string.match(tail, '^(%d+):(%d+)$')
    if at == generation then
      return tonumber(n)
    end
  end
  return (last_event(stream))
end
"
    };
}

/// Appends events to the open generation's stream, in order, as entries
/// `0-{n}`: the events of a generation are numbered from 1.
/// `KEYS[1]`: the meta hash. `ARGV[1]`: the stream keys' prefix.
/// `ARGV[2]`: the most events a log holds. `ARGV[3]`: the generation the
/// caller opened, or empty for any. `ARGV[4]`: the number of the batch's
/// first event, as the instance running the generation gave it, or empty
/// for the script to number after the stream's last entry. `ARGV[5]`: `1`
/// when numbers before the batch may be missing (the instance gave them
/// to events whose append failed for good: they are never given again),
/// else empty. `ARGV[6]`, `ARGV[7]`, …: each event's name (or empty) and
/// data.
///
/// Given numbers make a retry safe: when the stream already ends with the
/// batch's last number, the batch was appended by an attempt whose reply
/// was lost, and its ids are returned without appending it again.
///
/// The stream takes the hash's TTL (the lease) when this batch creates it
/// (its first entry creates it without one); after that, the renewals keep
/// both keys' TTLs. The batch's last number goes to the hash's `tail`.
///
/// Returns `{'none'}` when no generation is open (or not the caller's),
/// `{'gap'}` when the batch does not follow the stream's last entry,
/// `{'full'}` when the batch would pass the most events, else `{'ok',
/// generation, entry id…}`.
const APPEND: &str = concat!(
    "-- confab stream log append v5\n",
    "if redis.replicate_commands then redis.replicate_commands() end\n",
    last_event!(),
    known_last!(),
    r"local log = redis.call('HMGET', KEYS[1], 'gen', 'open', 'tail')
if log[2] ~= '1' or (ARGV[3] ~= '' and ARGV[3] ~= log[1]) then
  return {'none'}
end
local stream = ARGV[1] .. log[1]
local count = (#ARGV - 5) / 2
local last = known_last(log[3], log[1], stream)
if last == nil then
  return {'gap'}
end
local first = last + 1
if ARGV[4] ~= '' then
  first = tonumber(ARGV[4])
end
local reply = {'ok', log[1]}
for i = 0, count - 1 do
  reply[#reply + 1] = string.format('0-%d', first + i)
end
if count > 0 and first <= last then
  if first + count - 1 == last then
    return reply
  end
  return {'gap'}
end
if first ~= last + 1 and not (first > last and ARGV[5] == '1') then
  return {'gap'}
end
if first + count - 1 > tonumber(ARGV[2]) then
  return {'full'}
end
for i = 0, count - 1 do
  redis.call('XADD', stream, reply[i + 3], 'e', ARGV[6 + 2 * i], 'd', ARGV[7 + 2 * i])
end
if count > 0 then
  redis.call('HSET', KEYS[1], 'tail', log[1] .. ':' .. string.format('%d', first + count - 1))
end
if last == 0 and count > 0 then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', stream, ttl)
  end
end
return reply
",
);

/// Appends what this instance queued for several generations it runs, each
/// as [`APPEND`] does with given numbers (one call for many logs: see
/// `append.rs`). `KEYS[i]`: the meta hash of the `i`th log. `ARGV[1]`: the
/// most events a log holds; then for each log in turn its stream keys'
/// prefix, its generation, the number of the batch's first event, the
/// batch's event count, and each event's name (or empty) and data.
///
/// Each batch is judged on its own, as [`APPEND`] judges one: a batch
/// whose numbers the stream already ends with is taken as landed (a
/// retried call whose reply was lost), so a retried call appends nothing
/// twice. Each batch's last number goes to its hash's `tail`. The keys of
/// one call must share a node (a cluster sends one log per call).
///
/// Returns one status per log, in order: `ok` (appended, or already
/// there), `none` (no generation open, or not the caller's), `gap` (the
/// batch does not follow the stream's last entry) or `full`.
const APPEND_MANY: &str = concat!(
    "-- confab stream log append many v2\n",
    "if redis.replicate_commands then redis.replicate_commands() end\n",
    last_event!(),
    known_last!(),
    r"local most = tonumber(ARGV[1])
local reply = {}
local at = 2
for k = 1, #KEYS do
  local prefix, generation = ARGV[at], ARGV[at + 1]
  local first, count = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local events = at + 4
  at = events + 2 * count
  local status = 'ok'
  local log = redis.call('HMGET', KEYS[k], 'gen', 'open', 'tail')
  if log[2] ~= '1' or log[1] ~= generation then
    status = 'none'
  else
    local stream = prefix .. generation
    local last = known_last(log[3], generation, stream)
    if last == nil then
      status = 'gap'
    elseif first <= last then
      if first + count - 1 ~= last then
        status = 'gap'
      end
    elseif first ~= last + 1 then
      status = 'gap'
    elseif first + count - 1 > most then
      status = 'full'
    else
      for i = 0, count - 1 do
        redis.call('XADD', stream, string.format('0-%d', first + i), 'e', ARGV[events + 2 * i], 'd', ARGV[events + 2 * i + 1])
      end
      if count > 0 then
        redis.call('HSET', KEYS[k], 'tail', generation .. ':' .. string.format('%d', first + count - 1))
      end
      if last == 0 then
        local ttl = redis.call('PTTL', KEYS[k])
        if ttl > 0 then
          redis.call('PEXPIRE', stream, ttl)
        end
      end
    end
  end
  reply[k] = status
end
return reply
",
);

/// Closes the open generation: adds the events the caller kept and never
/// handed over, if any, marks it closed, adds the end entry (which wakes
/// blocked readers; its id is Redis's, `{ms}-0`, after every event's
/// `0-{n}`, and its value the number of the last event) and keeps both
/// keys for the retention.
/// `KEYS[1]`: the meta hash. `ARGV[1]`: the stream keys' prefix.
/// `ARGV[2]`: the retention (ms). `ARGV[3]`: the generation the caller
/// opened, or empty for any. `ARGV[4]`: the number of the first kept
/// event, or empty when none are given. `ARGV[5]`, `ARGV[6]`, …: each kept
/// event's name (or empty) and data.
///
/// Kept events are added only when they follow the stream's last entry
/// (as an append's would be judged); otherwise they are left out and the
/// log closes after what it holds.
///
/// Returns 1 when a generation was closed, 2 when it was but its kept
/// events were left out, 0 when none was open (or not the caller's).
const CLOSE: &str = concat!(
    "-- confab stream log close v3\n",
    "if redis.replicate_commands then redis.replicate_commands() end\n",
    last_event!(),
    known_last!(),
    r"local log = redis.call('HMGET', KEYS[1], 'gen', 'open', 'tail')
if log[2] ~= '1' or (ARGV[3] ~= '' and ARGV[3] ~= log[1]) then
  return 0
end
local stream = ARGV[1] .. log[1]
local reply = 1
local last = known_last(log[3], log[1], stream)
local count = (#ARGV - 4) / 2
if count > 0 then
  local first = tonumber(ARGV[4])
  if last ~= nil and first == last + 1 then
    for i = 0, count - 1 do
      redis.call('XADD', stream, string.format('0-%d', first + i), 'e', ARGV[5 + 2 * i], 'd', ARGV[6 + 2 * i])
    end
    last = first + count - 1
  else
    reply = 2
  end
end
redis.call('HSET', KEYS[1], 'open', '0')
redis.call('XADD', stream, '*', 'end', string.format('%d', last or 0))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', stream, ARGV[2])
return reply
",
);

/// Asks the open generation to stop, and tells every instance at once:
/// the instance running it hears the publish and stops without polling.
/// `KEYS[1]`: the meta hash. `ARGV[1]`: the stop channel. `ARGV[2]`: the
/// conversation id (the message is `{conversation} {generation}`).
///
/// Returns 1 when a generation was open, else 0.
const REQUEST_STOP: &str = r"-- confab stream log request stop v2
local log = redis.call('HMGET', KEYS[1], 'gen', 'open')
if log[2] ~= '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'stop', '1')
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. log[1])
return 1
";

/// Renews a generation's lease while it is the open one, and says whether
/// a stop was asked of it and whether a reader elsewhere wants its events
/// (the fallbacks for a stop or a want whose publish the instance missed).
/// `KEYS[1]`: the meta hash. `KEYS[2]`: the generation's stream (which may
/// not exist yet: the first `append` gives it the hash's TTL). `ARGV[1]`:
/// the generation. `ARGV[2]`: the lease (ms).
///
/// Returns 0 when the generation is not the open one (closed, replaced, or
/// its lease ran out): there is nothing of it left to renew. Otherwise the
/// lease was renewed, and the reply is 1, plus 1 when a stop was asked,
/// plus 2 when its events are wanted.
const RENEW: &str = r"-- confab stream log renew v3
local log = redis.call('HMGET', KEYS[1], 'gen', 'open', 'stop', 'want')
if log[1] ~= ARGV[1] or log[2] ~= '1' then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local reply = 1
if log[3] == '1' then
  reply = reply + 1
end
if log[4] == '1' then
  reply = reply + 2
end
return reply
";

/// Where a reader starts. `KEYS[1]`: the meta hash. `ARGV[1]`: the stream
/// keys' prefix. `ARGV[2]`: the generation of the id to resume after, or
/// empty to start at the first event. `ARGV[3]`: that id's entry id.
/// `ARGV[4]`: the most events a log holds.
///
/// An event the stream holds is a place to resume after. So is an event
/// number of the open generation above the stream's last one (but within
/// the most events): the instance running it shows its events before
/// Redis has them, and a client may resume here before they arrive; the
/// reader then waits for what follows it. So is a number below the last
/// one that the stream lacks: numbers are given once and in order, so it
/// is an event shown before its append failed for good, and what follows
/// it is what came after that failure.
///
/// A reader located in an open generation wants its events, which the
/// instance running it keeps to itself until asked (see `stream_log.rs`):
/// the first such reader sets the hash's `want` and publishes
/// `{conversation} {generation}` on the want channel (a publish refused,
/// by an ACL without the channel, leaves the flag for the instance's next
/// renewal). `ARGV[5]`: that channel. `ARGV[6]`: the conversation id.
///
/// Returns `{'none'}` when there is no log, `{'invalid'}` when the id is
/// not one of the current generation's events, else `{'ok', generation}`.
const LOCATE: &str = concat!(
    "-- confab stream log locate v3\n",
    "if redis.replicate_commands then redis.replicate_commands() end\n",
    last_event!(),
    r"local log = redis.call('HMGET', KEYS[1], 'gen', 'open', 'want')
local generation = log[1]
if not generation then
  return {'none'}
end
if ARGV[2] ~= '' then
  if ARGV[2] ~= generation then
    return {'invalid'}
  end
  local stream = ARGV[1] .. generation
  local entry = redis.call('XRANGE', stream, ARGV[3], ARGV[3])
  if entry[1] ~= nil then
    if entry[1][2][1] ~= 'e' then
      return {'invalid'}
    end
  else
    local ms, seq = string.match(ARGV[3], '^(%d+)-(%d+)$')
    seq = tonumber(seq)
    if ms ~= '0' or seq == nil or seq < 1 or seq > tonumber(ARGV[4]) then
      return {'invalid'}
    end
    local last, closed = last_event(stream)
    if last == nil or (seq > last and (log[2] ~= '1' or closed)) then
      return {'invalid'}
    end
  end
end
if log[2] == '1' and log[3] ~= '1' then
  redis.call('HSET', KEYS[1], 'want', '1')
  redis.pcall('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. generation)
end
return {'ok', generation}
",
);

/// Whether a reader that found nothing new should keep waiting: its
/// generation is still open, or its stream still ends with the end entry
/// (closed or replaced, and not expired). `KEYS[1]`: the meta hash.
/// `KEYS[2]`: the reader's stream. `ARGV[1]`: its generation.
///
/// Returns 1 to wait, 0 when the log is gone.
const ALIVE: &str = r"-- confab stream log alive v1
local log = redis.call('HMGET', KEYS[1], 'gen', 'open')
if log[1] == ARGV[1] and log[2] == '1' then
  return 1
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if last[1] ~= nil and last[1][2][1] == 'end' then
  return 1
end
return 0
";

/// The scripts, hashed once (run with `EVALSHA`, loaded again by the client
/// when Redis answers `NOSCRIPT`).
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) open: redis::Script,
    pub(super) append: redis::Script,
    pub(super) append_many: redis::Script,
    pub(super) close: redis::Script,
    pub(super) request_stop: redis::Script,
    pub(super) renew: redis::Script,
    pub(super) locate: redis::Script,
    pub(super) alive: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            open: redis::Script::new(OPEN),
            append: redis::Script::new(APPEND),
            append_many: redis::Script::new(APPEND_MANY),
            close: redis::Script::new(CLOSE),
            request_stop: redis::Script::new(REQUEST_STOP),
            renew: redis::Script::new(RENEW),
            locate: redis::Script::new(LOCATE),
            alive: redis::Script::new(ALIVE),
        }
    }
}
