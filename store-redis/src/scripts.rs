//! The Lua scripts of the native layout.
//!
//! Each runs with `EVALSHA` (redis-rs [`Script`] falls back to `SCRIPT LOAD` + `EVALSHA` on
//! `NOSCRIPT`, e.g. after a server restart). Every script that works on a session declares
//! exactly one key, the session hash, so it runs on a cluster too. On a single node the
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
/// The key holds something that is not a hash.
pub(crate) const WRONG_TYPE: i64 = -1;
/// The key holds a hash without readable `v`/`e` fields.
pub(crate) const MALFORMED: i64 = -2;
/// `save`: the stored version differs.
pub(crate) const CONFLICT: i64 = -3;

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
"#;

/// KEYS[1] session; ARGV: now, id, data, created, expires, has_user, user, index prefix,
/// inline.
const CREATE: &str = r#"
local k = KEYS[1]
local now = tonumber(ARGV[1])
local id, e_str = ARGV[2], ARGV[5]
local e = tonumber(e_str)
local has_u, user, ip, inline = ARGV[6] == '1', ARGV[7], ARGV[8], ARGV[9] == '1'
local t = redis.call('TYPE', k)['ok']
local stale_u = false
if t == 'hash' then
  local f = redis.call('HMGET', k, 'e', 'u')
  local old_e = tonumber(f[1])
  if not old_e then return reply(-2) end
  if old_e > now then return reply(0) end
  stale_u = f[2]
  redis.call('DEL', k)
  if inline and stale_u then redis.call('SREM', ip .. stale_u, id) end
elseif t ~= 'none' then
  return reply(-1)
end
if e <= now then return reply(1, stale_u) end
local fields = {'v', '1', 'd', ARGV[3], 'c', ARGV[4], 'e', e_str}
if has_u then
  fields[#fields + 1] = 'u'
  fields[#fields + 1] = user
end
redis.call('HSET', k, unpack(fields))
redis.call('PEXPIREAT', k, e_str)
if inline and has_u then index_add(ip .. user, id, e, e_str, now) end
return reply(1, stale_u)
"#;

/// KEYS[1] session; ARGV: now, id, expected version, data, expires, has_user, user,
/// index prefix, inline, next version (computed by the client: exact for any u64).
///
/// On the common path three commands run: `HMGET`, one `HSET` of every field, `PEXPIREAT`
/// (always, so a key whose TTL was changed behind the store's back is put right). A key of another type makes `HMGET` fail, which
/// `redis.pcall` turns into the `WRONG_TYPE` code without a separate `TYPE` call; only a
/// hash without `v` costs an `EXISTS`, to tell a missing key from a malformed hash.
const SAVE: &str = r#"
local k = KEYS[1]
local now = tonumber(ARGV[1])
local id, e_str = ARGV[2], ARGV[5]
local e = tonumber(e_str)
local has_u, user, ip, inline = ARGV[6] == '1', ARGV[7], ARGV[8], ARGV[9] == '1'
local f = redis.pcall('HMGET', k, 'v', 'e', 'u')
if f.err then return reply(-1) end
if not f[1] then
  if not f[2] and not f[3] and redis.call('EXISTS', k) == 0 then return reply(0) end
  return reply(-2)
end
local old_e = tonumber(f[2])
if not old_e or not string.match(f[1], '^%d+$') then return reply(-2) end
if old_e <= now then return reply(0) end
if f[1] ~= ARGV[3] then return reply(-3) end
local old_u = f[3]
if e <= now then
  redis.call('DEL', k)
else
  if has_u then
    redis.call('HSET', k, 'v', ARGV[10], 'd', ARGV[4], 'e', e_str, 'u', user)
  else
    redis.call('HSET', k, 'v', ARGV[10], 'd', ARGV[4], 'e', e_str)
    if old_u then redis.call('HDEL', k, 'u') end
  end
  redis.call('PEXPIREAT', k, e_str)
end
if inline then
  if old_u and (e <= now or not has_u or old_u ~= user) then
    redis.call('SREM', ip .. old_u, id)
  end
  if has_u and e > now then index_add(ip .. user, id, e, e_str, now) end
end
return reply(1, old_u, f[2])
"#;

/// KEYS[1] session; ARGV: now, id, expires, index prefix, inline.
const TOUCH: &str = r#"
local k = KEYS[1]
local now = tonumber(ARGV[1])
local id, e_str = ARGV[2], ARGV[3]
local e = tonumber(e_str)
local ip, inline = ARGV[4], ARGV[5] == '1'
local t = redis.call('TYPE', k)['ok']
if t == 'none' then return reply(0) end
if t ~= 'hash' then return reply(-1) end
local f = redis.call('HMGET', k, 'e', 'u')
local old_e = tonumber(f[1])
if not old_e then return reply(-2) end
if old_e <= now then return reply(0) end
if e <= now then
  redis.call('DEL', k)
  if inline and f[2] then redis.call('SREM', ip .. f[2], id) end
else
  redis.call('HSET', k, 'e', e_str)
  redis.call('PEXPIREAT', k, e_str)
  if inline and f[2] then index_add(ip .. f[2], id, e, e_str, now) end
end
return reply(1, f[2], f[1])
"#;

/// KEYS[1] session; ARGV: now, id, index prefix, inline.
const DELETE: &str = r#"
local k = KEYS[1]
local now = tonumber(ARGV[1])
local id, ip, inline = ARGV[2], ARGV[3], ARGV[4] == '1'
local t = redis.call('TYPE', k)['ok']
if t == 'none' then return reply(0) end
if t ~= 'hash' then
  redis.call('DEL', k)
  return reply(0)
end
local f = redis.call('HMGET', k, 'e', 'u')
redis.call('DEL', k)
if inline and f[2] then redis.call('SREM', ip .. f[2], id) end
local old_e = tonumber(f[1])
if old_e and old_e > now then return reply(1, f[2], f[1]) end
return reply(0, f[2], f[1])
"#;

/// Single node only. KEYS[1] user index; ARGV: now, session key prefix, user.
/// Returns `[id, created, expires, ...]` of the user's live sessions and prunes the rest.
const LIST_FOR_USER: &str = r#"
local ikey = KEYS[1]
local now, kp, user = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', ikey)) do
  local k = kp .. id
  local keep = false
  if redis.call('TYPE', k)['ok'] == 'hash' then
    local f = redis.call('HMGET', k, 'u', 'c', 'e')
    if f[1] == user then
      local e = tonumber(f[3])
      if e == nil or e > now then
        keep = true
        out[#out + 1] = id
        out[#out + 1] = f[2] or ''
        out[#out + 1] = f[3] or ''
      end
    end
  end
  if not keep then redis.call('SREM', ikey, id) end
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
  local mine = false
  if redis.call('TYPE', k)['ok'] == 'hash' then
    local f = redis.call('HMGET', k, 'u', 'e')
    if f[1] == user then
      mine = true
      if not (has_except and id == except) then
        redis.call('DEL', k)
        redis.call('SREM', ikey, id)
        local e = tonumber(f[2])
        if e and e > now then n = n + 1 end
      end
    end
  end
  if not mine then redis.call('SREM', ikey, id) end
end
return n
"#;

/// Cluster: KEYS[1] user index; ARGV: id, expires, now. Adds the member and makes sure the
/// set lives at least as long as the session.
const INDEX_ADD: &str = r#"
index_add(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[2], tonumber(ARGV[3]))
return 1
"#;

/// Cluster: KEYS[1] session; ARGV: now, user. Deletes the session if it belongs to `user`.
/// Returns 0 (not that user's: a stale index member), 1 (a live session removed) or 2
/// (an expired one removed).
const DELETE_IF_USER: &str = r#"
local k = KEYS[1]
if redis.call('TYPE', k)['ok'] ~= 'hash' then return 0 end
local f = redis.call('HMGET', k, 'u', 'e')
if f[1] ~= ARGV[2] then return 0 end
redis.call('DEL', k)
local e = tonumber(f[2])
if e and e > tonumber(ARGV[1]) then return 1 end
return 2
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

pub(crate) static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CREATE));
pub(crate) static SAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SAVE));
pub(crate) static TOUCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(TOUCH));
pub(crate) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DELETE));
pub(crate) static LIST_FOR_USER_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LIST_FOR_USER));
pub(crate) static DELETE_FOR_USER_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(DELETE_FOR_USER));
pub(crate) static INDEX_ADD_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(INDEX_ADD));
pub(crate) static DELETE_IF_USER_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(DELETE_IF_USER));
