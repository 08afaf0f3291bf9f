//! Consul's rules for blocking queries, as pure functions: which index to send next, when to pause instead of
//! asking again at once, and how long to back off after an error. See Consul's "Blocking Queries" docs
//! ("Implementation Details"): reset the index if it goes backwards or is not greater than 0, and rate-limit.

use std::time::Duration;

/// The first retry after an error waits about this long; each further error doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Retries never wait longer than this, so a recovered Consul is noticed within seconds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Pause between two non-blocking (index 0) queries, so a misbehaving server cannot make us spin.
pub const INDEX_ZERO_PAUSE: Duration = Duration::from_secs(1);

/// The index to send with the next query, given the one just sent and the one Consul answered.
///
/// An answer index of 0 is invalid and one lower than before means the server's state was reset (a fresh agent,
/// a restored snapshot); both restart from 0, which asks for the current state without blocking.
pub fn next_index(sent: u64, answered: u64) -> u64 {
    if answered == 0 || answered < sent {
        0
    } else {
        answered
    }
}

/// Whether the answer's index went backwards: the server lost its state (e.g. a restarted dev agent), so our
/// registrations are probably gone too.
pub fn went_backwards(sent: u64, answered: u64) -> bool {
    sent > 0 && answered < sent
}

/// How long to wait before the next query after a successful answer. Two index-0 queries in a row would not
/// block at all, so the second one waits [`INDEX_ZERO_PAUSE`].
pub fn pause_before_next(sent: u64, next: u64) -> Duration {
    if sent == 0 && next == 0 {
        INDEX_ZERO_PAUSE
    } else {
        Duration::ZERO
    }
}

/// Wait before retry number `failures` (1 for the first error) with jitter: exponential from
/// [`BACKOFF_BASE`], capped at [`BACKOFF_MAX`], then scaled to 50-100% by `jitter` in `[0, 1)` so that replicas
/// which lost Consul together do not return in lockstep.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let full = BACKOFF_BASE
        .saturating_mul(1u32 << exponent)
        .min(BACKOFF_MAX);
    full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_consul_and_resets_when_it_goes_backwards_or_is_zero() {
        assert_eq!(next_index(0, 14), 14);
        assert_eq!(next_index(14, 14), 14, "unchanged: block on it again");
        assert_eq!(next_index(14, 20), 20);
        assert_eq!(next_index(20, 5), 0, "backwards: start over");
        assert_eq!(next_index(20, 0), 0, "zero is never a valid index");
        assert!(went_backwards(20, 5));
        assert!(!went_backwards(0, 5));
        assert!(!went_backwards(5, 5));
    }

    #[test]
    fn never_two_index_zero_queries_back_to_back() {
        assert_eq!(pause_before_next(0, 0), INDEX_ZERO_PAUSE);
        assert_eq!(pause_before_next(0, 7), Duration::ZERO);
        assert_eq!(
            pause_before_next(20, 0),
            Duration::ZERO,
            "a reset may ask again at once"
        );
        assert_eq!(pause_before_next(7, 7), Duration::ZERO);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        assert_eq!(backoff(1, 1.0), BACKOFF_BASE);
        assert_eq!(backoff(1, 0.0), BACKOFF_BASE / 2);
        assert_eq!(backoff(2, 1.0), BACKOFF_BASE * 2);
        assert_eq!(backoff(30, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX, 0.5), BACKOFF_MAX.mul_f64(0.75));
        assert!(backoff(0, 0.0) > Duration::ZERO);
    }
}
