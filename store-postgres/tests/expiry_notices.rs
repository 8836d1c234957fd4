//! The opt-in expiry stream: each cleanup run that removed rows reports how many.

mod common;

use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{ExpiryNotice, Record, SessionId, SessionStore, Timestamp};
use common::scoped_store;

const HOUR: Duration = Duration::from_secs(3600);

async fn next(reports: &mut tokio::sync::mpsc::Receiver<ExpiryNotice>) -> Option<ExpiryNotice> {
    tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("a report within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cleanup_run_that_removed_rows_reports_the_count() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    let scoped = scoped_store().await;
    let store = scoped.store.clone();
    let now = Timestamp::now();
    let expired = || {
        Record::new(
            SessionId::generate(),
            now - HOUR,
            now - Duration::from_secs(1),
        )
    };
    for _ in 0..3 {
        store.create(&expired()).await.expect("create expired");
    }
    store
        .create(&Record::new(SessionId::generate(), now, now + HOUR))
        .await
        .expect("create live");

    let (task, mut reports) = store.spawn_cleanup_reporting(Duration::from_millis(100));
    assert_eq!(
        next(&mut reports).await,
        Some(ExpiryNotice::Removed { count: 3 })
    );
    // Runs that remove nothing report nothing; the next expired rows are reported.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        reports.try_recv().is_err(),
        "an empty run reported something"
    );
    for _ in 0..2 {
        store.create(&expired()).await.expect("create expired");
    }
    assert_eq!(
        next(&mut reports).await,
        Some(ExpiryNotice::Removed { count: 2 })
    );

    // Without a reader the cleanup goes on.
    drop(reports);
    store.create(&expired()).await.expect("create expired");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.delete_expired().await.expect("cleanup"),
        0,
        "already removed"
    );
    assert!(!task.is_finished());
    task.abort();
}
