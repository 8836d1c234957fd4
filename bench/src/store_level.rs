//! Store level: per simulated request one load and one save of a ~5-key record, on a
//! pre-populated key space, for coatcheck's stores, the raw drivers doing the same round
//! trips by hand, and tower-sessions' stores.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coatcheck_core::{
    Codec, Data, NativeCodec, Record, SessionId, SessionStore, StoreError, Timestamp,
};
use redis::AsyncCommands;
use serde_json::json;

use crate::{section, BoxErr, Contender, Settings, Work};

pub fn sample_data(i: usize) -> Data {
    let mut d = Data::new();
    d.insert("user_id".into(), json!(format!("user-{i}")));
    d.insert("roles".into(), json!(["user", "reader"]));
    d.insert("counter".into(), json!(0));
    d.insert("csrf".into(), json!("c2VjcmV0LWNzcmYtdG9rZW4tMzItYnl0ZXMh"));
    d.insert("theme".into(), json!({"dark": true, "lang": "en-GB"}));
    d
}

pub fn bump(data: &mut Data) {
    let n = data.get("counter").and_then(|v| v.as_u64()).unwrap_or(0);
    data.insert("counter".into(), json!(n + 1));
}

/// coatcheck: load, bump, compare-and-set save (reload and retry on a conflict).
pub struct Coatcheck {
    pub store: Arc<dyn SessionStore>,
    pub ids: Vec<SessionId>,
}

impl Coatcheck {
    pub async fn populate(store: Arc<dyn SessionStore>, n: usize) -> Result<Self, BoxErr> {
        let now = Timestamp::now();
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let mut r = Record::new(SessionId::generate(), now, now + Duration::from_secs(3600));
            r.data = sample_data(i);
            store.create(&r).await?;
            ids.push(r.id);
        }
        Ok(Coatcheck { store, ids })
    }
}

#[async_trait]
impl Work for Coatcheck {
    async fn once(&self, n: usize) -> Result<(), BoxErr> {
        let id = &self.ids[n % self.ids.len()];
        loop {
            let mut r = self.store.load(id).await?.ok_or("session missing")?;
            bump(&mut r.data);
            match self.store.save(&r).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// redis-rs multiplexed connection, GET + SET by hand (no version check: a lower bound).
struct RawRedisMux {
    conn: redis::aio::MultiplexedConnection,
    keys: Vec<String>,
}

#[async_trait]
impl Work for RawRedisMux {
    async fn once(&self, n: usize) -> Result<(), BoxErr> {
        let key = &self.keys[n % self.keys.len()];
        let mut c = self.conn.clone();
        let v: Vec<u8> = c.get(key).await?;
        let mut data = NativeCodec.decode(&v)?;
        bump(&mut data);
        let _: () = c.set_ex(key, NativeCodec.encode(&data)?, 3600).await?;
        Ok(())
    }
}

/// deadpool-redis, one exclusive connection per request, GET + SET by hand.
struct RawRedisPool {
    pool: deadpool_redis::Pool,
    keys: Vec<String>,
}

#[async_trait]
impl Work for RawRedisPool {
    async fn once(&self, n: usize) -> Result<(), BoxErr> {
        let key = &self.keys[n % self.keys.len()];
        let mut c = self.pool.get().await?;
        let v: Vec<u8> = c.get(key).await?;
        let mut data = NativeCodec.decode(&v)?;
        bump(&mut data);
        let _: () = c.set_ex(key, NativeCodec.encode(&data)?, 3600).await?;
        Ok(())
    }
}

/// Lean sqlx: statement cache, no test-before-acquire, SELECT + UPDATE by hand.
struct RawSqlx {
    pool: sqlx::PgPool,
    select: String,
    update: String,
    ids: Vec<String>,
}

#[async_trait]
impl Work for RawSqlx {
    async fn once(&self, n: usize) -> Result<(), BoxErr> {
        let id = &self.ids[n % self.ids.len()];
        let bytes: Vec<u8> = sqlx::query_scalar(&self.select)
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        let mut data = NativeCodec.decode(&bytes)?;
        bump(&mut data);
        sqlx::query(&self.update)
            .bind(id)
            .bind(NativeCodec.encode(&data)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// tower-sessions' store trait: load + save.
pub struct Tower<S> {
    pub store: S,
    pub ids: Vec<tower_sessions::session::Id>,
}

impl<S: tower_sessions::SessionStore> Tower<S> {
    pub async fn populate(store: S, n: usize) -> Result<Self, BoxErr> {
        use tower_sessions::session::Record as TRecord;
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let mut r = TRecord {
                id: tower_sessions::session::Id::default(),
                data: sample_data(i).into_iter().collect(),
                expiry_date: tower_sessions::cookie::time::OffsetDateTime::now_utc()
                    + tower_sessions::cookie::time::Duration::hours(1),
            };
            store.create(&mut r).await.map_err(|e| e.to_string())?;
            ids.push(r.id);
        }
        Ok(Tower { store, ids })
    }
}

#[async_trait]
impl<S: tower_sessions::SessionStore> Work for Tower<S> {
    async fn once(&self, n: usize) -> Result<(), BoxErr> {
        let id = &self.ids[n % self.ids.len()];
        let mut r = self
            .store
            .load(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("session missing")?;
        let c = r.data.get("counter").and_then(|v| v.as_u64()).unwrap_or(0);
        r.data.insert("counter".into(), json!(c + 1));
        self.store.save(&r).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

pub fn unique(base: &str) -> String {
    let mut rng = crate::Rng::new();
    format!("{base}_{:012x}", rng.next_u64() & 0xffff_ffff_ffff)
}

pub async fn lean_pg_pool(url: &str, max: u32) -> Result<sqlx::PgPool, BoxErr> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .connect(url)
        .await?)
}

pub async fn fred_pool(
    url: &str,
) -> Result<tower_sessions_redis_store::fred::prelude::Pool, BoxErr> {
    use tower_sessions_redis_store::fred::prelude::*;
    let pool = Pool::new(Config::from_url(url)?, None, None, None, 6)?;
    // The connection task runs in the background; wait_for_connect is what we await.
    drop(pool.connect());
    pool.wait_for_connect().await?;
    Ok(pool)
}

/// One Redis-protocol server: Redis 7 (Lua compare-and-set) or Valkey 8.1 (`SET … IFEQ`).
async fn redis_like(title: &str, url: &str, valkey: bool, s: &Settings) -> Result<(), BoxErr> {
    let n = s.sessions;
    let server = crate::cpu::Server::from_redis_url(url);
    let prefix = format!("{}:", unique("bench"));
    let mux = coatcheck_redis::RedisStore::builder()
        .prefix(prefix.clone())
        .connect(url)
        .await?;
    let cc_mux = Coatcheck::populate(Arc::new(mux), n).await?;
    let pool =
        deadpool_redis::Config::from_url(url).create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    let client = redis::Client::open(url)?;
    let conn = client.get_multiplexed_async_connection().await?;
    let mut keys = Vec::with_capacity(n);
    {
        let mut c = conn.clone();
        for i in 0..n {
            let k = format!("{prefix}raw:{i}");
            let _: () = c
                .set_ex(&k, NativeCodec.encode(&sample_data(i))?, 3600)
                .await?;
            keys.push(k);
        }
    }
    let ts = Tower::populate(
        tower_sessions_redis_store::RedisStore::new(fred_pool(url).await?),
        n,
    )
    .await?;
    let mut contenders = Vec::new();
    if valkey {
        let lua = coatcheck_redis::RedisStore::builder()
            .prefix(prefix.clone())
            .use_set_ifeq(false)
            .connect(url)
            .await?;
        let cc_lua = Coatcheck {
            store: Arc::new(lua),
            ids: cc_mux.ids.clone(),
        };
        contenders.push(
            Contender::new("coatcheck Valkey (multiplexed, SET IFEQ)", Arc::new(cc_mux))
                .on(server.clone()),
        );
        contenders.push(
            Contender::new(
                "coatcheck Valkey, Lua path (use_set_ifeq(false))",
                Arc::new(cc_lua),
            )
            .on(server.clone()),
        );
    } else {
        let cc_pool = Coatcheck {
            store: Arc::new(
                coatcheck_redis::RedisStore::builder()
                    .prefix(prefix.clone())
                    .pool(pool.clone())?,
            ),
            ids: cc_mux.ids.clone(),
        };
        contenders.push(
            Contender::new("coatcheck Redis (multiplexed, default)", Arc::new(cc_mux))
                .on(server.clone()),
        );
        contenders.push(
            Contender::new("coatcheck Redis (deadpool pool)", Arc::new(cc_pool)).on(server.clone()),
        );
    }
    contenders.push(
        Contender::new(
            "raw redis-rs multiplexed GET+SET",
            Arc::new(RawRedisMux {
                conn,
                keys: keys.clone(),
            }),
        )
        .reference("raw mux")
        .on(server.clone()),
    );
    if !valkey {
        contenders.push(
            Contender::new(
                "raw deadpool-redis GET+SET",
                Arc::new(RawRedisPool { pool, keys }),
            )
            .on(server.clone()),
        );
    }
    contenders.push(
        Contender::new("tower-sessions-redis-store (fred)", Arc::new(ts))
            .reference("tower-sessions")
            .on(server),
    );
    for c in [1, 16, 64] {
        section(title, &contenders, c, n, s).await?;
    }
    Ok(())
}

pub async fn run(s: &Settings) -> Result<(), BoxErr> {
    println!("## Store level: one load + one save per request\n");
    let n = s.sessions;
    if s.wants("memory") {
        let cc = Coatcheck::populate(Arc::new(coatcheck_memory::MemoryStore::new()), n).await?;
        let ts = Tower::populate(tower_sessions::MemoryStore::default(), n).await?;
        let contenders = vec![
            Contender::new("coatcheck MemoryStore", Arc::new(cc)),
            Contender::new("tower-sessions MemoryStore", Arc::new(ts)).reference("tower-sessions"),
        ];
        for c in [1, 16, 64] {
            section("Memory", &contenders, c, n, s).await?;
        }
    }
    if let (true, Some(url)) = (s.wants("redis"), &s.redis_url) {
        redis_like("Redis 7", url, false, s).await?;
    }
    if let (true, Some(url)) = (s.wants("valkey"), &s.valkey_url) {
        redis_like("Valkey 8.1", url, true, s).await?;
    }
    if let (true, Some(url)) = (s.wants("postgres"), &s.database_url) {
        let server = Some(crate::cpu::Server::Postgres);
        let table = unique("bench");
        let pool = lean_pg_pool(url, 16).await?;
        let store = coatcheck_postgres::PostgresStore::builder()
            .table(table.clone())
            .build(pool.clone())?;
        store.migrate().await?;
        let cc = Coatcheck::populate(Arc::new(store), n).await?;
        let relaxed = Coatcheck {
            store: Arc::new(
                coatcheck_postgres::PostgresStore::builder()
                    .table(table.clone())
                    .durability(coatcheck_postgres::Durability::RelaxedCommit)
                    .build(lean_pg_pool(url, 16).await?)?,
            ),
            ids: cc.ids.clone(),
        };
        // The same store with session data encrypted at rest (XChaCha20-Poly1305), on a
        // table of its own populated encrypted.
        let enc_table = format!("{table}_enc");
        let encrypted = coatcheck_postgres::PostgresStore::builder()
            .table(enc_table.clone())
            .codec(crate::codec_cost::bench_codec())
            .build(lean_pg_pool(url, 16).await?)?;
        encrypted.migrate().await?;
        let encrypted = Coatcheck::populate(Arc::new(encrypted), n).await?;
        let raw_table = format!("{table}_raw");
        sqlx::query(&format!(
            "CREATE TABLE {raw_table} (id text primary key, data bytea not null)"
        ))
        .execute(&pool)
        .await?;
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("raw-{i}");
            sqlx::query(&format!("INSERT INTO {raw_table} VALUES ($1, $2)"))
                .bind(&id)
                .bind(NativeCodec.encode(&sample_data(i))?)
                .execute(&pool)
                .await?;
            ids.push(id);
        }
        let raw = RawSqlx {
            pool: lean_pg_pool(url, 16).await?,
            select: format!("SELECT data FROM {raw_table} WHERE id = $1"),
            update: format!("UPDATE {raw_table} SET data = $2 WHERE id = $1"),
            ids,
        };
        let ts_schema = unique("bench_ts");
        let ts_store = tower_sessions_sqlx_store::PostgresStore::new(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?,
        )
        .with_schema_name(&ts_schema)?;
        ts_store.migrate().await?;
        let ts = Tower::populate(ts_store, n).await?;
        let contenders = vec![
            Contender::new("coatcheck Postgres (durable, default)", Arc::new(cc))
                .on(server.clone()),
            Contender::new(
                "coatcheck Postgres (Durability::RelaxedCommit)",
                Arc::new(relaxed),
            )
            .on(server.clone()),
            Contender::new(
                "coatcheck Postgres (durable, EncryptedCodec)",
                Arc::new(encrypted),
            )
            .on(server.clone()),
            Contender::new("raw sqlx SELECT+UPDATE (lean pool)", Arc::new(raw))
                .reference("raw sqlx")
                .on(server.clone()),
            Contender::new("tower-sessions-sqlx-store", Arc::new(ts))
                .reference("tower-sessions")
                .on(server),
        ];
        for c in [1, 16, 64] {
            section("Postgres", &contenders, c, n, s).await?;
        }
        for q in [
            format!("DROP TABLE IF EXISTS {table}"),
            format!("DROP TABLE IF EXISTS {raw_table}"),
            format!("DROP TABLE IF EXISTS {enc_table}"),
            format!("DROP SCHEMA IF EXISTS {ts_schema} CASCADE"),
        ] {
            sqlx::query(&q).execute(&pool).await?;
        }
    }
    if let (true, Some(url)) = (s.wants("mongo"), &s.mongodb_url) {
        let store = coatcheck_mongo::MongoStore::connect(url, "coatcheck_bench").await?;
        let coll = unique("bench");
        let client = store.database().client().clone();
        let store = coatcheck_mongo::MongoStore::builder(&client, "coatcheck_bench")
            .collection(coll.clone())
            .build_with_indexes()
            .await?;
        let n_mongo = n.min(2_000);
        let cc = Coatcheck::populate(Arc::new(store.clone()), n_mongo).await?;
        let contenders = vec![Contender::new(
            "coatcheck Mongo (SecantusDB test server: not representative of mongod)",
            Arc::new(cc),
        )];
        for c in [1, 16] {
            section("Mongo", &contenders, c, n_mongo, s).await?;
        }
        let _ = store.collection().drop().await;
    }
    crate::sql_stores::store_level(s).await?;
    Ok(())
}
