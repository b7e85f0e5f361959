//! W3C trace context (`traceparent`, version 00): parsed into its parts so that a job's span
//! can join the producer's trace, and made from random bytes when a producer sent none.
//!
//! Pure: the caller brings the randomness (the client reads the OS generator), so this stays
//! free of I/O and testable with fixed bytes.

use std::fmt;

/// A parsed `traceparent`: `00-<trace id, 32 hex>-<parent span id, 16 hex>-<flags, 2 hex>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace the job belongs to; never all zeros.
    pub trace_id: [u8; 16],
    /// The span that enqueued the job, the parent of the job's span; never all zeros.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceParent {
    /// The `sampled` flag: set on every trace context Warren makes itself.
    pub const SAMPLED: u8 = 0x01;

    /// Parses a version-00 `traceparent` with lowercase hex, as W3C requires; `None` when it is
    /// malformed or either id is all zeros (both invalid by the specification).
    pub fn parse(s: &str) -> Option<TraceParent> {
        let mut parts = s.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(trace)?;
        let parent_id: [u8; 8] = hex_bytes(parent)?;
        let [flags] = hex_bytes::<1>(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A fresh trace context, sampled, from 24 random bytes (16 for the trace id, 8 for the
    /// parent id). An all-zero half, which the specification forbids, is replaced by ones.
    pub fn from_random(bytes: [u8; 24]) -> TraceParent {
        let mut trace_id = [0; 16];
        let mut parent_id = [0; 8];
        trace_id.copy_from_slice(&bytes[..16]);
        parent_id.copy_from_slice(&bytes[16..]);
        if trace_id == [0; 16] {
            trace_id = [1; 16];
        }
        if parent_id == [0; 8] {
            parent_id = [1; 8];
        }
        TraceParent {
            trace_id,
            parent_id,
            flags: Self::SAMPLED,
        }
    }

    /// The trace id as 32 lowercase hex digits, the way logs and tracing backends show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent span id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        hex(&self.parent_id)
    }

    /// Whether the producer sampled its trace (flag bit 0).
    pub fn is_sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }
}

impl fmt::Display for TraceParent {
    /// The `traceparent` header value, `00-<trace id>-<parent id>-<flags>`. Written into a
    /// buffer on the stack and handed to the formatter once: every enqueued job formats one,
    /// and going through `write!` with its three arguments cost more than the rest of the
    /// job's checks (docs/benchmarks.md).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.parent_id, &mut out[36..52]);
        out[52] = b'-';
        hex_into(&[self.flags], &mut out[53..55]);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// Lowercase hex, two digits a byte. Written out by hand because every job formats two of
/// these (its span's trace and parent ids), and a `format!` per byte showed in the profile.
fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; 2 * bytes.len()];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `bytes` as lowercase hex into `out`, which holds exactly two digits a byte.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Exactly `2 * N` lowercase hex digits as `N` bytes.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example_and_prints_it_back() {
        let tp = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id_hex(), "00f067aa0ba902b7");
        assert!(tp.is_sampled());
        assert_eq!(tp.to_string(), EXAMPLE);
        let unsampled = TraceParent::parse(&EXAMPLE.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // unknown version
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  // short flags
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bg-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn random_contexts_are_valid_sampled_and_round_trip() {
        let mut bytes = [0u8; 24];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8 * 11;
        }
        let tp = TraceParent::from_random(bytes);
        assert!(tp.is_sampled());
        assert_eq!(TraceParent::parse(&tp.to_string()), Some(tp));
        let zeros = TraceParent::from_random([0; 24]);
        assert_eq!(TraceParent::parse(&zeros.to_string()), Some(zeros));
    }
}
