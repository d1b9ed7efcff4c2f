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
use super::policy::{RetryPolicy, Verdict};
use crate::circuit_breaker::error::CircuitOpen;
use crate::BoxError;

pin_project! {
    /// The response future of [`Retry`](super::Retry): the current attempt, or the wait before
    /// the next one.
    pub struct ResponseFuture<S, Request, P>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<S::Future>,
        attempts: Attempts<S, Request, P>,
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
struct Attempts<S, Request, P> {
    service: S,
    request: Option<Request>,
    policy: P,
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

impl<S, Request, P> ResponseFuture<S, Request, P>
where
    S: Service<Request>,
{
    pub(crate) fn new(
        response: S::Future,
        service: S,
        request: Option<Request>,
        policy: P,
        shared: Arc<Shared>,
    ) -> Self {
        let started = shared.deadline.map(|_| Instant::now());
        ResponseFuture {
            state: State::Called { response },
            attempts: Attempts {
                service,
                request,
                policy,
                shared,
                attempt: 1,
                started,
                last_delay: Duration::ZERO,
                rng: None,
            },
        }
    }
}

impl<S, Request, P> Attempts<S, Request, P> {
    fn after<T>(&mut self, result: &Result<T, BoxError>) -> Next
    where
        P: RetryPolicy<Request, T>,
    {
        let shared = &self.shared;
        // With retries off (one attempt), or a request that cannot be sent again, results
        // pass through unchanged.
        let Some(request) = self.request.as_ref() else {
            return Next::Done;
        };
        let hint = match self.policy.verdict(request, result) {
            Verdict::Return => return Next::Done,
            Verdict::GiveUp(reason) => return Next::GiveUp(reason),
            Verdict::Retry => None,
            Verdict::RetryAfter(hint) => Some(hint),
        };
        if self.attempt >= shared.max_attempts {
            return Next::GiveUp(GaveUp::MaxAttempts);
        }
        let random = self.rng.get_or_insert_with(|| shared.rng()).next_f64();
        let backoff = shared.backoff.delay(self.attempt, self.last_delay, random);
        // The downstream's `Retry-After` is a floor: never come back sooner than asked.
        let delay = hint.map_or(backoff, |hint| hint.max(backoff));
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
        self.last_delay = backoff;
        let reason = match (result.is_err(), hint.is_some()) {
            (_, true) => "retry-after",
            (true, false) => "error",
            (false, false) => "response",
        };
        shared.retried(self.attempt + 1, delay, reason);
        Next::Wait(delay)
    }
}

impl<S, Request, P> Future for ResponseFuture<S, Request, P>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Request, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { response } => {
                    let mut result = ready!(response.poll(cx)).map_err(Into::into);
                    let attempts = this.attempts.attempt;
                    match this.attempts.after(&result) {
                        Next::Done => {
                            this.attempts.policy.finish(&mut result, attempts);
                            return Poll::Ready(result);
                        }
                        Next::GiveUp(reason) => {
                            this.attempts.shared.gave_up(attempts, reason);
                            this.attempts.policy.finish(&mut result, attempts);
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
                    // Each attempt sends a copy: the kept request is still needed to judge
                    // the attempt's result.
                    let copy = attempts
                        .request
                        .as_ref()
                        .and_then(|request| attempts.policy.replay(request));
                    let Some(mut request) = copy else {
                        // `after` retries only a request it could copy before; a policy whose
                        // copy fails now breaks that, and the call fails rather than hang.
                        return Poll::Ready(Err("retry could not copy its request".into()));
                    };
                    attempts.policy.prepare(&mut request, attempts.attempt);
                    let response = attempts.service.call(request);
                    this.state.set(State::Called { response });
                }
            }
        }
    }
}

impl<S, Request, P> fmt::Debug for ResponseFuture<S, Request, P>
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
