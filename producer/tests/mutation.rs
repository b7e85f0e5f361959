//! Random and mutated bodies sent to both POST routes: no answer may be a server error (the
//! broker is up, so not even a 503).

mod support;

use std::collections::BTreeSet;

use axum::body::Body;
use serde_json::{Value, json};
use support::{Options, app, send};
use warren_testkit::TestEnv;

/// A small deterministic generator (xorshift), so that a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"1e400",
        b"-1",
        b"\\ud800",
        b"\"delay\":\"-1s\"",
        b"\"task\":7",
        b"\"jobs\":",
        b"\xff",
        b"\0",
        b"99999999999999999999",
        b"\"payload\":{\"ms\":1}",
        b"\"run_at\":\"2300-01-01T00:00:00Z\"",
        b"\"queue\":\"\"",
    ];
    let mut body = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(body.len() + 1);
        match rng.below(3) {
            0 => {
                let piece = PIECES[rng.below(PIECES.len())];
                body.splice(at..at, piece.iter().copied());
            }
            1 if at < body.len() => {
                let end = (at + rng.below(8)).min(body.len());
                body.drain(at..end);
            }
            _ => body.insert(at, (rng.next() & 0xff) as u8),
        }
    }
    body
}

#[tokio::test]
async fn random_and_mutated_bodies_never_get_a_server_error() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let a = app(&env, Options::default()).await?;
    let seeds: [(&str, Value); 3] = [
        (
            "/v1/jobs",
            json!({"task": "warren.sleep", "payload": {"ms": 1}, "delay": "1s", "max_attempts": 2}),
        ),
        (
            "/v1/jobs",
            json!({"task": "warren.echo", "payload": [1, {"a": "b"}], "idempotency_key": "k", "run_at": "2030-01-01T00:00:00Z"}),
        ),
        (
            "/v1/jobs/batch",
            json!({"jobs": [{"task": "warren.echo", "payload": 1}, {"task": "warren.noop", "payload": null, "timeout": "1s"}]}),
        ),
    ];
    let mut rng = Rng(0x5eed_cafe_f00d_beef);
    let mut statuses = BTreeSet::new();
    for round in 0..300 {
        let (path, seed) = &seeds[round % seeds.len()];
        let body = mutate(&mut rng, seed.to_string().as_bytes());
        let answer = send(
            &a.router,
            "POST",
            path,
            Some(&a.all),
            &[("content-type", "application/json")],
            Body::from(body.clone()),
        )
        .await;
        assert!(
            !answer.status.is_server_error(),
            "round {round}: {} for {:?}: {:#}",
            answer.status,
            String::from_utf8_lossy(&body),
            answer.body
        );
        statuses.insert(answer.status.as_u16());
    }
    assert!(
        statuses.contains(&400) && statuses.contains(&422),
        "{statuses:?}"
    );
    env.cleanup().await
}
