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
    pass: Pass,
    armed: bool,
}

impl Ticket {
    pub(crate) fn new(core: Arc<Core>, pass: Pass) -> Self {
        Ticket {
            core,
            pass,
            armed: true,
        }
    }

    pub(crate) fn pass(&self) -> Pass {
        self.pass
    }

    #[inline]
    fn finish(mut self, outcome: Outcome, started: Option<Instant>) {
        self.armed = false;
        let (elapsed, now) = match started {
            Some(started) => {
                let now = Instant::now();
                (Some(now.saturating_duration_since(started)), Some(now))
            }
            None => (None, None),
        };
        self.core.complete(self.pass, outcome, elapsed, now);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.armed {
            // Dropped before completing: the client went away. Counts for nothing, but a
            // probe's slot is given back.
            self.core.abandon(self.pass);
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
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, C> {
        Called {
            #[pin]
            response: F,
            ticket: Option<Ticket>,
            classifier: C,
            started: Option<Instant>,
        },
        Rejected {
            error: Option<CircuitOpen>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(
        response: F,
        ticket: Ticket,
        classifier: C,
        started: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                response,
                ticket: Some(ticket),
                classifier,
                started,
            },
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error: Some(error) },
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                response,
                ticket,
                classifier,
                started,
            } => {
                let result = ready!(response.poll(cx)).map_err(Into::into);
                if let Some(ticket) = ticket.take() {
                    ticket.finish(outcome_of(classifier, &result), *started);
                }
                Poll::Ready(result)
            }
            KindProj::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(Box::new(error))),
                None => panic!("circuit breaker ResponseFuture polled after completion"),
            },
        }
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
