//! The response future of [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::backoff::Rng;
use super::error::{GaveUp, RetriesExhausted};
use super::layer::Shared;
use crate::circuit_breaker::error::CircuitOpen;
use crate::classify::Classify;
use crate::BoxError;

pin_project! {
    /// The response future of [`Retry`](super::Retry): the current attempt, or the wait before
    /// the next one.
    pub struct ResponseFuture<S, Request, C>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<S::Future>,
        attempts: Attempts<S, Request, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            response: F,
        },
        Waiting {
            #[pin]
            sleep: Sleep,
        },
        Readying,
    }
}

/// What the future keeps between attempts.
struct Attempts<S, Request, C> {
    service: S,
    request: Option<Request>,
    classifier: C,
    shared: Arc<Shared>,
    attempt: u32,
    started: Option<Instant>,
    last_delay: Duration,
    rng: Option<Rng>,
}

/// What to do after an attempt.
enum Next {
    Done,
    Wait(Duration),
    GiveUp(GaveUp),
}

impl<S, Request, C> ResponseFuture<S, Request, C>
where
    S: Service<Request>,
{
    pub(crate) fn new(
        response: S::Future,
        service: S,
        request: Option<Request>,
        classifier: C,
        shared: Arc<Shared>,
    ) -> Self {
        let started = shared.deadline.map(|_| Instant::now());
        ResponseFuture {
            state: State::Called { response },
            attempts: Attempts {
                service,
                request,
                classifier,
                shared,
                attempt: 1,
                started,
                last_delay: Duration::ZERO,
                rng: None,
            },
        }
    }
}

impl<S, Request, C> Attempts<S, Request, C> {
    fn after<T>(&mut self, result: &Result<T, BoxError>) -> Next
    where
        C: Classify<T, BoxError>,
    {
        let shared = &self.shared;
        // With retries off (one attempt), results pass through unchanged.
        if !self.classifier.classify(result).is_failure() || shared.max_attempts == 1 {
            return Next::Done;
        }
        if self.attempt >= shared.max_attempts || self.request.is_none() {
            return Next::GiveUp(GaveUp::MaxAttempts);
        }
        let random = self.rng.get_or_insert_with(|| shared.rng()).next_f64();
        let delay = shared.backoff.delay(self.attempt, self.last_delay, random);
        if let Err(err) = result {
            if let Some(open) = crate::error::find::<CircuitOpen>(&**err) {
                // Waiting out the backoff is pointless if the breaker rejects until later.
                match open.retry_after() {
                    Some(after) if after <= delay => {}
                    _ => return Next::GiveUp(GaveUp::CircuitOpen),
                }
            }
        }
        if let (Some(deadline), Some(started)) = (shared.deadline, self.started) {
            if started.elapsed() + delay > deadline {
                return Next::GiveUp(GaveUp::Deadline);
            }
        }
        if let Some(budget) = &shared.budget {
            if !budget.try_withdraw(Instant::now()) {
                return Next::GiveUp(GaveUp::Budget);
            }
        }
        self.last_delay = delay;
        shared.retried(self.attempt + 1, delay);
        Next::Wait(delay)
    }
}

impl<S, Request, C> Future for ResponseFuture<S, Request, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    Request: Clone,
    C: Classify<S::Response, BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { response } => {
                    let result = ready!(response.poll(cx)).map_err(Into::into);
                    match this.attempts.after(&result) {
                        Next::Done => return Poll::Ready(result),
                        Next::GiveUp(reason) => {
                            let attempts = this.attempts.attempt;
                            this.attempts.shared.gave_up(attempts, reason);
                            return Poll::Ready(result.map_err(|last| {
                                Box::new(RetriesExhausted::new(attempts, reason, last)) as BoxError
                            }));
                        }
                        Next::Wait(delay) => this.state.set(State::Waiting {
                            sleep: tokio::time::sleep(delay),
                        }),
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let attempts = &mut *this.attempts;
                    // Readiness is polled before every attempt, on the instance that makes it.
                    if let Err(err) = ready!(attempts.service.poll_ready(cx)) {
                        return Poll::Ready(Err(err.into()));
                    }
                    attempts.attempt += 1;
                    // The last allowed attempt takes the request; earlier ones take a copy.
                    let request = if attempts.attempt >= attempts.shared.max_attempts {
                        attempts.request.take()
                    } else {
                        attempts.request.clone()
                    };
                    let Some(request) = request else {
                        // Unreachable: `after` retries only while a request is kept.
                        return Poll::Ready(Err("retry lost its request".into()));
                    };
                    let response = attempts.service.call(request);
                    this.state.set(State::Called { response });
                }
            }
        }
    }
}

impl<S, Request, C> fmt::Debug for ResponseFuture<S, Request, C>
where
    S: Service<Request>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("retry", &self.attempts.shared.name)
            .field("attempt", &self.attempts.attempt)
            .finish()
    }
}
