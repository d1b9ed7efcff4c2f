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
        state: State<S::Future, S::Response>,
        attempts: Attempts<S, Request, P>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T> {
        Called {
            #[pin]
            response: F,
        },
        // The backoff before the next attempt. `last` is the failed result, returned if no
        // further attempt can be made after all.
        Waiting {
            #[pin]
            sleep: Sleep,
            last: Option<Result<T, BoxError>>,
        },
        // Waiting for the inner service to be ready for the next attempt, no later than the
        // deadline (if one is set).
        Readying {
            #[pin]
            deadline: Option<Sleep>,
            last: Option<Result<T, BoxError>>,
        },
    }
}

/// What the future keeps between attempts.
struct Attempts<S, Request, P> {
    /// The instance that makes the retries: `None` when the request cannot be sent again.
    service: Option<S>,
    request: Option<Request>,
    policy: P,
    shared: Arc<Shared>,
    attempt: u32,
    started: Option<Instant>,
    last_delay: Duration,
    /// The wait and the reason of the retry under way, reported when it is made.
    next: (Duration, &'static str),
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
        service: Option<S>,
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
                next: (Duration::ZERO, ""),
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
        let (Some(request), Some(_)) = (self.request.as_ref(), self.service.as_ref()) else {
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
        if self.past_deadline(delay) {
            return Next::GiveUp(GaveUp::Deadline);
        }
        if let Some(budget) = &shared.budget {
            if !budget.try_withdraw(Instant::now()) {
                return Next::GiveUp(GaveUp::Budget);
            }
        }
        self.last_delay = backoff;
        self.next = (
            delay,
            match (result.is_err(), hint.is_some()) {
                (_, true) => "retry-after",
                (true, false) => "error",
                (false, false) => "response",
            },
        );
        Next::Wait(delay)
    }

    /// Whether an attempt starting `from_now` would start after the deadline.
    fn past_deadline(&self, from_now: Duration) -> bool {
        match (self.shared.deadline, self.started) {
            (Some(deadline), Some(started)) => {
                started.elapsed().saturating_add(from_now) > deadline
            }
            _ => false,
        }
    }

    /// A timer for the deadline, to stop waiting for readiness when it passes.
    fn deadline_timer(&self) -> Option<Sleep> {
        let at = self.started?.checked_add(self.shared.deadline?)?;
        Some(tokio::time::sleep_until(at))
    }

    /// Returns `result` as the final one: counted, finished by the policy, an error wrapped in
    /// [`RetriesExhausted`].
    fn give_up<T>(&self, mut result: Result<T, BoxError>, reason: GaveUp) -> Result<T, BoxError>
    where
        P: RetryPolicy<Request, T>,
    {
        let attempts = self.attempt;
        self.shared.gave_up(attempts, reason);
        self.policy.finish(&mut result, attempts);
        result.map_err(|last| Box::new(RetriesExhausted::new(attempts, reason, last)) as BoxError)
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
                    match this.attempts.after(&result) {
                        Next::Done => {
                            this.attempts
                                .policy
                                .finish(&mut result, this.attempts.attempt);
                            return Poll::Ready(result);
                        }
                        Next::GiveUp(reason) => {
                            return Poll::Ready(this.attempts.give_up(result, reason));
                        }
                        Next::Wait(delay) => this.state.set(State::Waiting {
                            sleep: tokio::time::sleep(delay),
                            last: Some(result),
                        }),
                    }
                }
                StateProj::Waiting { sleep, last } => {
                    ready!(sleep.poll(cx));
                    let last = last.take();
                    let deadline = this.attempts.deadline_timer();
                    this.state.set(State::Readying { deadline, last });
                }
                StateProj::Readying { deadline, last } => {
                    let attempts = &mut *this.attempts;
                    let Some(service) = attempts.service.as_mut() else {
                        // `after` retries only with a service to retry on.
                        return Poll::Ready(Err("retry lost its service".into()));
                    };
                    // Readiness is polled before every attempt, on the instance that makes it,
                    // and waited for no later than the deadline.
                    let ready = service.poll_ready(cx);
                    match ready {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
                        Poll::Pending => {
                            if let Some(deadline) = deadline.as_pin_mut() {
                                if deadline.poll(cx).is_ready() {
                                    let last = last
                                        .take()
                                        .unwrap_or_else(|| Err("retry deadline passed".into()));
                                    return Poll::Ready(attempts.give_up(last, GaveUp::Deadline));
                                }
                            }
                            return Poll::Pending;
                        }
                    }
                    if attempts.past_deadline(Duration::ZERO) {
                        let last = last
                            .take()
                            .unwrap_or_else(|| Err("retry deadline passed".into()));
                        return Poll::Ready(attempts.give_up(last, GaveUp::Deadline));
                    }
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
                    attempts.attempt += 1;
                    attempts.policy.prepare(&mut request, attempts.attempt);
                    let (delay, reason) = attempts.next;
                    attempts.shared.retried(attempts.attempt, delay, reason);
                    let Some(service) = attempts.service.as_mut() else {
                        return Poll::Ready(Err("retry lost its service".into()));
                    };
                    let response = service.call(request);
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
