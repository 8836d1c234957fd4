//! The MySQL/MariaDB and SQLite rows: store level (coatcheck, raw sqlx doing the same round
//! trips by hand, tower-sessions-sqlx-store) and middleware (`POST /incr` and the realistic
//! mix) against tower-sessions over the same database.
//!
//! Every contender of a database gets the same connection settings: pools of 16 on MySQL;
//! on SQLite a file in WAL mode with a 5 s busy timeout (coatcheck's own pools: 4 readers
//! and 1 writer; raw sqlx and tower-sessions one pool of 4), so the comparison is of what
//! each does per request, not of configuration.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coatcheck_core::{Codec, NativeCodec, SessionStore};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::http_level::{coatcheck_router, mixed_pair, tower_router, tower_router_idle, Http};
use crate::store_level::{bump, sample_data, unique, Coatcheck, Tower};
use crate::{section, BoxErr, Contender, Settings, Work};

/// Raw sqlx on any of its databases: `SELECT data` + `UPDATE … SET data` by id (no version
/// check: a lower bound).
struct Raw<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    select: String,
    update: String,
    ids: Vec<String>,
}

macro_rules! raw_work {
    ($db:ty) => {
        #[async_trait]
        impl Work for Raw<$db> {
            async fn once(&self, n: usize) -> Result<(), BoxErr> {
                let id = &self.ids[n % self.ids.len()];
                let bytes: Vec<u8> = sqlx::query_scalar(&self.select)
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await?;
                let mut data = NativeCodec.decode(&bytes)?;
                bump(&mut data);
                sqlx::query(&self.update)
                    .bind(NativeCodec.encode(&data)?)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}
raw_work!(sqlx::MySql);
raw_work!(sqlx::Sqlite);

pub(crate) fn mysql_pool(url: &str) -> Result<sqlx::MySqlPool, BoxErr> {
    Ok(sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false)
        .connect_lazy(url)?)
}

/// A fresh SQLite file in the temporary directory (removed, with its WAL, when dropped).
pub struct SqliteFile(std::path::PathBuf);

impl SqliteFile {
    pub(crate) fn new(base: &str) -> Self {
        SqliteFile(std::env::temp_dir().join(format!("{}.db", unique(base))))
    }
    pub(crate) fn url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.0.display())
    }
    /// The pool raw sqlx and tower-sessions get: WAL, busy timeout, 4 connections.
    pub(crate) fn pool(&self) -> Result<sqlx::SqlitePool, BoxErr> {
        let options = SqliteConnectOptions::from_str(&self.url())?
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        Ok(SqlitePoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(options))
    }
    pub(crate) fn coatcheck(&self) -> Result<coatcheck_sqlite::SqliteStore, BoxErr> {
        Ok(coatcheck_sqlite::SqliteStore::builder().connect_lazy(&self.url())?)
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `n` rows of sample data in a two-column table for raw sqlx.
async fn raw_rows<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    create: &str,
    insert: &str,
    n: usize,
) -> Result<Vec<String>, BoxErr>
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(create).execute(pool).await?;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("raw-{i}");
        sqlx::query(insert)
            .bind(id.clone())
            .bind(NativeCodec.encode(&sample_data(i))?)
            .execute(pool)
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Store level: MySQL/MariaDB, then SQLite.
pub async fn store_level(s: &Settings) -> Result<(), BoxErr> {
    let n = s.sessions;
    if let (true, Some(url)) = (s.wants("mysql"), &s.mysql_url) {
        let server = Some(crate::cpu::Server::Mysql);
        let table = unique("bench");
        let store = coatcheck_mysql::MySqlStore::builder()
            .table(table.clone())
            .build(mysql_pool(url)?)?;
        store.migrate().await?;
        let cc = Coatcheck::populate(Arc::new(store), n).await?;
        let raw_table = format!("{table}_raw");
        let pool = mysql_pool(url)?;
        let ids = raw_rows(
            &pool,
            &format!(
                "CREATE TABLE {raw_table} (id VARBINARY(64) PRIMARY KEY, data MEDIUMBLOB NOT NULL)"
            ),
            &format!("INSERT INTO {raw_table} VALUES (?, ?)"),
            n,
        )
        .await?;
        let raw = Raw {
            pool: mysql_pool(url)?,
            select: format!("SELECT data FROM {raw_table} WHERE id = ?"),
            update: format!("UPDATE {raw_table} SET data = ? WHERE id = ?"),
            ids,
        };
        let ts_schema = unique("bench_ts");
        let ts_store = tower_sessions_sqlx_store::MySqlStore::new(mysql_pool(url)?)
            .with_schema_name(&ts_schema)?;
        ts_store.migrate().await?;
        let ts = Tower::populate(ts_store, n).await?;
        let contenders = vec![
            Contender::new("coatcheck MySQL (MariaDB 10.11)", Arc::new(cc)).on(server.clone()),
            Contender::new("raw sqlx SELECT+UPDATE", Arc::new(raw))
                .reference("raw sqlx")
                .on(server.clone()),
            Contender::new("tower-sessions-sqlx-store MySqlStore", Arc::new(ts))
                .reference("tower-sessions")
                .on(server),
        ];
        for c in [1, 16, 64] {
            section("MySQL", &contenders, c, n, s).await?;
        }
        for q in [
            format!("DROP TABLE IF EXISTS {table}, {table}_locks, {raw_table}"),
            format!("DROP SCHEMA IF EXISTS {ts_schema}"),
        ] {
            sqlx::raw_sql(&q).execute(&pool).await?;
        }
    }
    if s.wants("sqlite") {
        let file = SqliteFile::new("bench");
        let store = file.coatcheck()?;
        store.migrate().await?;
        let cc = Coatcheck::populate(Arc::new(store), n).await?;
        let pool = file.pool()?;
        let ids = raw_rows(
            &pool,
            "CREATE TABLE raw (id TEXT PRIMARY KEY, data BLOB NOT NULL)",
            "INSERT INTO raw VALUES (?, ?)",
            n,
        )
        .await?;
        let raw = Raw {
            pool: file.pool()?,
            select: "SELECT data FROM raw WHERE id = ?".into(),
            update: "UPDATE raw SET data = ? WHERE id = ?".into(),
            ids,
        };
        let ts_store = tower_sessions_sqlx_store::SqliteStore::new(file.pool()?);
        ts_store.migrate().await?;
        let ts = Tower::populate(ts_store, n).await?;
        let contenders = vec![
            Contender::new("coatcheck SQLite", Arc::new(cc)),
            Contender::new("raw sqlx SELECT+UPDATE", Arc::new(raw)).reference("raw sqlx"),
            Contender::new("tower-sessions-sqlx-store SqliteStore", Arc::new(ts))
                .reference("tower-sessions"),
        ];
        for c in [1, 16, 64] {
            section("SQLite", &contenders, c, n, s).await?;
        }
        pool.close().await;
    }
    Ok(())
}

/// Middleware `POST /incr` contenders for the shared middleware table: coatcheck and
/// tower-sessions over MySQL, then over SQLite. The files live as long as the returned
/// guard.
pub async fn middleware(
    s: &Settings,
    clients: usize,
) -> Result<(Vec<Contender>, Vec<SqliteFile>), BoxErr> {
    let mut contenders = Vec::new();
    let mut files = Vec::new();
    if let (true, Some(url)) = (s.wants("mysql"), &s.mysql_url) {
        let server = Some(crate::cpu::Server::Mysql);
        let store = coatcheck_mysql::MySqlStore::builder()
            .table(unique("benchhttp"))
            .build(mysql_pool(url)?)?;
        store.migrate().await?;
        contenders.push(
            Contender::new(
                "coatcheck over MySQL",
                Arc::new(
                    Http::with_clients(coatcheck_router(Arc::new(store))?, clients, true).await?,
                ),
            )
            .on(server.clone()),
        );
        let ts = tower_sessions_sqlx_store::MySqlStore::new(mysql_pool(url)?)
            .with_schema_name(unique("benchhttp_ts"))?;
        ts.migrate().await?;
        contenders.push(
            Contender::new(
                "tower-sessions over MySQL",
                Arc::new(Http::with_clients(tower_router(ts), clients, true).await?),
            )
            .reference("tower-sessions mysql")
            .on(server),
        );
    }
    if s.wants("sqlite") {
        let file = SqliteFile::new("benchhttp");
        let store = file.coatcheck()?;
        store.migrate().await?;
        contenders.push(Contender::new(
            "coatcheck over SQLite",
            Arc::new(Http::with_clients(coatcheck_router(Arc::new(store))?, clients, true).await?),
        ));
        let ts = tower_sessions_sqlx_store::SqliteStore::new(file.pool()?);
        ts.migrate().await?;
        contenders.push(
            Contender::new(
                "tower-sessions over SQLite",
                Arc::new(Http::with_clients(tower_router(ts), clients, true).await?),
            )
            .reference("tower-sessions sqlite"),
        );
        files.push(file);
    }
    Ok((contenders, files))
}

/// The realistic mix over MySQL and SQLite.
pub async fn mixed(s: &Settings, clients: usize) -> Result<(), BoxErr> {
    if let (true, Some(url)) = (s.wants("mysql"), &s.mysql_url) {
        let store = coatcheck_mysql::MySqlStore::builder()
            .table(unique("benchmix"))
            .build(mysql_pool(url)?)?;
        store.migrate().await?;
        let ts = tower_sessions_sqlx_store::MySqlStore::new(mysql_pool(url)?)
            .with_schema_name(unique("benchmix_ts"))?;
        ts.migrate().await?;
        mixed_pair(
            "MySQL",
            Arc::new(store) as Arc<dyn SessionStore>,
            tower_router_idle(ts),
            Some(crate::cpu::Server::Mysql),
            clients,
            s,
        )
        .await?;
    }
    if s.wants("sqlite") {
        let file = SqliteFile::new("benchmix");
        let store = file.coatcheck()?;
        store.migrate().await?;
        let ts = tower_sessions_sqlx_store::SqliteStore::new(file.pool()?);
        ts.migrate().await?;
        mixed_pair(
            "SQLite",
            Arc::new(store),
            tower_router_idle(ts),
            None,
            clients,
            s,
        )
        .await?;
    }
    Ok(())
}
