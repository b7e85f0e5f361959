//! Fleet-wide limits as one worker applies them: which limits a job is under, and whether it
//! may start now (a slot and a token taken) or must wait (the executor defers it).
//!
//! Slots and tokens come from Postgres in batches: a worker leases slots of a concurrency
//! limit and keeps using them locally until they are given back, and takes tokens of a rate
//! limit for all the jobs waiting at that moment in one call. Jobs under no limit pay one
//! atomic load. docs/limits.md has the semantics, the burst and the measured cost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_core::ErrorChain;
use warren_store::{Limit, Rate, Store};

/// How long a job over a concurrency limit waits before it is offered again. Nobody can know
/// when a slot frees; a short wait keeps the slots busy, at the cost of a deferral per wait.
const CONCURRENCY_RETRY: Duration = Duration::from_millis(200);

/// After a lease call came back short, jobs arriving within this time are deferred without
/// asking Postgres again: a full limit costs one round trip per this interval, not per job.
const SHORT_FOR: Duration = Duration::from_millis(50);

/// How far ahead a rate limit's tokens are reserved for deferred jobs, at least: a job that
/// would wait longer gets no reservation and asks again when this time has passed, so that a
/// limit raised meanwhile takes effect within it.
const RESERVE_AHEAD: Duration = Duration::from_secs(60);

/// How often slots no longer in use are given back, in one call per key that has some.
const RELEASE_EVERY: Duration = Duration::from_millis(100);

/// The key of a job whose payload has no value at the limit's `key_from` pointer: all such
/// jobs share it. Present values are keyed by their JSON text, which is never empty.
pub(crate) const MISSING_KEY: &str = "";

/// What the limits say about a job.
pub(crate) enum Admission {
    /// Start now, holding these until the job ends.
    Run(Permits),
    /// Over a limit: offer it again after `wait`, holding the rate-limit token reserved for
    /// that time, if one was.
    Wait {
        /// How long until the job is offered again.
        wait: Duration,
        /// The time of the token reserved for it.
        token_at: Option<DateTime<Utc>>,
    },
}

/// Slots held by a running job; dropping it hands them back to this worker's lease.
#[derive(Default)]
pub(crate) struct Permits(Vec<SlotPermit>);

struct SlotPermit {
    slots: Arc<Slots>,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        let mut s = lock(&self.slots.state);
        s.in_use = s.in_use.saturating_sub(1);
        self.slots.dirty.store(true, Ordering::Relaxed);
    }
}

/// One limit as read from Postgres.
struct Rule {
    limit: Limit,
    /// The most tokens a bucket holds: the burst a rate limit allows after a quiet spell.
    burst: f64,
}

/// The burst of a rate: a tenth of a second's worth of tokens, at least one. A bucket that
/// held a whole period's tokens would let twice the rate start in the first period after a
/// quiet spell.
pub(crate) fn burst_of(rate: Rate) -> f64 {
    (rate.per_second() / 10.0).ceil().max(1.0)
}

/// This worker's lease of one (limit, key).
#[derive(Default)]
struct Slots {
    state: Mutex<SlotState>,
    /// One lease call at a time per key; jobs that arrive during it find its grant.
    sync: tokio::sync::Mutex<()>,
    /// Set when a slot is handed back: the keeper looks at this key on its next pass.
    dirty: AtomicBool,
}

#[derive(Default)]
struct SlotState {
    leased: u32,
    in_use: u32,
    waiting: u32,
    short_until: Option<Instant>,
}

/// This worker's view of the token bucket of one (limit, key).
#[derive(Default)]
struct Bucket {
    state: Mutex<BucketState>,
    sync: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct BucketState {
    /// Tokens taken for jobs that are about to start.
    spare: u32,
    waiting: u32,
    /// Tokens reserved in Postgres and not handed to a job yet, earliest first.
    reserved: VecDeque<DateTime<Utc>>,
}

/// What a job gets from a token bucket.
enum Token {
    /// A token now: start.
    Now,
    /// A token reserved for this time: defer the job to it.
    Reserved(DateTime<Utc>),
    /// None within [`RESERVE_AHEAD`]: ask again after this long.
    Later(Duration),
}

/// How late a job may come back for its reserved token and still start with it: the time the
/// bucket takes to fill its burst. A job later than that takes a new token, so that late jobs
/// arriving together cannot start more than one burst beyond the rate.
pub(crate) fn grace(rate: Rate, burst: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((burst / rate.per_second() * 1000.0).ceil() as i64)
}

type KeyOf = (String, String);

/// The limits this worker knows and its slots and tokens.
pub(crate) struct Limiter {
    store: Store,
    worker_id: Arc<str>,
    /// How long a lease lives without renewal: a dead worker's slots come back after it.
    ttl: Duration,
    /// True while no limit exists: the whole cost for jobs then.
    none: AtomicBool,
    rules: RwLock<Arc<HashMap<String, Arc<Rule>>>>,
    slots: Mutex<HashMap<KeyOf, Arc<Slots>>>,
    buckets: Mutex<HashMap<KeyOf, Arc<Bucket>>>,
}

/// Locks a mutex; a panic while it was held cannot leave these counters inconsistent in a
/// way worse than a lost count, so a poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Limiter {
    pub(crate) fn new(store: Store, worker_id: Arc<str>, heartbeat: Duration) -> Self {
        Limiter {
            store,
            worker_id,
            ttl: (heartbeat * 3).max(Duration::from_secs(5)),
            none: AtomicBool::new(true),
            rules: RwLock::new(Arc::new(HashMap::new())),
            slots: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the known limits.
    pub(crate) fn set(&self, limits: Vec<Limit>) {
        let rules: HashMap<String, Arc<Rule>> = limits
            .into_iter()
            .map(|limit| {
                let burst = limit.rate.map_or(1.0, burst_of);
                (limit.target.clone(), Arc::new(Rule { limit, burst }))
            })
            .collect();
        self.none.store(rules.is_empty(), Ordering::Relaxed);
        *self
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(rules);
    }

    /// Re-reads the limits; a failed read keeps the last known ones.
    pub(crate) async fn refresh(&self) {
        match self.store.limits().await {
            Ok(limits) => self.set(limits),
            Err(e) => {
                tracing::debug!(error = %ErrorChain(&e), "cannot read the limits; trying again later")
            }
        }
    }

    /// Whether a job of `task` on `queue` is under no limit: true for every job while no
    /// limit exists, at the cost of one atomic load.
    pub(crate) fn unlimited(&self, task: &str, queue: &str) -> bool {
        if self.none.load(Ordering::Relaxed) {
            return true;
        }
        let rules = self.rules();
        !rules.contains_key(task) && !rules.contains_key(queue)
    }

    fn rules(&self) -> Arc<HashMap<String, Arc<Rule>>> {
        self.rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Takes a slot of every concurrency limit and a token of every rate limit the job is
    /// under, or says how long it must wait. What was taken before a limit said no is handed
    /// back (slots at once, to this worker's lease; tokens are spent).
    /// `holds` is the time of a token reserved for the job when a limit deferred it: within
    /// its [`grace`], the job's rate limits are not asked again.
    pub(crate) async fn admit(
        &self,
        task: &str,
        queue: &str,
        payload: &RawValue,
        holds: Option<DateTime<Utc>>,
    ) -> Result<Admission, warren_store::Error> {
        let rules = self.rules();
        let mut applicable: Vec<&Arc<Rule>> =
            [task, queue].iter().filter_map(|t| rules.get(*t)).collect();
        applicable.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let mut permits = Permits::default();
        let mut parsed: Option<serde_json::Value> = None;
        for rule in applicable {
            let key = match &rule.limit.key_from {
                None => MISSING_KEY.to_owned(),
                Some(pointer) => {
                    let value = parsed.get_or_insert_with(|| {
                        serde_json::from_str(payload.get()).unwrap_or(serde_json::Value::Null)
                    });
                    key_at(value, pointer)
                }
            };
            if let Some(cap) = rule.limit.concurrency {
                match self.take_slot(&rule.limit.target, &key, cap).await? {
                    Some(permit) => permits.0.push(permit),
                    None => {
                        // The job keeps a reserved token it has not used yet.
                        return Ok(Admission::Wait {
                            wait: CONCURRENCY_RETRY,
                            token_at: holds,
                        });
                    }
                }
            }
            let Some(rate) = rule.limit.rate else {
                continue;
            };
            if holds.is_some_and(|at| Utc::now() <= at + grace(rate, rule.burst)) {
                continue;
            }
            match self
                .take_token(&rule.limit.target, &key, rate, rule.burst)
                .await?
            {
                Token::Now => {}
                Token::Reserved(at) => {
                    let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    return Ok(Admission::Wait {
                        wait,
                        token_at: Some(at),
                    });
                }
                Token::Later(wait) => {
                    return Ok(Admission::Wait {
                        wait,
                        token_at: None,
                    });
                }
            }
        }
        Ok(Admission::Run(permits))
    }

    async fn take_slot(
        &self,
        target: &str,
        key: &str,
        cap: u32,
    ) -> Result<Option<SlotPermit>, warren_store::Error> {
        let slots = lock(&self.slots)
            .entry((target.to_owned(), key.to_owned()))
            .or_default()
            .clone();
        let permit = || SlotPermit {
            slots: slots.clone(),
        };
        {
            let mut s = lock(&slots.state);
            if s.in_use < s.leased {
                s.in_use += 1;
                return Ok(Some(permit()));
            }
            if s.short_until.is_some_and(|t| Instant::now() < t) {
                return Ok(None);
            }
            s.waiting += 1;
        }
        let _sync = slots.sync.lock().await;
        let want = {
            let mut s = lock(&slots.state);
            if s.in_use < s.leased {
                s.waiting -= 1;
                s.in_use += 1;
                return Ok(Some(permit()));
            }
            // Everyone waiting now is served by this one call.
            s.in_use + s.waiting
        };
        let granted = self
            .store
            .lease_slots(target, key, &self.worker_id, want, cap, self.ttl)
            .await;
        let mut s = lock(&slots.state);
        s.waiting -= 1;
        s.leased = granted?;
        if s.in_use < s.leased {
            s.in_use += 1;
            Ok(Some(permit()))
        } else {
            s.short_until = Some(Instant::now() + SHORT_FOR);
            Ok(None)
        }
    }

    /// Takes a token now, or one reserved for later, or says when to ask again.
    async fn take_token(
        &self,
        target: &str,
        key: &str,
        rate: Rate,
        burst: f64,
    ) -> Result<Token, warren_store::Error> {
        let bucket = lock(&self.buckets)
            .entry((target.to_owned(), key.to_owned()))
            .or_default()
            .clone();
        let grace = grace(rate, burst);
        {
            let mut b = lock(&bucket.state);
            if let Some(token) = b.hand_out(grace) {
                return Ok(token);
            }
            b.waiting += 1;
        }
        let _sync = bucket.sync.lock().await;
        let want = {
            let mut b = lock(&bucket.state);
            if let Some(token) = b.hand_out(grace) {
                b.waiting -= 1;
                return Ok(token);
            }
            // Everyone waiting now is served by this one call.
            b.waiting
        };
        let interval = Duration::from_secs_f64(1.0 / rate.per_second());
        let horizon = RESERVE_AHEAD.max(interval * 10);
        let taken = self
            .store
            .take_tokens(target, key, want, rate.per_second(), burst, horizon)
            .await;
        let mut b = lock(&bucket.state);
        b.waiting -= 1;
        let taken = taken?;
        b.spare += taken.granted;
        let first = Utc::now() + chrono::Duration::from_std(taken.next).unwrap_or_default();
        let step = chrono::Duration::from_std(interval).unwrap_or_default();
        b.reserved
            .extend((0..taken.reserved).map(|k| first + step * k as i32));
        Ok(b.hand_out(grace).unwrap_or(Token::Later(horizon)))
    }

    /// Gives back slots no longer in use, for every key that handed one back: one lease call
    /// per such key. Keys with nothing leased, in use or waiting are forgotten.
    async fn release_unused(&self) {
        let dirty: Vec<(KeyOf, Arc<Slots>)> = lock(&self.slots)
            .iter()
            .filter(|(_, s)| s.dirty.swap(false, Ordering::Relaxed))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let rules = self.rules();
        for ((target, key), slots) in dirty {
            let _sync = slots.sync.lock().await;
            let keep = {
                let mut s = lock(&slots.state);
                if s.waiting > 0 || s.leased <= s.in_use {
                    continue;
                }
                // Shrink here first: no job takes a slot that is being given back.
                s.leased = s.in_use;
                s.in_use
            };
            // A removed limit's leases went with it.
            let Some(cap) = rules.get(&target).and_then(|r| r.limit.concurrency) else {
                continue;
            };
            match self
                .store
                .lease_slots(&target, &key, &self.worker_id, keep, cap, self.ttl)
                .await
            {
                Ok(granted) => lock(&slots.state).leased = granted.min(keep),
                Err(e) => {
                    // Held in Postgres a little longer than needed: the lease expires anyway.
                    slots.dirty.store(true, Ordering::Relaxed);
                    tracing::debug!(error = %ErrorChain(&e), "cannot give back limit slots; trying again");
                }
            }
        }
        lock(&self.slots).retain(|_, s| {
            let st = lock(&s.state);
            st.leased > 0 || st.in_use > 0 || st.waiting > 0 || Arc::strong_count(s) > 1
        });
        lock(&self.buckets).retain(|_, b| {
            let st = lock(&b.state);
            !st.reserved.is_empty() || st.spare > 0 || Arc::strong_count(b) > 1
        });
    }
}

impl BucketState {
    /// A spare token, else the earliest reservation still usable (one past its `grace` is
    /// dropped: its time went by unused, as a full bucket's tokens do); `None` when there is
    /// neither and Postgres must be asked.
    fn hand_out(&mut self, grace: chrono::Duration) -> Option<Token> {
        if self.spare > 0 {
            self.spare -= 1;
            return Some(Token::Now);
        }
        let now = Utc::now();
        while let Some(at) = self.reserved.pop_front() {
            if at + grace < now {
                continue;
            }
            return Some(if at <= now {
                Token::Now
            } else {
                Token::Reserved(at)
            });
        }
        None
    }
}

/// The key of a payload under `pointer`: the JSON text of the value there, or
/// [`MISSING_KEY`] when there is none.
pub(crate) fn key_at(payload: &serde_json::Value, pointer: &str) -> String {
    payload
        .pointer(pointer)
        .map_or_else(|| MISSING_KEY.to_owned(), |v| v.to_string())
}

/// Gives back unused slots every [`RELEASE_EVERY`], renews this worker's leases every
/// `renew`, and once the worker stops and its jobs are done, gives back every slot.
pub(crate) async fn keeper_loop(
    limiter: Arc<Limiter>,
    renew: Duration,
    jobs: TaskTracker,
    stop: CancellationToken,
) {
    let mut release = tokio::time::interval(RELEASE_EVERY);
    release.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewal = tokio::time::interval(renew);
    renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = release.tick() => limiter.release_unused().await,
            _ = renewal.tick() => {
                if let Err(e) = limiter.store.renew_leases(&limiter.worker_id, limiter.ttl).await {
                    tracing::debug!(error = %ErrorChain(&e), "cannot renew limit leases; trying again next beat");
                }
            }
            () = stop.cancelled() => break,
        }
    }
    // Jobs still running hold their slots until they end; then every lease goes.
    while !jobs.is_empty() {
        tokio::time::sleep(RELEASE_EVERY).await;
        limiter.release_unused().await;
    }
    if let Err(e) = limiter.store.drop_leases(&limiter.worker_id).await {
        tracing::debug!(error = %ErrorChain(&e), "cannot give back limit leases; they expire by themselves");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_json_text_of_the_value_and_missing_is_shared() {
        let p: serde_json::Value = serde_json::json!({"customer_id": "c1", "n": 7, "a": {"b": 1}});
        assert_eq!(key_at(&p, "/customer_id"), "\"c1\"");
        assert_eq!(key_at(&p, "/n"), "7");
        assert_eq!(key_at(&p, "/a/b"), "1");
        assert_eq!(key_at(&p, "/nope"), MISSING_KEY);
        assert_eq!(key_at(&serde_json::json!([1]), "/customer_id"), MISSING_KEY);
    }

    #[test]
    fn burst_is_a_tenth_of_a_second_at_least_one() {
        let rate = |count, period_ms| Rate { count, period_ms };
        assert_eq!(burst_of(rate(20, 1000)), 2.0);
        assert_eq!(burst_of(rate(5, 1000)), 1.0);
        assert_eq!(burst_of(rate(600, 60_000)), 1.0);
        assert_eq!(burst_of(rate(1000, 1000)), 100.0);
    }

    #[test]
    fn reservations_are_handed_out_in_order_and_stale_ones_dropped() {
        let grace = chrono::Duration::milliseconds(100);
        let now = Utc::now();
        let mut b = BucketState {
            spare: 1,
            reserved: [
                now - chrono::Duration::seconds(5),
                now - chrono::Duration::milliseconds(20),
                now + chrono::Duration::seconds(1),
            ]
            .into(),
            ..BucketState::default()
        };
        assert!(
            matches!(b.hand_out(grace), Some(Token::Now)),
            "the spare token"
        );
        // The one 5 s old is past its grace; the one 20 ms old is due: start now.
        assert!(matches!(b.hand_out(grace), Some(Token::Now)));
        assert!(matches!(b.hand_out(grace), Some(Token::Reserved(at)) if at > now));
        assert!(b.hand_out(grace).is_none());
    }

    #[test]
    fn grace_is_the_time_to_fill_the_burst() {
        let rate = Rate {
            count: 100,
            period_ms: 1000,
        };
        assert_eq!(grace(rate, burst_of(rate)).num_milliseconds(), 100);
    }
}
