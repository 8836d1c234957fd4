//! The Lua scripts of the native layout.
//!
//! Each runs with `EVALSHA` (redis-rs [`Script`] falls back to `SCRIPT LOAD` + `EVALSHA` on
//! `NOSCRIPT`, e.g. after a server restart). Every script that works on a session declares
//! exactly one key, the session's, so it runs on a cluster too. They read the string layout
//! (`value.rs`) and hashes of the 0.1 layout alike (`read`), and write strings. On a single node the
//! `inline` argument is `'1'` and the script also maintains the user index set
//! (`{index prefix}{user}`, built inside the script because the old user is only known
//! there); on a cluster it is `'0'` and the script returns what the client needs to update
//! the index itself, with a separate single-key command.
//!
//! Session scripts return `{code, has_user, user, old_expires}`; codes are below.

use std::sync::LazyLock;

use redis::Script;

/// The script succeeded (created, saved, touched, deleted a live record).
pub(crate) const OK: i64 = 1;
/// Nothing live there (save: `NotFound`; create: id taken; touch/delete: false).
pub(crate) const NONE: i64 = 0;
/// The key holds something that is neither a string nor a hash.
pub(crate) const WRONG_TYPE: i64 = -1;
/// The key holds a string that is not a session value, or a hash without readable `v`/`e`.
pub(crate) const MALFORMED: i64 = -2;
/// `save`: the stored version differs.
pub(crate) const CONFLICT: i64 = -3;
/// `create_limited` with the refusing policy: the user is at the limit.
pub(crate) const LIMIT_REACHED: i64 = -4;

const PRELUDE: &str = r#"
local function reply(code, u, e)
  if u then return {code, 1, u, e or ''} end
  return {code, 0, '', e or ''}
end
local function index_add(ikey, id, e, e_str, now)
  redis.call('SADD', ikey, id)
  local ttl = redis.call('PTTL', ikey)
  if ttl < 0 or now + ttl < e then
    redis.call('PEXPIREAT', ikey, e_str)
  end
end
-- A native value (value.rs): C1 {v} {c} {e} {user length or -}:{user}{data}, or
-- C2 {v} {c} {e} {seen} {handle} {user length or -}:{user}{device length}:{device}{data}
local function parse(s)
  local v, c, e_str, seen, h, ul, p
  if string.sub(s, 1, 3) == 'C2 ' then
    v, c, e_str, seen, h, ul, p =
      string.match(s, '^C2 (%d+) (%-?%d+) (%-?%d+) (%-?%d+) ([%w_%-]+) ([%-%d]%d*):()')
  else
    v, c, e_str, ul, p = string.match(s, '^C1 (%d+) (%-?%d+) (%-?%d+) ([%-%d]%d*):()')
  end
  if not v then return nil end
  local e = tonumber(e_str)
  local u = false
  local q = p
  if ul ~= '-' then
    if not string.match(ul, '^%d+$') then return nil end
    local n = tonumber(ul)
    u = string.sub(s, p, p + n - 1)
    if #u ~= n then return nil end
    q = p + n
  end
  local d = false
  if h then
    local dl, r = string.match(s, '^(%d+):()', q)
    if not dl then return nil end
    d = string.sub(s, r, r + tonumber(dl) - 1)
    if #d ~= tonumber(dl) then return nil end
  end
  return {v = v, c = c, e = e, e_str = e_str, u = u, ul = ul, body = p, s = s,
          seen = seen or false, h = h or false, d = d}
end
-- The session at k: nil (absent), 'wrong' (another type), 'bad' (unreadable), or a table
-- {v, c, e, e_str, u} from a value or from a hash of the earlier layout ({hash = true}).
local function read(k)
  local s = redis.pcall('GET', k)
  if type(s) == 'table' and s.err then
    if redis.call('TYPE', k)['ok'] ~= 'hash' then return 'wrong' end
    local f = redis.call('HMGET', k, 'v', 'e', 'u', 'c')
    local e = tonumber(f[2])
    if not f[1] or not e or not string.match(f[1], '^%d+$') then return 'bad' end
    return {v = f[1], e = e, e_str = f[2], u = f[3] or false, c = f[4] or '', hash = true}
  end
  if not s then return nil end
  return parse(s) or 'bad'
end
local function failed(r)
  if r == nil then return reply(0) end
  if r == 'wrong' then return reply(-1) end
  if r == 'bad' then return reply(-2) end
  return nil
end
"#;

/// KEYS[1] session; ARGV: now, id, value, expires, has_user, user, index prefix, inline.
const CREATE: &str = r#"
local evicted = ''
"#;

/// Single node only. KEYS[1] session, KEYS[2] the user's index; ARGV as `CREATE` (has_user
/// is '1'), then max, policy ('evict' or 'refuse'), session key prefix. The user's live sessions are counted
/// (stale members pruned); at the limit the least recently seen are removed, or the create
/// is refused ([`LIMIT_REACHED`]); then the `CREATE` body runs, all in one script. An id
/// that is a live session's answers as `CREATE` does before anything is evicted.
const LIMIT: &str = r#"
local now, sp = tonumber(ARGV[1]), ARGV[11]
-- A create that cannot happen (its id is a live session's) evicts nobody.
local taken = read(KEYS[1])
if type(taken) == 'table' and taken.e > now then return reply(0) end
local user, max, evict = ARGV[6], tonumber(ARGV[9]), ARGV[10] == 'evict'
local live = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local r = read(sp .. id)
  if type(r) == 'table' and r.u == user and r.e > now then
    live[#live + 1] = {tonumber(r.seen or r.c) or 0, id}
  else
    redis.call('SREM', KEYS[2], id)
  end
end
local n = 0
if #live >= max then
  if not evict then return reply(-4) end
  table.sort(live, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  for i = 1, #live - max + 1 do
    redis.call('DEL', sp .. live[i][2])
    redis.call('SREM', KEYS[2], live[i][2])
    n = n + 1
  end
end
local evicted = tostring(n)
"#;

/// The body shared by `CREATE` and `CREATE_LIMITED` (`evicted` is set before it).
const CREATE_BODY: &str = r#"
local k = KEYS[1]
local now = tonumber(ARGV[1])
local id, e_str = ARGV[2], ARGV[4]
local e = tonumber(e_str)
local has_u, user, ip, inline = ARGV[5] == '1', ARGV[6], ARGV[7], ARGV[8] == '1'
local r = read(k)
if r == 'wrong' then return reply(-1) end
if r == 'bad' then return reply(-2) end
local stale_u = false
if r then
  if r.e > now then return reply(0) end
  stale_u = r.u
  redis.call('DEL', k)
  if inline and stale_u then redis.call('SREM', ip .. stale_u, id) end
end
if e <= now then return reply(1, stale_u, evicted) end
redis.call('SET', k, ARGV[3], 'PXAT', e_str)
if inline and has_u then index_add(ip .. user, id, e, e_str, now) end
return reply(1, stale_u, evicted)
"#;

/// KEYS[1] session; ARGV: now, id, expected version, value, expires, has_user, user,
/// index prefix, inline.
///
/// The client builds the whole new value (its version is the expected one + 1, exact for
/// any u64); the script compares and writes it with one `SET … PXAT` (which also replaces a
/// hash of the earlier layout: the record moves to the new layout on its first save).
const SAVE: &str = r#"
local k = KEYS[1]
local now = tonumber(ARGV[1])
local id, e_str = ARGV[2], ARGV[5]
local e = tonumber(e_str)
local has_u, user, ip, inline = ARGV[6] == '1', ARGV[7], ARGV[8], ARGV[9] == '1'
local r = read(k)
local f = failed(r)
if f then return f end
if r.e <= now then return reply(0) end
if r.v ~= ARGV[3] then return reply(-3) end
local old_u = r.u
if e <= now then
  redis.call('DEL', k)
else
  redis.call('SET', k, ARGV[4], 'PXAT', e_str)
end
if inline then
  if old_u and (e <= now or not has_u or old_u ~= user) then
    redis.call('SREM', ip .. old_u, id)
  end
  if has_u and e > now then index_add(ip .. user, id, e, e_str, now) end
end
return reply(1, old_u, r.e_str)
"#;

/// KEYS[1] session; ARGV: now, id, expires, index prefix, inline.
const TOUCH: &str = r#"
local k = KEYS[1]
local now = tonumber(ARGV[1])
local id, e_str = ARGV[2], ARGV[3]
local e = tonumber(e_str)
local ip, inline = ARGV[4], ARGV[5] == '1'
local r = read(k)
local f = failed(r)
if f then return f end
if r.e <= now then return reply(0) end
if e <= now then
  redis.call('DEL', k)
  if inline and r.u then redis.call('SREM', ip .. r.u, id) end
else
  if r.hash then
    redis.call('HSET', k, 'e', e_str)
    redis.call('PEXPIREAT', k, e_str)
  else
    local head
    if r.h then
      head = 'C2 ' .. r.v .. ' ' .. r.c .. ' ' .. e_str .. ' ' .. ARGV[1] .. ' ' .. r.h .. ' '
        .. r.ul .. ':'
    else
      head = 'C1 ' .. r.v .. ' ' .. r.c .. ' ' .. e_str .. ' ' .. r.ul .. ':'
    end
    redis.call('SET', k, head .. string.sub(r.s, r.body), 'PXAT', e_str)
  end
  if inline and r.u then index_add(ip .. r.u, id, e, e_str, now) end
end
return reply(1, r.u, r.e_str)
"#;

/// KEYS[1] session; ARGV: now, id, index prefix, inline.
const DELETE: &str = r#"
local k = KEYS[1]
local now = tonumber(ARGV[1])
local id, ip, inline = ARGV[2], ARGV[3], ARGV[4] == '1'
local r = read(k)
if r == nil then return reply(0) end
redis.call('DEL', k)
if type(r) ~= 'table' then return reply(0) end
if inline and r.u then redis.call('SREM', ip .. r.u, id) end
if r.e > now then return reply(1, r.u, r.e_str) end
return reply(0, r.u, r.e_str)
"#;

/// Single node only. KEYS[1] user index; ARGV: now, session key prefix, user.
/// Returns `[id, created, expires, seen, handle, device, ...]` of the user's live sessions
/// (the last three empty without a device) and prunes the rest.
const LIST_FOR_USER: &str = r#"
local ikey = KEYS[1]
local now, kp, user = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', ikey)) do
  local r = read(kp .. id)
  if type(r) == 'table' and r.u == user and r.e > now then
    out[#out + 1] = id
    out[#out + 1] = r.c
    out[#out + 1] = r.e_str
    out[#out + 1] = r.seen or ''
    out[#out + 1] = r.h or ''
    out[#out + 1] = r.d or ''
  else
    redis.call('SREM', ikey, id)
  end
end
return out
"#;

/// Single node only. KEYS[1] user index; ARGV: now, session key prefix, user, has_except,
/// except. Returns how many live sessions were removed.
const DELETE_FOR_USER: &str = r#"
local ikey = KEYS[1]
local now, kp, user = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local has_except, except = ARGV[4] == '1', ARGV[5]
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', ikey)) do
  local k = kp .. id
  local r = read(k)
  if type(r) == 'table' and r.u == user then
    if not (has_except and id == except) then
      redis.call('DEL', k)
      redis.call('SREM', ikey, id)
      if r.e > now then n = n + 1 end
    end
  else
    redis.call('SREM', ikey, id)
  end
end
return n
"#;

/// Single node only. KEYS[1] user index; ARGV: now, session key prefix, user, handle.
/// Removes every session of `user` with that device handle (during a rotation the old and
/// the new id share it); returns how many were live.
const DELETE_DEVICE: &str = r#"
local ikey = KEYS[1]
local now, kp, user, handle = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', ikey)) do
  local k = kp .. id
  local r = read(k)
  if type(r) == 'table' and r.u == user then
    if r.h == handle then
      redis.call('DEL', k)
      redis.call('SREM', ikey, id)
      if r.e > now then n = n + 1 end
    end
  else
    redis.call('SREM', ikey, id)
  end
end
return n
"#;

/// Cluster: KEYS[1] session; ARGV: now, user. Deletes the session if it belongs to `user`.
/// Returns 0 (not that user's: a stale index member), 1 (a live session removed) or 2
/// (an expired one removed).
const DELETE_IF_USER: &str = r#"
local k = KEYS[1]
local r = read(k)
if type(r) ~= 'table' or r.u ~= ARGV[2] then return 0 end
redis.call('DEL', k)
if r.e > tonumber(ARGV[1]) then return 1 end
return 2
"#;

/// KEYS[1] a limit lease; ARGV[1] its holder's token. Removes the lease if still theirs.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

pub(crate) static CREATE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&format!("{CREATE}{CREATE_BODY}")));
pub(crate) static CREATE_LIMITED_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&format!("{LIMIT}{CREATE_BODY}")));
pub(crate) static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
pub(crate) static DELETE_DEVICE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DELETE_DEVICE));
pub(crate) static SAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SAVE));
pub(crate) static TOUCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(TOUCH));
pub(crate) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DELETE));
pub(crate) static LIST_FOR_USER_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LIST_FOR_USER));
pub(crate) static DELETE_FOR_USER_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(DELETE_FOR_USER));
pub(crate) static DELETE_IF_USER_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(DELETE_IF_USER));
