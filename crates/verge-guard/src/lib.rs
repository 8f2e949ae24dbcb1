//! Admission control: decides, before any guest code runs, whether a
//! request may proceed: quotas per tenant and app ([`quota`]), a
//! concurrency cap per component and the declared body size. Later issues
//! add authentication and shield rules here.
//!
//! **Invariant**: a rejected request costs no instance, no guest time and no
//! body read. Rejections carry what the client needs (status, `Retry-After`).
//!
//! **API boundary**: no wasmtime, no routing; only `http` header types.

pub mod quota;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{HeaderMap, StatusCode, header};

/// Why a request was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The component already runs its maximum number of instances.
    #[error("component is at its concurrency limit of {limit}")]
    Busy {
        /// The cap that was reached.
        limit: u32,
        /// When the client should retry.
        retry_after: Duration,
    },
    /// The declared `Content-Length` exceeds the component's limit.
    #[error("request body of {declared} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The component's limit.
        limit: u64,
        /// The size the client declared.
        declared: u64,
    },
    /// The `Content-Length` header is malformed.
    #[error("malformed content-length header")]
    BadContentLength,
    /// A quota of the app or its tenant is used up.
    #[error("{0}")]
    OverQuota(quota::Exceeded),
}

impl Rejection {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BadContentLength => StatusCode::BAD_REQUEST,
            Rejection::OverQuota(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `Retry-After` value in seconds, when retrying makes sense.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Rejection::Busy { retry_after, .. } => Some(retry_after.as_secs().max(1)),
            Rejection::OverQuota(e) => Some(e.retry_after.as_secs().max(1)),
            _ => None,
        }
    }
}

/// Caps the instances of one component that run at once.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    in_flight: Arc<AtomicU32>,
    limit: u32,
}

/// Held while a request runs; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    in_flight: Arc<AtomicU32>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimit {
    /// A limit of `limit` concurrent requests (at least 1).
    pub fn new(limit: u32) -> Self {
        Self {
            in_flight: Arc::new(AtomicU32::new(0)),
            limit: limit.max(1),
        }
    }

    /// Takes a slot, or says to come back later. Never waits: queueing
    /// behind a slow or looping guest is what the cap exists to prevent.
    pub fn try_acquire(&self) -> Result<Permit, Rejection> {
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Permit {
                in_flight: self.in_flight.clone(),
            }),
            Err(_) => Err(Rejection::Busy {
                limit: self.limit,
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// The cap.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Requests running now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Refuses a request whose declared body is larger than `limit` bytes.
pub fn check_declared_body(headers: &HeaderMap, limit: u64) -> Result<(), Rejection> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    let declared = value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or(Rejection::BadContentLength)?;
    if values.any(|other| other != value) {
        return Err(Rejection::BadContentLength);
    }
    if declared > limit {
        return Err(Rejection::BodyTooLarge { limit, declared });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_cap_counts_permits() {
        let limit = ConcurrencyLimit::new(2);
        let a = limit.try_acquire().expect("first");
        let _b = limit.try_acquire().expect("second");
        let rejected = limit.try_acquire().expect_err("third is over the cap");
        assert_eq!(rejected.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rejected.retry_after_secs(), Some(1));
        drop(a);
        assert_eq!(limit.in_flight(), 1);
        limit.try_acquire().expect("a slot was freed");
    }

    #[test]
    fn declared_body_size() {
        let mut h = HeaderMap::new();
        assert_eq!(check_declared_body(&h, 10), Ok(()));
        h.insert(header::CONTENT_LENGTH, "10".parse().expect("valid"));
        assert_eq!(check_declared_body(&h, 10), Ok(()));
        assert_eq!(
            check_declared_body(&h, 9),
            Err(Rejection::BodyTooLarge {
                limit: 9,
                declared: 10
            })
        );
        for bad in ["-1", "1e3", "", " 5", "99999999999999999999999"] {
            h.insert(header::CONTENT_LENGTH, bad.parse().expect("header value"));
            assert_eq!(
                check_declared_body(&h, 10),
                Err(Rejection::BadContentLength),
                "{bad}"
            );
        }
        h.insert(header::CONTENT_LENGTH, "5".parse().expect("valid"));
        h.append(header::CONTENT_LENGTH, "6".parse().expect("valid"));
        assert_eq!(
            check_declared_body(&h, 10),
            Err(Rejection::BadContentLength)
        );
    }
}
