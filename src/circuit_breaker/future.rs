//! The response future of [`CircuitBreaker`](super::CircuitBreaker).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::core::{Core, Pass};
use super::error::CircuitOpen;
use crate::classify::{Classify, Outcome};
use crate::error::{rejection, Rejection};
use crate::BoxError;

/// An admitted call's pass: records the call's outcome when it completes, and gives a probe's
/// slot back when the call is dropped before that.
pub(crate) struct Ticket {
    core: Arc<Core>,
    /// Taken when the outcome is recorded; still here when dropped, the call was abandoned.
    pass: Option<Pass>,
}

impl Ticket {
    #[inline]
    pub(crate) fn new(core: Arc<Core>, pass: Pass) -> Self {
        Ticket {
            core,
            pass: Some(pass),
        }
    }

    #[inline]
    fn finish(mut self, outcome: Outcome, started: Option<Instant>) {
        let Some(pass) = self.pass.take() else {
            return;
        };
        let (elapsed, now) = match started {
            Some(started) => {
                let now = Instant::now();
                (Some(now.saturating_duration_since(started)), Some(now))
            }
            None => (None, None),
        };
        self.core.complete(pass, outcome, elapsed, now);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(pass) = self.pass.take() {
            // Dropped before completing: the client went away. Counts for nothing, but a
            // probe's slot is given back.
            self.core.abandon(pass);
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("breaker", &self.core.name)
            .field("pass", &self.pass)
            .finish()
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// Records the call's outcome when it completes; dropped before that, the call counts for
    /// nothing and a half-open probe's slot is given back.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        // `None` when the call was rejected; the rejection is then in `rejection`.
        #[pin]
        response: Option<F>,
        ticket: Option<Ticket>,
        // Boxed here rather than when polled: a rejection becomes a `BoxError` either way.
        rejection: Option<BoxError>,
        classifier: C,
        started: Option<Instant>,
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn called(
        response: F,
        ticket: Ticket,
        classifier: C,
        started: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            response: Some(response),
            ticket: Some(ticket),
            rejection: None,
            classifier,
            started,
        }
    }

    pub(crate) fn rejected(error: CircuitOpen, classifier: C) -> Self {
        ResponseFuture {
            response: None,
            ticket: None,
            rejection: Some(Box::new(error)),
            classifier,
            started: None,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(response) = this.response.as_pin_mut() else {
            return match this.rejection.take() {
                Some(error) => Poll::Ready(Err(error)),
                None => panic!("circuit breaker ResponseFuture polled after completion"),
            };
        };
        let result = ready!(response.poll(cx)).map_err(Into::into);
        if let Some(ticket) = this.ticket.take() {
            ticket.finish(outcome_of(this.classifier, &result), *this.started);
        }
        Poll::Ready(result)
    }
}

/// The outcome of a result: a rejection by one of bulwark's own layers inside the breaker
/// (the downstream was not called) counts for nothing; anything else is the classifier's call.
pub(crate) fn outcome_of<C, T>(classifier: &C, result: &Result<T, BoxError>) -> Outcome
where
    C: Classify<T, BoxError>,
{
    if let Err(err) = result {
        match rejection(&**err) {
            None | Some(Rejection::Elapsed(_)) => {}
            Some(_) => return Outcome::Ignored,
        }
    }
    classifier.classify(result)
}
