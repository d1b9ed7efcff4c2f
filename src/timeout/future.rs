//! The response future of [`Timeout`](super::Timeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::error::Elapsed;
use crate::BoxError;

pin_project! {
    /// The response future of [`Timeout`](super::Timeout): the inner response future raced
    /// against a timer.
    ///
    /// The deadline is fixed when the call is made; the timer itself is armed only if the
    /// inner future is not ready on its first poll, so a response that is ready at once costs
    /// no timer at all. Dropping this future drops the inner future, which cancels the call.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        // `None` once the deadline has passed: the call is cancelled then, not when this
        // future is dropped.
        #[pin]
        response: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        deadline: Instant,
        after: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(response: F, after: Duration) -> Self {
        let now = Instant::now();
        ResponseFuture {
            response: Some(response),
            sleep: None,
            // Saturate rather than panic on an absurd duration: such a call never times out.
            deadline: now.checked_add(after).unwrap_or_else(|| far_future(now)),
            after,
        }
    }
}

/// A deadline that never comes, for durations too long to add to `now`.
fn far_future(now: Instant) -> Instant {
    // About 30 years, as tokio itself uses for "never".
    now + Duration::from_secs(86_400 * 365 * 30)
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();

        // The response first: one that is ready at the deadline still wins.
        let Some(response) = this.response.as_mut().as_pin_mut() else {
            panic!("timeout ResponseFuture polled after completion");
        };
        if let Poll::Ready(result) = response.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }

        if this.sleep.is_none() {
            this.sleep
                .set(Some(tokio::time::sleep_until(*this.deadline)));
        }
        let sleep = this.sleep.as_pin_mut().expect("the timer was just armed");
        ready!(sleep.poll(cx));
        // Cancel the call now: drop the inner future and everything it holds.
        this.response.set(None);
        tracing::debug!(target: "bulwark::timeout", after = ?*this.after, "request timed out");
        Poll::Ready(Err(Box::new(Elapsed::new(*this.after))))
    }
}
