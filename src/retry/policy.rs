//! What a retry layer asks about each request and result: the [`RetryPolicy`] trait.

use std::time::Duration;

use super::error::GaveUp;
use crate::classify::Classify;
use crate::BoxError;

/// What to do with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Return it: a success, or a failure not worth another attempt.
    Return,
    /// Try again after the backoff.
    Retry,
    /// Try again, but not before this wait (the downstream's `Retry-After`).
    RetryAfter(Duration),
    /// A failure worth retrying, but not now: return it, saying why.
    GiveUp(GaveUp),
}

/// Decides what a [`Retry`](super::Retry) retries: which requests can be sent again and which
/// results are worth another attempt.
///
/// `Req` is the request the inner service receives. Every [`Classify`] implementation is a
/// policy for `Clone` requests: a result classified as a failure is retried.
/// [`HttpPolicy`](super::HttpPolicy) (feature `http`) is the policy for HTTP requests whose
/// body was made replayable by [`HttpRetry`](super::HttpRetry).
pub trait RetryPolicy<Req, Res> {
    /// A copy of the request for another attempt, or `None` if it cannot be sent again.
    fn replay(&self, request: &Req) -> Option<Req>;

    /// What to do with `result`, the outcome of sending `request`.
    fn verdict(&self, request: &Req, result: &Result<Res, BoxError>) -> Verdict;

    /// Prepares a copy of the request for attempt number `attempt` (2 for the first retry).
    fn prepare(&self, request: &mut Req, attempt: u32) {
        let _ = (request, attempt);
    }

    /// Adjusts the result that is returned after `attempts` attempts.
    fn finish(&self, result: &mut Result<Res, BoxError>, attempts: u32) {
        let _ = (result, attempts);
    }
}

impl<C, Req, Res> RetryPolicy<Req, Res> for C
where
    C: Classify<Res, BoxError>,
    Req: Clone,
{
    fn replay(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }

    fn verdict(&self, _request: &Req, result: &Result<Res, BoxError>) -> Verdict {
        if self.classify(result).is_failure() {
            Verdict::Retry
        } else {
            Verdict::Return
        }
    }
}
