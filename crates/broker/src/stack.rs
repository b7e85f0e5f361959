//! How much stack lapin's I/O thread needs.
//!
//! lapin parses every frame on one thread of its own (`lapin-io-loop`), spawned without an
//! explicit stack size, so `RUST_MIN_STACK` sizes it. Its parser for AMQP field tables
//! recurses once per nesting level, and a content header may hold tables nested as deep as
//! fit in one frame: about 18,700 levels at RabbitMQ's default `frame_max` of 128 KiB, seven
//! bytes a level. With Rust's default 2 MiB a header nested 3,000 deep overflowed the stack
//! and aborted the process, every time the message was redelivered.
//!
//! The figures below were measured with the test in this module at the deepest table that
//! fits (`WARREN_MEASURE_STACK=<bytes> cargo test [--release] -p warren-broker --lib stack`),
//! then doubled: release builds overflowed at 16 MiB and parsed it in 32 MiB; debug builds
//! (dependencies at `opt-level = 1`) overflowed at 128 MiB and parsed it in 256 MiB. The
//! stack is reserved address space; only the pages a parse touches are ever backed by memory.

/// The deepest nesting a 128 KiB frame can carry: each level is a 1-byte key with its length
/// byte, a type tag and a 4-byte table length.
pub const MAX_HEADER_DEPTH: usize = 131_072 / 7;

/// Stack for lapin's I/O thread, and so the `RUST_MIN_STACK` that Warren's binaries run with.
pub const IO_THREAD_STACK: usize = if cfg!(debug_assertions) {
    DEBUG_STACK
} else {
    RELEASE_STACK
};

const DEBUG_STACK: usize = 512 << 20;
const RELEASE_STACK: usize = 64 << 20;

#[cfg(test)]
mod tests {
    use lapin::types::parsing::parse_field_table;

    use super::*;

    /// Encodes a table nested `depth` deep: `{n: {n: ... {leaf: 1}}}`.
    fn nested(depth: usize) -> Vec<u8> {
        let mut inner: Vec<u8> = vec![4, b'l', b'e', b'a', b'f', b'l'];
        inner.extend_from_slice(&1i64.to_be_bytes());
        for _ in 0..depth {
            let mut t = vec![1, b'n', b'F'];
            t.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            t.extend_from_slice(&inner);
            inner = t;
        }
        let mut framed = (inner.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&inner);
        framed
    }

    fn parses_on_a_stack_of(stack: usize, depth: usize) -> bool {
        let bytes = nested(depth);
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || parse_field_table(bytes.as_slice()).is_ok())
            .map(|t| t.join().unwrap_or(false))
            .unwrap_or(false)
    }

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "test-only: the measurement override documented at the top of this module"
    )]
    fn the_deepest_header_that_fits_a_frame_parses_within_the_io_thread_stack() {
        let stack = std::env::var("WARREN_MEASURE_STACK")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(IO_THREAD_STACK);
        assert!(parses_on_a_stack_of(stack, MAX_HEADER_DEPTH));
    }
}
