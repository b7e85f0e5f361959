//! Checks that every job-state literal in Warren's SQL agrees with `warren_core::JobState`.
//!
//! Most state lists stay literals on purpose: Postgres uses a partial index only when a query's
//! `WHERE` visibly implies the index's predicate, so the idempotency lookups must spell out the
//! same `state IN (...)` as `warren_jobs_idempotency`, and the promoter the same
//! `state = 'scheduled'` as `warren_jobs_due`; a bound array would turn those into full scans.
//! This test reads the SQL as written (the store's sources and the migrations) and fails when
//! a list names a state that does not exist or is not one of the sets the lifecycle defines.

use std::collections::BTreeSet;

use warren_core::JobState;

/// Every source holding SQL about `warren_jobs`. `workers.rs` is left out: its states are a
/// worker's (`running`, `stopping`, `stopped`), not a job's.
const SOURCES: &[(&str, &str)] = &[
    ("admin.rs", include_str!("admin.rs")),
    ("dead.rs", include_str!("dead.rs")),
    ("fleet.rs", include_str!("fleet.rs")),
    ("jobs.rs", include_str!("jobs.rs")),
    ("listing.rs", include_str!("listing.rs")),
    ("promotion.rs", include_str!("promotion.rs")),
    ("queues.rs", include_str!("queues.rs")),
    ("stats.rs", include_str!("stats.rs")),
    ("recorder.rs", include_str!("recorder.rs")),
    ("retention.rs", include_str!("retention.rs")),
    ("schedule.rs", include_str!("schedule.rs")),
    ("schedules.rs", include_str!("schedules.rs")),
    ("limits.rs", include_str!("limits.rs")),
    (
        "0001_init.sql",
        include_str!("../../../schemas/migrations/0001_init.sql"),
    ),
    (
        "0002_promotion.sql",
        include_str!("../../../schemas/migrations/0002_promotion.sql"),
    ),
    (
        "0003_hardening.sql",
        include_str!("../../../schemas/migrations/0003_hardening.sql"),
    ),
    (
        "0004_admin_indexes.sql",
        include_str!("../../../schemas/migrations/0004_admin_indexes.sql"),
    ),
    (
        "0005_queue_pauses.sql",
        include_str!("../../../schemas/migrations/0005_queue_pauses.sql"),
    ),
    (
        "0006_finished_index.sql",
        include_str!("../../../schemas/migrations/0006_finished_index.sql"),
    ),
    (
        "0007_retention_indexes.sql",
        include_str!("../../../schemas/migrations/0007_retention_indexes.sql"),
    ),
    (
        "0008_worker_details.sql",
        include_str!("../../../schemas/migrations/0008_worker_details.sql"),
    ),
    (
        "0009_schedules.sql",
        include_str!("../../../schemas/migrations/0009_schedules.sql"),
    ),
    (
        "0010_read_indexes.sql",
        include_str!("../../../schemas/migrations/0010_read_indexes.sql"),
    ),
    (
        "0011_limits.sql",
        include_str!("../../../schemas/migrations/0011_limits.sql"),
    ),
    (
        "0012_limit_reservations.sql",
        include_str!("../../../schemas/migrations/0012_limit_reservations.sql"),
    ),
];

type Set = BTreeSet<&'static str>;

fn set(states: impl IntoIterator<Item = JobState>) -> Set {
    states.into_iter().map(JobState::as_str).collect()
}

/// The sets a state list may stand for, each derived from `JobState`, with its meaning.
fn known_sets() -> Vec<(&'static str, Set)> {
    let all = JobState::ALL;
    vec![
        ("every state (the CHECK constraint)", set(all)),
        (
            "terminal states (the recorder's fence)",
            set(all.into_iter().filter(|s| s.is_terminal())),
        ),
        (
            "live states (not terminal)",
            set(all.into_iter().filter(|s| !s.is_terminal())),
        ),
        (
            "states holding an idempotency key: live, or succeeded",
            set(all
                .into_iter()
                .filter(|s| !s.is_terminal() || *s == JobState::Succeeded)),
        ),
    ]
}

/// The part of `src` that is about jobs: the workers table's DDL has states of its own.
fn job_part(src: &str) -> &str {
    src.split("CREATE TABLE warren_workers")
        .next()
        .unwrap_or(src)
}

/// Each `state [NOT] IN (...)` list in `sql`, as the quoted words it holds.
fn in_lists(sql: &str) -> Vec<Vec<String>> {
    let mut lists = Vec::new();
    let mut rest = sql;
    while let Some(i) = rest.find("state") {
        rest = &rest[i + "state".len()..];
        let mut tail = rest.trim_start();
        if let Some(t) = tail.strip_prefix("NOT") {
            tail = t.trim_start();
        }
        let Some(t) = tail.strip_prefix("IN") else {
            continue;
        };
        let Some(t) = t.trim_start().strip_prefix('(') else {
            continue;
        };
        let Some(end) = t.find(')') else { continue };
        lists.push(quoted(&t[..end]));
    }
    lists
}

/// Each state named as `state = '...'` in `sql`.
fn equalities(sql: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = sql;
    while let Some(i) = rest.find("state = '") {
        rest = &rest[i + "state = ".len()..];
        found.extend(quoted(rest).into_iter().take(1));
    }
    found
}

/// The single-quoted words of `s`, in order.
fn quoted(s: &str) -> Vec<String> {
    s.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_state_list_in_sql_is_a_set_the_lifecycle_defines() {
    let known = known_sets();
    let mut lists_seen = 0;
    for (file, src) in SOURCES {
        let sql = job_part(src);
        for list in in_lists(sql) {
            lists_seen += 1;
            for word in &list {
                assert!(
                    word.parse::<JobState>().is_ok(),
                    "{file}: `{word}` in state list {list:?} is not a JobState"
                );
            }
            let found: BTreeSet<&str> = list.iter().map(String::as_str).collect();
            assert!(
                known.iter().any(|(_, set)| *set == found),
                "{file}: state list {list:?} is none of the lifecycle's sets: {known:?}"
            );
        }
        for word in equalities(sql) {
            assert!(
                word.parse::<JobState>().is_ok(),
                "{file}: `state = '{word}'` names no JobState"
            );
        }
    }
    // CHECK, the idempotency index, the recorder's fence and the two key-holder lookups.
    assert!(
        lists_seen >= 5,
        "only {lists_seen} state lists found: has the parser stopped matching the SQL?"
    );
}

#[test]
fn the_parser_finds_lists_and_equalities() {
    let sql =
        "WHERE j.state NOT IN ('succeeded', 'dead') AND state = 'running' OR state IN\n ('x')";
    assert_eq!(
        in_lists(sql),
        [
            vec!["succeeded".to_owned(), "dead".to_owned()],
            vec!["x".to_owned()]
        ]
    );
    assert_eq!(equalities(sql), ["running"]);
}
