//! The standard stack's service: the five stages fused into one service and one future.
//!
//! Composed layer by layer, the stack would nest five response futures, move each of them
//! through the one above it, read the clock once per timeout, and take a reference count per
//! stage. Fused, a call that succeeds at once takes one reference count, reads the clock once
//! (only if the budget, the retry deadline or a timed breaker rule needs it), and arms no
//! timer; one timer serves the attempt and total deadlines, and the waits between attempts.
//! The behaviour is the
//! composition's, stage for stage: the shared state, the decisions and the events are the
//! layers' own.

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::bulkhead::error::BulkheadFull;
use crate::bulkhead::{Shared as BulkheadShared, Wait};
use crate::circuit_breaker::error::CircuitOpen;
use crate::circuit_breaker::{outcome_of, Core, Decision, Pass};
use crate::classify::{Classify, DefaultClassifier};
use crate::retry::error::GaveUp;
use crate::retry::future::{Call, Next};
use crate::retry::{RetryPolicy, Rng, Shared as RetryShared};
use crate::timeout::error::Elapsed;
use crate::BoxError;

/// What every service of one stack shares: each stage's state and settings.
///
/// Read by every call on every thread, and held by an `Arc` whose count every call changes:
/// aligned so that the count's cache line is not the one the fields are read from.
#[repr(align(128))]
pub(crate) struct Stages<C, P> {
    pub(crate) bulkhead: Option<Arc<BulkheadShared>>,
    pub(crate) total: Option<Duration>,
    pub(crate) retry: Option<Arc<RetryShared>>,
    pub(crate) policy: P,
    pub(crate) breaker: Option<Arc<Core>>,
    pub(crate) classifier: C,
    pub(crate) attempt: Option<Duration>,
    /// Whether a call needs the clock when it is made (rather than only if it is not ready at
    /// once): for the retry budget or deadline, or the breaker's slow-call rule or time window.
    pub(crate) clock_at_call: bool,
}

impl<C, P> Stages<C, P> {
    pub(crate) fn new(
        bulkhead: Option<Arc<BulkheadShared>>,
        total: Option<Duration>,
        retry: Option<(Arc<RetryShared>, P)>,
        breaker: Option<(Arc<Core>, C)>,
        defaults: (C, P),
        attempt: Option<Duration>,
    ) -> Self {
        let clock_at_call = retry.as_ref().is_some_and(|(r, _)| r.needs_clock())
            || breaker.as_ref().is_some_and(|(b, _)| b.needs_clock());
        let (retry, policy) = match retry {
            Some((shared, policy)) => (Some(shared), policy),
            None => (None, defaults.1),
        };
        let (breaker, classifier) = match breaker {
            Some((core, classifier)) => (Some(core), classifier),
            None => (None, defaults.0),
        };
        Stages {
            bulkhead,
            total,
            retry,
            policy,
            breaker,
            classifier,
            attempt,
            clock_at_call,
        }
    }
}

/// The breaker's decision for the next call of one service instance.
enum Admission {
    Admitted(Pass),
    Rejected(CircuitOpen),
}

/// The bulkhead's decision for the next call of one service instance.
enum Slot {
    /// Nothing decided yet.
    Idle,
    /// Waiting, up to `max_wait`, for a slot.
    Waiting(Wait),
    /// Holds a slot for the next call.
    Held,
    /// No slot: the next call is rejected.
    Full,
}

/// The standard stack around `S`, as [`StackLayer`](super::StackLayer) builds it: bulkhead,
/// total timeout, retry, circuit breaker and attempt timeout, in that order, in one service.
pub struct StackService<S, C = DefaultClassifier, P = DefaultClassifier> {
    inner: S,
    held: Held<C, P>,
}

/// The stages, and what one service instance holds for its next call; gives it back when
/// dropped.
struct Held<C, P> {
    stages: Arc<Stages<C, P>>,
    slot: Slot,
    admission: Option<Admission>,
}

impl<S, C, P> StackService<S, C, P> {
    pub(crate) fn new(inner: S, stages: Arc<Stages<C, P>>) -> Self {
        StackService {
            inner,
            held: Held {
                stages,
                slot: Slot::Idle,
                admission: None,
            },
        }
    }

    inner_service_accessors!();
}

impl<C, P> Held<C, P> {
    /// Gives back what this instance holds for its next call: a bulkhead slot, a probe slot.
    fn give_back(&mut self) {
        if let (Slot::Held, Some(bulkhead)) = (&self.slot, &self.stages.bulkhead) {
            bulkhead.release();
        }
        self.slot = Slot::Idle;
        if let (Some(Admission::Admitted(pass)), Some(core)) =
            (self.admission.take(), &self.stages.breaker)
        {
            core.abandon(pass);
        }
    }
}

/// Decides whether the breaker admits a call now.
fn decide(core: &Core) -> Admission {
    match core.admit(Instant::now) {
        Decision::Admit(pass) => Admission::Admitted(pass),
        Decision::Reject(open) => Admission::Rejected(open),
    }
}

impl<C, P> Drop for Held<C, P> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<S: Clone, C, P> Clone for StackService<S, C, P> {
    /// Clones the inner service and shares every stage; the clone holds no slot of its own.
    fn clone(&self) -> Self {
        StackService::new(self.inner.clone(), self.held.stages.clone())
    }
}

impl<S: fmt::Debug, C, P> fmt::Debug for StackService<S, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stages = &self.held.stages;
        f.debug_struct("StackService")
            .field("inner", &self.inner)
            .field("bulkhead", &stages.bulkhead.is_some())
            .field("total_timeout", &stages.total)
            .field("retry", &stages.retry.is_some())
            .field("circuit_breaker", &stages.breaker.is_some())
            .field("attempt_timeout", &stages.attempt)
            .finish()
    }
}

impl<S, C, P, Request> Service<Request> for StackService<S, C, P>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    P: RetryPolicy<Request, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request, C, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The bulkhead first: a call that gets no slot does nothing else.
        if let Some(bulkhead) = &self.held.stages.bulkhead {
            if let Slot::Idle = self.held.slot {
                self.held.slot = if bulkhead.try_take() {
                    Slot::Held
                } else if bulkhead.waits() {
                    Slot::Waiting(bulkhead.wait())
                } else {
                    Slot::Full
                };
            }
            if let Slot::Waiting(wait) = &mut self.held.slot {
                self.held.slot = if ready!(wait.as_mut().poll(cx)) {
                    Slot::Held
                } else {
                    Slot::Full
                };
            }
            if let Slot::Full = self.held.slot {
                // A slot may have freed since (a caller that keeps a ready service for later).
                if !bulkhead.try_take() {
                    return Poll::Ready(Ok(()));
                }
                self.held.slot = Slot::Held;
            }
        }
        // The breaker: decide, or decide again if the last decision no longer holds.
        if let Some(core) = &self.held.stages.breaker {
            let holds = match &self.held.admission {
                Some(Admission::Admitted(pass)) => core.still_admits(*pass),
                _ => false,
            };
            if !holds {
                if let Some(Admission::Admitted(pass)) = self.held.admission.take() {
                    core.abandon(pass);
                }
                self.held.admission = Some(decide(core));
            }
            if let Some(Admission::Rejected(_)) = self.held.admission {
                return Poll::Ready(Ok(()));
            }
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => {
                // The inner service is gone: do not keep its slots.
                self.held.give_back();
                Poll::Ready(Err(err.into()))
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let stages = self.held.stages.clone();
        let holds_slot = match &stages.bulkhead {
            None => false,
            Some(bulkhead) => match mem::replace(&mut self.held.slot, Slot::Idle) {
                Slot::Held => true,
                // Not admitted at `poll_ready`, so the inner service was not made ready.
                Slot::Full => false,
                // Called without a ready `poll_ready`: admit only if a slot is free now.
                Slot::Idle | Slot::Waiting(_) => bulkhead.try_take(),
            },
        };
        if stages.bulkhead.is_some() && !holds_slot {
            // Give back a breaker decision made for this call.
            if let (Some(Admission::Admitted(pass)), Some(core)) =
                (self.held.admission.take(), &stages.breaker)
            {
                core.abandon(pass);
            }
            if let Some(bulkhead) = &stages.bulkhead {
                let full = bulkhead.reject();
                return ResponseFuture::rejected(stages, full);
            }
        }

        let now = stages.clock_at_call.then(Instant::now);
        let mut retry = Retrying {
            service: None,
            request: None,
            attempt: 1,
            state: None,
        };
        if let Some(shared) = &stages.retry {
            if let Some(now) = now {
                shared.deposit_at(now);
            }
            if shared.max_attempts > 1 {
                retry.request = stages.policy.replay(&request);
                // The readied instance makes the first attempt; a clone makes the retries.
                retry.service = retry.request.as_ref().map(|_| self.inner.clone());
            }
        }

        let admission = match &stages.breaker {
            None => None,
            Some(core) => Some(match self.held.admission.take() {
                Some(Admission::Admitted(pass)) if !core.still_admits(pass) => {
                    core.abandon(pass);
                    decide(core)
                }
                Some(admission) => admission,
                None => decide(core),
            }),
        };
        let (response, pass, open) = match admission {
            None => (Some(self.inner.call(request)), None, None),
            Some(Admission::Admitted(pass)) => (Some(self.inner.call(request)), Some(pass), None),
            Some(Admission::Rejected(open)) => {
                if let Some(core) = &stages.breaker {
                    core.rejected(&open);
                }
                (None, None, Some(Box::new(open) as BoxError))
            }
        };
        ResponseFuture {
            response,
            timer: None,
            state: State {
                stages,
                holds_slot,
                pass,
                open,
                call_started: now,
                attempt_started: now,
                retry,
            },
        }
    }
}

pin_project! {
    /// The response future of [`StackService`].
    ///
    /// Holds the call's bulkhead slot until it completes or is dropped; makes the attempts
    /// and the waits between them; bounds them with one timer.
    pub struct ResponseFuture<S, Request, C, P>
    where
        S: Service<Request>,
    {
        // The attempt under way; `None` between attempts or when the breaker rejected it.
        #[pin]
        response: Option<S::Future>,
        // The one timer: the earlier of the total and attempt deadlines during an attempt,
        // the total deadline between attempts. Armed only when something is pending.
        #[pin]
        timer: Option<Sleep>,
        state: State<S, Request, C, P>,
    }

    impl<S, Request, C, P> PinnedDrop for ResponseFuture<S, Request, C, P>
    where
        S: Service<Request>,
    {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before completing: the attempt counts for nothing, a probe's slot and
            // the bulkhead slot are given back.
            this.project().state.finish();
        }
    }
}

/// What the future keeps besides the attempt and the timer.
struct State<S, Request, C, P>
where
    S: Service<Request>,
{
    stages: Arc<Stages<C, P>>,
    holds_slot: bool,
    /// The breaker's pass for the attempt under way.
    pass: Option<Pass>,
    /// A rejection standing for the attempt's result: the breaker's, judged like any result;
    /// or the bulkhead's, with nothing to retry.
    open: Option<BoxError>,
    call_started: Option<Instant>,
    attempt_started: Option<Instant>,
    retry: Retrying<S, Request, S::Response>,
}

/// The retry stage's part of a call.
struct Retrying<S, Request, T> {
    /// The instance that makes the retries: `None` when the request cannot be sent again.
    service: Option<S>,
    request: Option<Request>,
    attempt: u32,
    /// Made at the first retry, so that a call that succeeds at once carries none of it.
    state: Option<Box<Backoff<T>>>,
}

/// The state of a call being retried.
struct Backoff<T> {
    /// The end of the wait before the next attempt.
    until: Instant,
    /// Whether the wait is over and the breaker and inner service are being readied.
    readying: bool,
    /// The failed result, returned if no further attempt can be made after all.
    last: Option<Result<T, BoxError>>,
    last_delay: Duration,
    next: (Duration, &'static str),
    rng: Rng,
}

impl<S, Request, C, P> ResponseFuture<S, Request, C, P>
where
    S: Service<Request>,
{
    /// The future of a call the bulkhead rejected: no attempt, nothing to retry.
    fn rejected(stages: Arc<Stages<C, P>>, full: BulkheadFull) -> Self {
        ResponseFuture {
            response: None,
            timer: None,
            state: State {
                stages,
                holds_slot: false,
                pass: None,
                open: Some(Box::new(full)),
                call_started: None,
                attempt_started: None,
                retry: Retrying {
                    service: None,
                    request: None,
                    attempt: 1,
                    state: None,
                },
            },
        }
    }
}

impl<S, Request, C, P> State<S, Request, C, P>
where
    S: Service<Request>,
{
    /// Gives back what the call holds, when it ends: a breaker pass not recorded, the
    /// bulkhead slot.
    fn finish(&mut self) {
        if let (Some(pass), Some(core)) = (self.pass.take(), &self.stages.breaker) {
            core.abandon(pass);
        }
        self.release_slot();
    }

    fn release_slot(&mut self) {
        if mem::take(&mut self.holds_slot) {
            if let Some(bulkhead) = &self.stages.bulkhead {
                bulkhead.release();
            }
        }
    }

    /// When the call started, read now if it was not at the call.
    fn call_started(&mut self, now: &mut Option<Instant>) -> Instant {
        *self
            .call_started
            .get_or_insert_with(|| *now.get_or_insert_with(Instant::now))
    }

    fn total_deadline(&mut self, now: &mut Option<Instant>) -> Option<Instant> {
        let total = self.stages.total?;
        let started = self.call_started(now);
        Some(
            started
                .checked_add(total)
                .unwrap_or_else(|| far_future(started)),
        )
    }

    fn attempt_deadline(&mut self, now: &mut Option<Instant>) -> Option<Instant> {
        let attempt = self.stages.attempt?;
        let started = *self
            .attempt_started
            .get_or_insert_with(|| *now.get_or_insert_with(Instant::now));
        Some(
            started
                .checked_add(attempt)
                .unwrap_or_else(|| far_future(started)),
        )
    }

    fn retry_call(&self) -> Option<Call<'_, P>> {
        let shared = self.stages.retry.as_deref()?;
        Some(Call {
            shared,
            policy: &self.stages.policy,
            attempt: self.retry.attempt,
            started: self.call_started,
        })
    }

    /// The total timeout's error.
    fn total_elapsed(&mut self) -> BoxError {
        let total = self.stages.total.unwrap_or_default();
        tracing::debug!(target: "bulwark::timeout", after = ?total, "request timed out");
        Box::new(Elapsed::new(total))
    }
}

/// A deadline that never comes, for durations too long to add to `now`.
fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(86_400 * 365 * 30)
}

/// Points `timer` at `at`, reusing its registration.
fn arm(mut timer: Pin<&mut Option<Sleep>>, at: Instant) {
    match timer.as_mut().as_pin_mut() {
        Some(sleep) if sleep.deadline() == at => {}
        Some(sleep) => sleep.reset(at),
        None => timer.set(Some(tokio::time::sleep_until(at))),
    }
}

impl<S, Request, C, P> Future for ResponseFuture<S, Request, C, P>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    P: RetryPolicy<Request, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let state = &mut *this.state;
        loop {
            let waiting = state.retry.state.as_ref().is_some_and(|b| b.last.is_some());
            if !waiting {
                // An attempt: under way, or rejected by the breaker.
                let result = match this.response.as_mut().as_pin_mut() {
                    Some(response) => match response.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending => {
                            let mut now = None;
                            let total = state.total_deadline(&mut now);
                            let attempt = state.attempt_deadline(&mut now);
                            let at = match (total, attempt) {
                                (Some(t), Some(a)) => t.min(a),
                                (Some(d), None) | (None, Some(d)) => d,
                                (None, None) => return Poll::Pending,
                            };
                            arm(this.timer.as_mut(), at);
                            let Some(timer) = this.timer.as_mut().as_pin_mut() else {
                                return Poll::Pending;
                            };
                            ready!(timer.poll(cx));
                            // Cancel the attempt now, not when this future is dropped.
                            this.response.set(None);
                            if total.is_some_and(|t| t <= at) {
                                // The total timeout: the call ends here, and the attempt
                                // counts for nothing (as if the composition's inner
                                // futures were dropped).
                                state.finish();
                                return Poll::Ready(Err(state.total_elapsed()));
                            }
                            let after = state.stages.attempt.unwrap_or_default();
                            tracing::debug!(
                                target: "bulwark::timeout",
                                after = ?after,
                                "request timed out"
                            );
                            Err(Box::new(Elapsed::new(after)) as BoxError)
                        }
                    },
                    None => match state.open.take() {
                        Some(rejection) => Err(rejection),
                        None => panic!("stack ResponseFuture polled after completion"),
                    },
                };
                this.response.set(None);
                let began = state.attempt_started.take();

                // The breaker counts the attempt.
                if let (Some(pass), Some(core)) = (state.pass.take(), &state.stages.breaker) {
                    let outcome = outcome_of(&state.stages.classifier, &result);
                    let (elapsed, now) = if core.needs_clock() {
                        let now = Instant::now();
                        let began = began.unwrap_or(now);
                        (Some(now.saturating_duration_since(began)), Some(now))
                    } else {
                        (None, None)
                    };
                    core.complete(pass, outcome, elapsed, now);
                }

                // Retry judges it.
                match judge(state, result) {
                    Ok(done) => {
                        state.finish();
                        return Poll::Ready(done);
                    }
                    Err(()) => continue,
                }
            }

            // Between attempts: the backoff, then readiness (no later than the retry
            // deadline), all within the total timeout, on the one timer.
            let mut now = None;
            let total = state.total_deadline(&mut now);
            let Some(backoff) = state.retry.state.as_mut() else {
                state.finish();
                return Poll::Ready(Err("stack retry state lost".into()));
            };
            let wake = if backoff.readying {
                match (state.call_started, state.stages.retry.as_ref()) {
                    (Some(started), Some(shared)) => {
                        shared.deadline.and_then(|d| started.checked_add(d))
                    }
                    _ => None,
                }
            } else {
                Some(backoff.until)
            };
            let at = match (total, wake) {
                (Some(t), Some(w)) => Some(t.min(w)),
                (t, w) => t.or(w),
            };
            if let Some(at) = at {
                arm(this.timer.as_mut(), at);
                let fired = match this.timer.as_mut().as_pin_mut() {
                    Some(timer) => timer.poll(cx).is_ready(),
                    None => false,
                };
                if fired {
                    if total.is_some_and(|t| t <= at) {
                        state.finish();
                        return Poll::Ready(Err(state.total_elapsed()));
                    }
                    if !backoff.readying {
                        // The backoff is over: ready the next attempt.
                        backoff.readying = true;
                        continue;
                    }
                    // The retry deadline passed while waiting for readiness.
                    let done = give_up_waiting(state, GaveUp::Deadline);
                    state.finish();
                    return Poll::Ready(done);
                }
            }
            if !backoff.readying {
                return Poll::Pending;
            }
            match ready_next(state, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(done)) => {
                    state.finish();
                    return Poll::Ready(done);
                }
                Poll::Ready(Ok(Some(response))) => this.response.set(Some(response)),
                // The breaker rejected the retry: judged as the attempt's result.
                Poll::Ready(Ok(None)) => {}
            }
        }
    }
}

/// Ends the retries while waiting between attempts, with the kept result.
fn give_up_waiting<S, Request, C, P>(
    state: &mut State<S, Request, C, P>,
    reason: GaveUp,
) -> Result<S::Response, BoxError>
where
    S: Service<Request>,
    P: RetryPolicy<Request, S::Response>,
{
    let last = state
        .retry
        .state
        .as_mut()
        .and_then(|b| b.last.take())
        .unwrap_or_else(|| Err("retry deadline passed".into()));
    match state.retry_call() {
        Some(call) => call.give_up(last, reason),
        None => last,
    }
}

/// Judges an attempt's `result`: `Ok` with the call's final result, or `Err(())` when a
/// retry is to be made (the backoff state is then set).
fn judge<S, Request, C, P>(
    state: &mut State<S, Request, C, P>,
    mut result: Result<S::Response, BoxError>,
) -> Result<Result<S::Response, BoxError>, ()>
where
    S: Service<Request>,
    P: RetryPolicy<Request, S::Response>,
{
    let Some(call) = state.retry_call() else {
        return Ok(result);
    };
    let (Some(request), Some(_)) = (state.retry.request.as_ref(), state.retry.service.as_ref())
    else {
        // Retries off, or a request that cannot be sent again: the result as it is.
        call.policy.finish(&mut result, call.attempt);
        return Ok(result);
    };
    let (mut rng, last_delay) = match &state.retry.state {
        Some(b) => (Some(b.rng.clone()), b.last_delay),
        None => (None, Duration::ZERO),
    };
    match call.after(request, &result, &mut rng, last_delay) {
        Next::Done => {
            call.policy.finish(&mut result, call.attempt);
            Ok(result)
        }
        Next::GiveUp(reason) => Ok(call.give_up(result, reason)),
        Next::Wait {
            delay,
            backoff,
            reason,
        } => {
            let rng = rng.unwrap_or_else(|| call.shared.rng());
            let fresh = Backoff {
                until: Instant::now() + delay,
                readying: false,
                last: Some(result),
                last_delay: backoff,
                next: (delay, reason),
                rng,
            };
            match &mut state.retry.state {
                // Later retries reuse the box made by the first.
                Some(b) => **b = fresh,
                None => state.retry.state = Some(Box::new(fresh)),
            }
            Err(())
        }
    }
}

/// Readies the breaker and the inner service for the next attempt and makes it:
/// `Ok(Some(future))` for an attempt under way, `Ok(None)` when the breaker rejected it (its
/// error is in `state.open`), `Err` with the call's final result.
#[allow(clippy::type_complexity)]
fn ready_next<S, Request, C, P>(
    state: &mut State<S, Request, C, P>,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<S::Future>, Result<S::Response, BoxError>>>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Request, S::Response>,
{
    let stages = state.stages.clone();
    let Some(shared) = stages.retry.as_deref() else {
        return Poll::Ready(Err(Err("stack retry state without a retry stage".into())));
    };
    let call = Call {
        shared,
        policy: &stages.policy,
        attempt: state.retry.attempt,
        started: state.call_started,
    };
    // The breaker first, as the composition's breaker decides in its `poll_ready`.
    if let Some(core) = &stages.breaker {
        let holds = state.pass.is_some_and(|pass| core.still_admits(pass));
        if !holds {
            if let Some(pass) = state.pass.take() {
                core.abandon(pass);
            }
            match decide(core) {
                Admission::Admitted(pass) => state.pass = Some(pass),
                Admission::Rejected(open) => {
                    core.rejected(&open);
                    return start_attempt(state, &call, None, Some(Box::new(open)));
                }
            }
        }
    }
    let Some(service) = state.retry.service.as_mut() else {
        return Poll::Ready(Err(Err("retry lost its service".into())));
    };
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(err)) => return Poll::Ready(Err(Err(err.into()))),
        Poll::Pending => return Poll::Pending,
    }
    if call.past_deadline(Duration::ZERO) {
        return Poll::Ready(Err(give_up_waiting(state, GaveUp::Deadline)));
    }
    let copy = state
        .retry
        .request
        .as_ref()
        .and_then(|request| stages.policy.replay(request));
    let Some(request) = copy else {
        return Poll::Ready(Err(Err("retry could not copy its request".into())));
    };
    start_attempt(state, &call, Some(request), None)
}

/// Starts attempt `call.attempt + 1`: with `request` on the readied instance, or, when the
/// breaker rejected it, with `open` as its result.
#[allow(clippy::type_complexity)]
fn start_attempt<S, Request, C, P>(
    state: &mut State<S, Request, C, P>,
    call: &Call<'_, P>,
    request: Option<Request>,
    open: Option<BoxError>,
) -> Poll<Result<Option<S::Future>, Result<S::Response, BoxError>>>
where
    S: Service<Request>,
    P: RetryPolicy<Request, S::Response>,
{
    state.retry.attempt += 1;
    let attempt = state.retry.attempt;
    let Some(backoff) = state.retry.state.as_mut() else {
        return Poll::Ready(Err(Err("stack retry state lost".into())));
    };
    let (delay, reason) = backoff.next;
    call.shared.retried(attempt, delay, reason);
    backoff.last = None;
    backoff.readying = false;
    let Some(mut request) = request else {
        state.open = open;
        return Poll::Ready(Ok(None));
    };
    call.policy.prepare(&mut request, attempt);
    let Some(service) = state.retry.service.as_mut() else {
        return Poll::Ready(Err(Err("retry lost its service".into())));
    };
    let response = service.call(request);
    state.attempt_started = Some(Instant::now());
    Poll::Ready(Ok(Some(response)))
}
