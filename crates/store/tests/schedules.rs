//! Firing schedules against the real PostgreSQL: however many schedulers fire the same tick at
//! once, or again later, it has one job; a paused or removed schedule fires nothing.

#![allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]

use chrono::{DateTime, TimeDelta, Utc};
use warren_core::cron::{CatchUp, Due};
use warren_store::{NewSchedule, Store};
use warren_testkit::TestEnv;

fn schedule(name: &str) -> NewSchedule {
    NewSchedule {
        name: name.to_owned(),
        cron: "* * * * * *".to_owned(),
        timezone: "UTC".to_owned(),
        task: "t".to_owned(),
        payload: r#"{"a": 1}"#.to_owned(),
        queue: "default".to_owned(),
        catch_up: CatchUp::Last,
    }
}

/// Fires `name` for `tick`, whatever its last tick says: what a scheduler with a stale read
/// would try.
async fn fire(store: &Store, name: &str, tick: DateTime<Utc>) -> usize {
    store
        .fire_schedule(name, |_| {
            Some(Due {
                latest: tick,
                fire: vec![tick],
            })
        })
        .await
        .unwrap()
        .map_or(0, |f| f.jobs.len())
}

#[tokio::test]
async fn a_tick_fired_by_many_schedulers_at_once_and_again_later_has_one_job() -> anyhow::Result<()>
{
    let env = TestEnv::new(&["default"]).await?;
    let store = env.store.clone();
    store.upsert_schedule(&schedule("s")).await?;
    let tick = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { fire(&store, "s", tick).await })
        })
        .collect();
    let mut inserted = 0;
    for r in racers {
        inserted += r.await?;
    }
    // Later, with the row free: the unique (schedule, tick) key still refuses it.
    inserted += fire(&store, "s", tick).await;
    assert_eq!(inserted, 1);
    let ticks = store.schedule_ticks("s", 100).await?;
    assert_eq!(ticks.len(), 1);
    assert_eq!(
        (ticks[0].tick, ticks[0].state.as_str()),
        (tick, "scheduled")
    );
    let row = store.schedule_named("s").await?.unwrap();
    assert_eq!(row.last_fired_at, Some(tick));
    assert_eq!(row.last_job_id, Some(ticks[0].job_id));

    // An older tick never moves last_fired_at back.
    fire(&store, "s", tick - TimeDelta::seconds(5)).await;
    let row = store.schedule_named("s").await?.unwrap();
    assert_eq!(row.last_fired_at, Some(tick));

    // Paused, then removed: nothing fires.
    let next = tick + TimeDelta::seconds(1);
    assert_eq!(store.set_schedule_paused("s", true).await?, Some(true));
    assert_eq!(fire(&store, "s", next).await, 0);
    assert_eq!(store.set_schedule_paused("s", false).await?, Some(true));
    assert_eq!(store.set_schedule_paused("s", false).await?, Some(false));
    assert!(store.remove_schedule("s").await?);
    assert_eq!(fire(&store, "s", next).await, 0);
    assert_eq!(store.schedule_ticks("s", 100).await?.len(), 2);
    assert_eq!(store.set_schedule_paused("s", true).await?, None);
    env.cleanup().await
}
