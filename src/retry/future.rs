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
    ///
    /// Everything a retry needs (its timers, the failed result, the jitter's state) lives in a
    /// box made at the first retry, so the future of a call that succeeds at once stays small:
    /// it is moved through every layer above it.
    pub struct ResponseFuture<S, Request, P>
    where
        S: Service<Request>,
    {
        // The attempt under way; `None` while waiting to retry.
        #[pin]
        response: Option<S::Future>,
        attempts: Attempts<S, Request, P>,
        retry: Option<Pin<Box<RetryState<S::Response>>>>,
    }
}

pin_project! {
    /// The state of a call being retried.
    struct RetryState<T> {
        // The backoff before the next attempt.
        #[pin]
        sleep: Sleep,
        // The deadline, while waiting for the inner service to be ready.
        #[pin]
        deadline: Option<Sleep>,
        // The failed result, returned if no further attempt can be made after all.
        last: Option<Result<T, BoxError>>,
        // Whether the backoff is over and readiness is being waited for.
        readying: bool,
        last_delay: Duration,
        next: (Duration, &'static str),
        rng: Rng,
    }
}

/// What the future keeps from the start.
struct Attempts<S, Request, P> {
    /// The instance that makes the retries: `None` when the request cannot be sent again.
    service: Option<S>,
    request: Option<Request>,
    policy: P,
    shared: Arc<Shared>,
    attempt: u32,
    started: Option<Instant>,
}

/// What to do after an attempt.
pub(crate) enum Next {
    Done,
    Wait {
        delay: Duration,
        backoff: Duration,
        reason: &'static str,
    },
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
            response: Some(response),
            attempts: Attempts {
                service,
                request,
                policy,
                shared,
                attempt: 1,
                started,
            },
            retry: None,
        }
    }
}

impl<S, Request, P> Attempts<S, Request, P> {
    /// Decides what follows `result`. `rng` and `last_delay` are the retry state's, if a retry
    /// happened already.
    #[inline]
    fn after<T>(
        &self,
        result: &Result<T, BoxError>,
        rng: &mut Option<Rng>,
        last_delay: Duration,
    ) -> Next
    where
        P: RetryPolicy<Request, T>,
    {
        // With retries off (one attempt), or a request that cannot be sent again, results
        // pass through unchanged.
        let (Some(request), Some(_)) = (self.request.as_ref(), self.service.as_ref()) else {
            return Next::Done;
        };
        self.call().after(request, result, rng, last_delay)
    }

    fn call(&self) -> Call<'_, P> {
        Call {
            shared: &self.shared,
            policy: &self.policy,
            attempt: self.attempt,
            started: self.started,
        }
    }

    fn past_deadline(&self, from_now: Duration) -> bool {
        self.call().past_deadline(from_now)
    }

    fn deadline_timer(&self) -> Option<Sleep> {
        self.call().deadline_timer()
    }

    fn give_up<T>(&self, result: Result<T, BoxError>, reason: GaveUp) -> Result<T, BoxError>
    where
        P: RetryPolicy<Request, T>,
    {
        self.call().give_up(result, reason)
    }
}

/// One call's retry decisions, over state that the retry future and the standard stack's
/// future each keep in their own way.
pub(crate) struct Call<'a, P> {
    pub(crate) shared: &'a Shared,
    pub(crate) policy: &'a P,
    /// The attempt just made (1 for the first).
    pub(crate) attempt: u32,
    /// When the call started, if the retry stage has a deadline.
    pub(crate) started: Option<Instant>,
}

impl<P> Call<'_, P> {
    /// Decides what follows `result` of attempt `self.attempt` for `request`. `rng` and
    /// `last_delay` are the retry state's, if a retry happened already.
    #[inline]
    pub(crate) fn after<Request, T>(
        &self,
        request: &Request,
        result: &Result<T, BoxError>,
        rng: &mut Option<Rng>,
        last_delay: Duration,
    ) -> Next
    where
        P: RetryPolicy<Request, T>,
    {
        let shared = self.shared;
        let hint = match self.policy.verdict(request, result) {
            Verdict::Return => return Next::Done,
            Verdict::GiveUp(reason) => return Next::GiveUp(reason),
            Verdict::Retry => None,
            Verdict::RetryAfter(hint) => Some(hint),
        };
        if self.attempt >= shared.max_attempts {
            return Next::GiveUp(GaveUp::MaxAttempts);
        }
        let random = rng.get_or_insert_with(|| shared.rng()).next_f64();
        let backoff = shared.backoff.delay(self.attempt, last_delay, random);
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
        let reason = match (result.is_err(), hint.is_some()) {
            (_, true) => "retry-after",
            (true, false) => "error",
            (false, false) => "response",
        };
        Next::Wait {
            delay,
            backoff,
            reason,
        }
    }

    /// Whether an attempt starting `from_now` would start after the deadline.
    pub(crate) fn past_deadline(&self, from_now: Duration) -> bool {
        match (self.shared.deadline, self.started) {
            (Some(deadline), Some(started)) => {
                started.elapsed().saturating_add(from_now) > deadline
            }
            _ => false,
        }
    }

    /// A timer for the deadline, to stop waiting for readiness when it passes.
    pub(crate) fn deadline_timer(&self) -> Option<Sleep> {
        let at = self.started?.checked_add(self.shared.deadline?)?;
        Some(tokio::time::sleep_until(at))
    }

    /// Returns `result` as the final one: counted, finished by the policy, an error wrapped in
    /// [`RetriesExhausted`].
    pub(crate) fn give_up<Request, T>(
        &self,
        mut result: Result<T, BoxError>,
        reason: GaveUp,
    ) -> Result<T, BoxError>
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
            // The attempt under way.
            if let Some(response) = this.response.as_mut().as_pin_mut() {
                let mut result = ready!(response.poll(cx)).map_err(Into::into);
                this.response.set(None);
                let attempts = &*this.attempts;
                let (mut rng, last_delay) = match this.retry.as_mut() {
                    Some(state) => (Some(state.rng.clone()), state.last_delay),
                    None => (None, Duration::ZERO),
                };
                match attempts.after(&result, &mut rng, last_delay) {
                    Next::Done => {
                        attempts.policy.finish(&mut result, attempts.attempt);
                        return Poll::Ready(result);
                    }
                    Next::GiveUp(reason) => return Poll::Ready(attempts.give_up(result, reason)),
                    Next::Wait {
                        delay,
                        backoff,
                        reason,
                    } => {
                        let rng = rng.unwrap_or_else(|| attempts.shared.rng());
                        let fresh = RetryState {
                            sleep: tokio::time::sleep(delay),
                            deadline: None,
                            last: Some(result),
                            readying: false,
                            last_delay: backoff,
                            next: (delay, reason),
                            rng,
                        };
                        match this.retry.as_mut() {
                            // Later retries reuse the box made by the first.
                            Some(state) => state.set(fresh),
                            None => *this.retry = Some(Box::pin(fresh)),
                        }
                    }
                }
                continue;
            }

            // Waiting to retry.
            let Some(state) = this.retry.as_mut() else {
                // Unreachable: without an attempt under way there is always a retry state.
                return Poll::Ready(Err("retry future polled after completion".into()));
            };
            let mut state = state.as_mut().project();
            if !*state.readying {
                ready!(state.sleep.as_mut().poll(cx));
                *state.readying = true;
                state.deadline.set(this.attempts.deadline_timer());
            }
            let attempts = &mut *this.attempts;
            let Some(service) = attempts.service.as_mut() else {
                // `after` retries only with a service to retry on.
                return Poll::Ready(Err("retry lost its service".into()));
            };
            // Readiness is polled before every attempt, on the instance that makes it, and
            // waited for no later than the deadline.
            match service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
                Poll::Pending => {
                    if let Some(deadline) = state.deadline.as_mut().as_pin_mut() {
                        if deadline.poll(cx).is_ready() {
                            let last = state.last.take();
                            let last = last.unwrap_or_else(|| Err("retry deadline passed".into()));
                            return Poll::Ready(attempts.give_up(last, GaveUp::Deadline));
                        }
                    }
                    return Poll::Pending;
                }
            }
            if attempts.past_deadline(Duration::ZERO) {
                let last = state.last.take();
                let last = last.unwrap_or_else(|| Err("retry deadline passed".into()));
                return Poll::Ready(attempts.give_up(last, GaveUp::Deadline));
            }
            // Each attempt sends a copy: the kept request is still needed to judge the
            // attempt's result.
            let copy = attempts
                .request
                .as_ref()
                .and_then(|request| attempts.policy.replay(request));
            let Some(mut request) = copy else {
                // `after` retries only a request it could copy before; a policy whose copy
                // fails now breaks that, and the call fails rather than hang.
                return Poll::Ready(Err("retry could not copy its request".into()));
            };
            attempts.attempt += 1;
            attempts.policy.prepare(&mut request, attempts.attempt);
            let (delay, reason) = *state.next;
            attempts.shared.retried(attempts.attempt, delay, reason);
            *state.last = None;
            state.deadline.set(None);
            *state.readying = false;
            let Some(service) = attempts.service.as_mut() else {
                return Poll::Ready(Err("retry lost its service".into()));
            };
            this.response.set(Some(service.call(request)));
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
