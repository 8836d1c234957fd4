//! Replicas (#28): what `Replicated` costs. A Redis 7 primary with two replicas and three
//! sentinels of the benchmark's own on loopback (`ReplicatedRedis`), coatcheck connected
//! through the sentinels: load + save with and without every write waiting for both
//! replicas, and the latency of a revocation (a login's `create` then its logout's
//! `delete`) with and without revocations waiting.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coatcheck_conformance::servers::{ReplicatedRedis, MASTER_NAME};
use coatcheck_core::{Record, SessionId, SessionStore, Timestamp};
use coatcheck_redis::{RedisStore, Replicated};

use crate::store_level::{unique, Coatcheck};
use crate::{section, BoxErr, Contender, Settings, Work};

async fn through_sentinels(
    group: &ReplicatedRedis,
    prefix: &str,
    replicated: Option<Replicated>,
) -> Result<RedisStore, BoxErr> {
    let mut b = RedisStore::builder().prefix(prefix.to_owned());
    if let Some(r) = replicated {
        b = b.replicated(r);
    }
    Ok(b.connect_sentinel(group.sentinel_urls(), MASTER_NAME)
        .await?)
}

/// A login and its logout: `create` of a signed-in session, then `delete` (the
/// revocation).
struct LoginLogout {
    store: Arc<dyn SessionStore>,
}

#[async_trait]
impl Work for LoginLogout {
    async fn once(&self, n: usize) -> Result<(), BoxErr> {
        let now = Timestamp::now();
        let mut r = Record::new(SessionId::generate(), now, now + Duration::from_secs(3600));
        r.user_id = Some(format!("user-{}", n % 100));
        self.store.create(&r).await?;
        self.store.delete(&r.id).await?;
        Ok(())
    }
}

pub async fn run(s: &Settings) -> Result<(), BoxErr> {
    if !s.wants("redis") {
        return Ok(());
    }
    let Some(group) = tokio::task::block_in_place(ReplicatedRedis::redis) else {
        println!("_replicas: left out (no redis-server and redis-cli)._\n");
        return Ok(());
    };
    println!("## Replicas: Redis 7, a primary with two replicas under Sentinel (#28)\n");
    println!(
        "coatcheck through `connect_sentinel`, every process on this machine's two cores. \
         `Replicated` sends `WAIT 2 1000` after each covered operation on the connection \
         of its writes; on loopback the replicas acknowledge within the round trip.\n"
    );
    let n = s.sessions;
    let every = Replicated::revocations(2, Duration::from_secs(1)).every_write();
    let revocations = Replicated::revocations(2, Duration::from_secs(1));

    let prefix = format!("{}:", unique("bench-repl"));
    let plain =
        Coatcheck::populate(Arc::new(through_sentinels(&group, &prefix, None).await?), n).await?;
    let waited = Coatcheck {
        store: Arc::new(through_sentinels(&group, &prefix, Some(every)).await?),
        ids: plain.ids.clone(),
    };
    let contenders = vec![
        Contender::new("coatcheck, no waiting", Arc::new(plain)).reference("no waiting"),
        Contender::new(
            "coatcheck, every write waits for 2 replicas",
            Arc::new(waited),
        ),
    ];
    for c in [16, 64] {
        section(
            "Load + save with two replicas attached",
            &contenders,
            c,
            n,
            s,
        )
        .await?;
    }

    let prefix = format!("{}:", unique("bench-revoke"));
    let contenders = vec![
        Contender::new(
            "login + logout, no waiting",
            Arc::new(LoginLogout {
                store: Arc::new(through_sentinels(&group, &prefix, None).await?),
            }),
        )
        .reference("no waiting"),
        Contender::new(
            "login + logout, the logout waits for 2 replicas",
            Arc::new(LoginLogout {
                store: Arc::new(through_sentinels(&group, &prefix, Some(revocations)).await?),
            }),
        ),
    ];
    for c in [1, 16] {
        section(
            "A revocation: create + delete of a signed-in session",
            &contenders,
            c,
            n,
            s,
        )
        .await?;
    }
    Ok(())
}
