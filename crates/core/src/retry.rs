use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::JobId;

/// How often and how patiently a task is retried. Pure: the delay for an attempt is a function
/// of the policy, the job and the attempt number, so any worker computes the same delay and
/// tests can check recorded timestamps against it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. 1 means never retry.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    #[serde(with = "millis")]
    pub base: Duration,
    /// Each further failure multiplies the delay by this.
    pub factor: f64,
    /// No delay exceeds this.
    #[serde(with = "millis")]
    pub max_delay: Duration,
    /// Fraction of each delay that is randomised away (0 = exact, 1 = anywhere in 0..=delay).
    /// Jitter spreads retries of jobs that failed together, so they do not stampede together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Five attempts, 1 s doubling to at most 10 min, 20% jitter.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(600),
            jitter: 0.2,
        }
    }
}

/// The longest retry delay a policy may allow.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(365 * 86_400);

/// A policy whose numbers make no sense, with what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry policy: {0}")]
pub struct InvalidPolicy(pub &'static str);

impl RetryPolicy {
    /// Checks that the numbers make sense: 1 to 1000 attempts, a finite factor of at least 1,
    /// jitter within 0..=1, a base no longer than `max_delay`, and a `max_delay` of at most
    /// [`MAX_RETRY_DELAY`]. Workers refuse to register a task whose policy fails this.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.max_attempts == 0 || self.max_attempts > crate::message::MAX_ATTEMPTS_LIMIT {
            return Err(InvalidPolicy("max_attempts must be between 1 and 1000"));
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(InvalidPolicy("factor must be a finite number >= 1"));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(InvalidPolicy("jitter must be between 0 and 1"));
        }
        if self.base > self.max_delay {
            return Err(InvalidPolicy("base delay must not exceed max_delay"));
        }
        // The worker adds the delay to the clock to schedule the retry; a delay near
        // Duration::MAX would overflow there (and is no plan anyway).
        if self.max_delay > MAX_RETRY_DELAY {
            return Err(InvalidPolicy("max_delay must be at most 365 days"));
        }
        Ok(())
    }

    /// The delay before the attempt after `failed_attempt` (1-based), before jitter.
    pub fn nominal_delay(&self, failed_attempt: u32) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(1_000) as i32;
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        let capped = secs.min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(if capped.is_finite() {
            capped
        } else {
            self.max_delay.as_secs_f64()
        })
    }

    /// The delay with jitter drawn from `rng`: uniformly in `[(1 - jitter) * d, d]`.
    pub fn delay_with(&self, failed_attempt: u32, rng: &mut SplitMix64) -> Duration {
        let d = self.nominal_delay(failed_attempt).as_secs_f64();
        Duration::from_secs_f64(d * (1.0 - self.jitter * rng.next_f64()))
    }

    /// The delay for this job's attempt, seeded by the job id and attempt: deterministic, so a
    /// retried computation (or a test) gets the same answer, yet spread across jobs.
    pub fn delay(&self, job: JobId, failed_attempt: u32) -> Duration {
        let bits = job.as_uuid().as_u128();
        let seed =
            (bits as u64) ^ ((bits >> 64) as u64) ^ u64::from(failed_attempt).rotate_left(32);
        self.delay_with(failed_attempt, &mut SplitMix64::new(seed))
    }
}

/// SplitMix64: a tiny, fast, seedable generator, plenty for spreading retry times. Not for
/// anything that needs unpredictability.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`; any seed, zero included, is fine.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number of the sequence, uniform over all of `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_secs(1),
            jitter,
        }
    }

    #[test]
    fn a_delay_that_would_overflow_the_clock_is_refused() {
        let p = RetryPolicy {
            max_delay: Duration::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.validate(),
            Err(InvalidPolicy("max_delay must be at most 365 days"))
        );
        let p = RetryPolicy {
            max_delay: MAX_RETRY_DELAY,
            ..RetryPolicy::default()
        };
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn delays_grow_exponentially_and_cap() {
        let p = policy(0.0);
        let ms: Vec<u128> = (1..=6).map(|a| p.nominal_delay(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(JobId::new(), 3), Duration::from_millis(400));
        // Absurd attempt numbers saturate at the cap instead of overflowing.
        assert_eq!(p.nominal_delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_bounds_and_is_seeded() {
        let p = policy(0.5);
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            let d = p.delay_with(2, &mut rng).as_secs_f64();
            assert!((0.1 - 1e-9..=0.2 + 1e-9).contains(&d), "{d}");
        }
        let job = JobId::new();
        assert_eq!(
            p.delay(job, 2),
            p.delay(job, 2),
            "same job and attempt, same delay"
        );
        let spread: std::collections::BTreeSet<u128> = (0..50)
            .map(|_| p.delay(JobId::new(), 2).as_micros())
            .collect();
        assert!(spread.len() > 40, "different jobs get different delays");
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut p = policy(0.1);
        p.max_attempts = 0;
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("max_attempts")
        );
        let mut p = policy(1.5);
        assert!(p.validate().unwrap_err().to_string().contains("jitter"));
        p.jitter = 0.0;
        p.factor = 0.5;
        assert!(p.validate().unwrap_err().to_string().contains("factor"));
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
    }
}
