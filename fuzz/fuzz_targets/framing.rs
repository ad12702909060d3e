//! The request-framing check on client bytes: any byte stream, cut into any reads, with requests starting and
//! ending in between, goes through without a panic (it slices what the client sent, on every connection).
#![no_main]

use std::time::Duration;

use switchyard::serve::conn::{ConnClock, TimedIo};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let clock = ConnClock::new(Duration::from_secs(10), Duration::from_secs(60));
    let mut io = TimedIo::new((), std::sync::Arc::clone(&clock));
    let mut guards = Vec::new();
    // The first byte of each piece says how long the piece is and whether a request starts or ends before it.
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        let len = usize::from(control & 0x3f).min(tail.len());
        let (piece, after) = tail.split_at(len);
        match control >> 6 {
            1 => guards.push(clock.request_started()),
            2 => drop(guards.pop()),
            _ => {}
        }
        io.observe(piece);
        rest = after;
    }
});
