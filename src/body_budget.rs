//! A budget for request bodies held in memory, shared by all connections.
//!
//! A proxied push holds its whole body until the node answered (it may be re-sent to the successor). Without a
//! shared bound, many slow or stalled uploads of `proxy.max_body_size` each grow the process without limit;
//! with it, a body that does not fit is refused with `503` and the gateway's memory stays bounded.
//!
//! A body with a `Content-Length` reserves it before the first byte is read (so it is refused before the
//! client sends it, and `Expect: 100-continue` gets its answer without a `100`); a chunked body reserves as its
//! chunks arrive. The reservation is returned when the push is done.

use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Bytes of request bodies reserved now, over all connections. Cheap to clone (shared handles).
#[derive(Clone, Debug, Default)]
pub struct BodyBudget {
    /// The reserved bytes; it is also the exported gauge, so reserving costs one atomic operation.
    in_use: Gauge,
    /// Bodies refused because the budget was spent.
    refused: Counter,
}

/// Bytes held from a [`BodyBudget`]; they are given back on drop.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a BodyBudget,
    bytes: u64,
}

/// Why a body was not collected.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError<E> {
    /// The body is (or says it is) larger than the per-body limit.
    TooLarge,
    /// Holding it would exceed the budget shared by all connections.
    OverBudget,
    /// Reading it failed.
    Read(E),
}

impl BodyBudget {
    pub fn new(in_use: Gauge, refused: Counter) -> BodyBudget {
        BodyBudget { in_use, refused }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        u64::try_from(self.in_use.get()).unwrap_or(0)
    }

    /// Reserves `bytes` if that keeps the total at most `limit`.
    pub fn reserve(&self, bytes: u64, limit: u64) -> Option<Reservation<'_>> {
        let mut reservation = Reservation {
            budget: self,
            bytes: 0,
        };
        reservation.grow(bytes, limit).then_some(reservation)
    }
}

impl Reservation<'_> {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reserves `more` bytes on top of this reservation if that keeps the total at most `limit`.
    fn grow(&mut self, more: u64, limit: u64) -> bool {
        if more == 0 {
            return true;
        }
        let more_signed = i64::try_from(more).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let granted = self
            .budget
            .in_use
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                in_use
                    .checked_add(more_signed)
                    .filter(|&total| total <= limit)
            })
            .is_ok();
        if granted {
            self.bytes += more;
        } else {
            self.budget.refused.inc();
        }
        granted
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget
                .in_use
                .dec_by(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        }
    }
}

/// Reads a whole body of at most `max_size` bytes, holding its bytes from `budget` (whose total may not exceed
/// `memory_limit`). A declared size over either limit is refused before anything is read.
pub async fn collect<B>(
    mut body: B,
    max_size: u64,
    budget: &BodyBudget,
    memory_limit: u64,
) -> Result<(Bytes, Reservation<'_>), BodyError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin,
{
    let declared = body.size_hint().lower();
    if declared > max_size {
        return Err(BodyError::TooLarge);
    }
    let mut reservation = budget
        .reserve(declared, memory_limit)
        .ok_or(BodyError::OverBudget)?;
    // Most pushes arrive in one frame: keep it as it is; copy only when a second one follows.
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let mut length: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue; // trailers: a push has none worth keeping
        };
        length = length.saturating_add(data.len() as u64);
        if length > max_size {
            return Err(BodyError::TooLarge);
        }
        if length > reservation.bytes && !reservation.grow(length - reservation.bytes, memory_limit)
        {
            return Err(BodyError::OverBudget);
        }
        match &mut joined {
            Some(buffer) => buffer.put(data),
            None if first.is_empty() => first = data,
            None => {
                let capacity = usize::try_from(declared.max(length)).unwrap_or(usize::MAX);
                let mut buffer = BytesMut::with_capacity(capacity);
                buffer.put(std::mem::take(&mut first));
                buffer.put(data);
                joined = Some(buffer);
            }
        }
    }
    let bytes = joined.map_or(first, BytesMut::freeze);
    Ok((bytes, reservation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use std::convert::Infallible;

    fn chunked(
        chunks: &[&'static [u8]],
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin>
    {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    proptest::proptest! {
        /// Whatever the order of reservations and releases, the total in use is the sum of the live
        /// reservations, never exceeds the limit, and returns to zero.
        #[test]
        fn in_use_is_the_sum_of_live_reservations_and_within_the_limit(
            operations in proptest::collection::vec((0u64..64, proptest::bool::ANY), 0..200),
            limit in 0u64..256,
        ) {
            let budget = BodyBudget::default();
            let mut held = Vec::new();
            for (bytes, release) in operations {
                if release && !held.is_empty() {
                    held.swap_remove(bytes as usize % held.len());
                } else if let Some(reservation) = budget.reserve(bytes, limit) {
                    held.push(reservation);
                }
                let live: u64 = held.iter().map(Reservation::bytes).sum();
                proptest::prop_assert_eq!(budget.in_use(), live);
                proptest::prop_assert!(live <= limit);
            }
            drop(held);
            proptest::prop_assert_eq!(budget.in_use(), 0);
        }
    }

    #[test]
    fn reservations_stay_within_the_limit_and_are_returned_on_drop() {
        let budget = BodyBudget::default();
        let a = budget.reserve(60, 100).unwrap();
        assert!(budget.reserve(41, 100).is_none());
        let b = budget.reserve(40, 100).unwrap();
        assert_eq!(budget.in_use(), 100);
        drop(a);
        assert_eq!(budget.in_use(), 40);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.refused.get(), 1);
    }

    #[tokio::test]
    async fn a_declared_length_is_reserved_before_reading_and_refused_when_it_does_not_fit() {
        let budget = BodyBudget::default();
        let (bytes, held) = collect(Full::new(Bytes::from_static(b"abcd")), 10, &budget, 6)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"abcd");
        assert_eq!(held.bytes(), 4);
        let refused = collect(Full::new(Bytes::from_static(b"efg")), 10, &budget, 6).await;
        assert_eq!(refused.unwrap_err(), BodyError::OverBudget);
        let too_large = collect(
            Full::new(Bytes::from_static(b"0123456789x")),
            10,
            &budget,
            100,
        )
        .await;
        assert_eq!(too_large.unwrap_err(), BodyError::TooLarge);
        drop(held);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn chunked_bodies_are_joined_and_reserve_as_they_grow() {
        let budget = BodyBudget::default();
        let (bytes, held) = collect(chunked(&[b"ab", b"cd", b"e"]), 10, &budget, 5)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"abcde");
        assert_eq!(held.bytes(), 5);
        drop(held);
        let over = collect(chunked(&[b"abc", b"def"]), 10, &budget, 5).await;
        assert_eq!(over.unwrap_err(), BodyError::OverBudget);
        let too_large = collect(chunked(&[b"abcdef", b"ghijk"]), 10, &budget, 100).await;
        assert_eq!(too_large.unwrap_err(), BodyError::TooLarge);
        assert_eq!(
            budget.in_use(),
            0,
            "a refused body gives its partial reservation back"
        );
    }
}
