//! The response future of [`Timeout`](super::Timeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::error::Elapsed;
use crate::BoxError;

pin_project! {
    /// The response future of [`Timeout`](super::Timeout): the inner response future raced
    /// against a timer.
    ///
    /// Dropping it drops the inner future, which cancels the call.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        response: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(response: F, after: Duration) -> Self {
        ResponseFuture {
            response,
            sleep: tokio::time::sleep(after),
            after,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();

        // The response first: one that is ready at the deadline still wins.
        if let Poll::Ready(result) = this.response.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }

        ready!(this.sleep.poll(cx));
        tracing::debug!(target: "bulwark::timeout", after = ?*this.after, "request timed out");
        Poll::Ready(Err(Box::new(Elapsed::new(*this.after))))
    }
}
