//! The order saga: create the order, reserve stock, charge, confirm; on a failure, compensate
//! in reverse (refund, release, cancel). A compensation whose service is down is kept and
//! retried in the background until it succeeds.
//!
//! Every step that changes a downstream is safe to send twice: its `Idempotency-Key` is
//! derived from the saga id, which is unique across restarts. The compensations are fences as
//! well as undos: voiding an order's payment refunds its charge *and* refuses a charge for it
//! that arrives later (a delayed retry); releasing an order's stock does the same for a late
//! reservation; cancelling the order makes a late confirm fail. So a step whose answer was lost
//! is undone as surely as one that failed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{Answer, Context, Downstream, Unavailable};
use crate::inventory::Reservation;
use crate::orders::Order;
use crate::payment::Charge;
use crate::Item;

/// Sagas kept in the log; older finished ones are forgotten.
const LOG_CAPACITY: usize = 10_000;

/// The three downstreams.
#[derive(Debug, Clone)]
pub struct Downstreams {
    /// The order service.
    pub order: Downstream,
    /// The payment service.
    pub payment: Downstream,
    /// The inventory service.
    pub inventory: Downstream,
}

impl Downstreams {
    /// All three, in a fixed order.
    pub fn all(&self) -> [&Downstream; 3] {
        [&self.order, &self.payment, &self.inventory]
    }
}

/// One step of a saga, as `GET /api/sagas/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// `create_order`, `reserve_inventory`, `charge_payment`, `confirm_order`, or a
    /// compensation: `void_payment`, `release_inventory`, `cancel_order`.
    pub name: String,
    /// `done`, `failed`, `pending` (a compensation waiting for its service).
    pub status: String,
    /// What happened, in a few words.
    pub detail: Option<String>,
}

/// One saga.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Saga {
    /// Its id.
    pub saga_id: String,
    /// The order, once created.
    pub order_id: Option<String>,
    /// `running`, `confirmed`, `compensating` (compensations pending), `compensated`,
    /// `failed` (nothing to compensate), or `needs_attention` (a compensation was refused).
    pub state: String,
    /// The step that failed.
    pub failed_step: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

impl Saga {
    /// The state once no step is running: from the steps themselves, so that the request
    /// and the background retries cannot overwrite each other's view.
    fn settle(&mut self) {
        if self.state == "confirmed" {
            return;
        }
        let compensations = |s: &&Step| {
            matches!(
                s.name.as_str(),
                "void_payment" | "release_inventory" | "cancel_order"
            )
        };
        let steps: Vec<&Step> = self.steps.iter().filter(compensations).collect();
        self.state = if steps.iter().any(|s| s.status == "failed") {
            "needs_attention"
        } else if steps.iter().any(|s| s.status == "pending") {
            "compensating"
        } else if self.order_id.is_some() {
            "compensated"
        } else {
            "failed"
        }
        .into();
    }
}

/// A compensation.
#[derive(Debug, Clone)]
enum Compensation {
    /// Refund whatever was charged for the order, and refuse a later charge for it.
    Void {
        order_id: String,
    },
    /// Release whatever is reserved for the order, and refuse a later reservation for it.
    Release {
        order_id: String,
    },
    Cancel {
        order_id: String,
        reason: String,
    },
    /// After a confirm whose answer was lost: cancel the order first (a late confirm then
    /// fails); if it turns out confirmed, the saga succeeded and nothing is undone.
    Fence {
        order_id: String,
    },
}

impl Compensation {
    fn order_id(&self) -> &str {
        match self {
            Compensation::Void { order_id }
            | Compensation::Release { order_id }
            | Compensation::Cancel { order_id, .. }
            | Compensation::Fence { order_id } => order_id,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Compensation::Void { .. } => "void_payment",
            Compensation::Release { .. } => "release_inventory",
            Compensation::Cancel { .. } | Compensation::Fence { .. } => "cancel_order",
        }
    }
}

/// What running a compensation gave.
enum Compensated {
    Done,
    /// Done, and these follow.
    Then(Vec<Compensation>),
    /// The order turned out confirmed: nothing to undo.
    Confirmed,
    /// The service could not be reached, or failed: try again later.
    Retry,
    /// The service refused it: retrying will not help.
    Refused(String),
}

/// A compensation waiting for its service.
#[derive(Debug)]
struct Pending {
    saga_id: String,
    compensation: Compensation,
    ctx: Context,
}

/// The saga log and the compensations waiting for their services.
#[derive(Debug)]
pub struct Sagas {
    log: Mutex<(HashMap<String, Saga>, VecDeque<String>)>,
    pending: Mutex<Vec<Pending>>,
    /// Makes saga ids (and so idempotency keys) unique across restarts.
    nonce: String,
    next: AtomicU64,
    running: AtomicUsize,
    /// Waiting compensations taken out of `pending` by a retry pass and not yet settled.
    retrying: AtomicUsize,
    deferred: AtomicU64,
    completed_later: AtomicU64,
}

impl Default for Sagas {
    fn default() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut x = (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32);
        // Mix, so that close start times give unrelated nonces.
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 33;
        Sagas {
            log: Mutex::default(),
            pending: Mutex::default(),
            nonce: format!("{:012x}", x & 0xFFFF_FFFF_FFFF),
            next: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            deferred: AtomicU64::new(0),
            completed_later: AtomicU64::new(0),
        }
    }
}

/// What `POST /api/orders` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Who orders.
    pub customer_id: String,
    /// What (1 to 50 lines, one per product).
    pub items: Vec<Item>,
}

impl OrderRequest {
    /// Checks the request; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.customer_id.trim().is_empty() || self.customer_id.len() > 100 {
            return Err("`customer_id` must be 1 to 100 characters".into());
        }
        if self.items.is_empty() || self.items.len() > 50 {
            return Err("`items` must hold 1 to 50 lines".into());
        }
        for (i, item) in self.items.iter().enumerate() {
            if item.sku.trim().is_empty() || item.sku.len() > 100 {
                return Err(format!("`items[{i}].sku` must be 1 to 100 characters"));
            }
            if self.items[..i].iter().any(|other| other.sku == item.sku) {
                return Err(format!(
                    "`items[{i}].sku` repeats `{}`: give each product once, with its quantity",
                    item.sku
                ));
            }
            if item.qty == 0 || item.qty > 1_000 {
                return Err(format!("`items[{i}].qty` must be between 1 and 1000"));
            }
        }
        Ok(())
    }
}

/// How a saga ended, for the response.
#[derive(Debug)]
pub struct Outcome {
    /// The status to answer with.
    pub status: StatusCode,
    /// Seconds after which to try again, when known.
    pub retry_after: Option<u64>,
    /// The body.
    pub body: serde_json::Value,
}

/// Why a step failed.
enum Failure {
    /// The downstream said no: 409 out of stock, 402 declined, 422 unknown product.
    Refused { status: StatusCode, reason: String },
    /// The downstream could not be reached, timed out, or failed: the step's effect is unknown.
    Unavailable {
        retry_after: Option<u64>,
        reason: String,
    },
}

impl Failure {
    fn from_answer(service: &str, answer: &Answer) -> Failure {
        let code = answer.error_code().unwrap_or_else(|| "error".into());
        match answer.status {
            StatusCode::CONFLICT
            | StatusCode::PAYMENT_REQUIRED
            | StatusCode::UNPROCESSABLE_ENTITY => Failure::Refused {
                status: answer.status,
                reason: code,
            },
            s => Failure::Unavailable {
                retry_after: None,
                reason: format!("{service} answered {}: {code}", s.as_u16()),
            },
        }
    }

    fn from_unavailable(u: &Unavailable) -> Failure {
        Failure::Unavailable {
            retry_after: u
                .kind
                .retry_after
                .map(|d| (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)),
            reason: format!("{} unavailable: {}", u.service, u.kind.reason),
        }
    }

    fn reason(&self) -> &str {
        match self {
            Failure::Refused { reason, .. } | Failure::Unavailable { reason, .. } => reason,
        }
    }
}

fn step(name: &str, status: &str, detail: Option<String>) -> Step {
    Step {
        name: name.to_owned(),
        status: status.to_owned(),
        detail,
    }
}

/// Whether an answer is worth trying again later: the service failed or was busy.
fn transient(answer: &Answer) -> bool {
    answer.status.is_server_error()
        || answer.status == StatusCode::REQUEST_TIMEOUT
        || answer.status == StatusCode::TOO_MANY_REQUESTS
}

impl Sagas {
    /// A new saga id.
    pub fn new_id(&self) -> String {
        format!(
            "saga-{}-{}",
            self.nonce,
            self.next.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// A saga, by id.
    pub fn get(&self, id: &str) -> Option<Saga> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(id)
            .cloned()
    }

    /// Compensations deferred because their service was down, and those completed later.
    pub fn deferred_counts(&self) -> (u64, u64) {
        (
            self.deferred.load(Ordering::Relaxed),
            self.completed_later.load(Ordering::Relaxed),
        )
    }

    /// Compensations still waiting, those a retry pass is running included.
    pub fn pending(&self) -> usize {
        let queued = self.pending.lock().unwrap_or_else(|e| e.into_inner()).len();
        queued + self.retrying.load(Ordering::SeqCst)
    }

    /// Sagas under way.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    fn insert(&self, saga: Saga) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *log;
        order.push_back(saga.saga_id.clone());
        map.insert(saga.saga_id.clone(), saga);
        // Forget the oldest finished sagas past the capacity (never one still in progress).
        let mut scanned = 0;
        while map.len() > LOG_CAPACITY && scanned < order.len() {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            let done = map
                .get(&oldest)
                .is_some_and(|s| !matches!(s.state.as_str(), "running" | "compensating"));
            if done {
                map.remove(&oldest);
            } else {
                order.push_back(oldest);
                scanned += 1;
            }
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Saga)) {
        if let Some(saga) = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get_mut(id)
        {
            f(saga);
        }
    }

    /// Runs the order saga `saga_id` to its end (compensations that must wait are queued).
    pub async fn run(
        &self,
        ds: &Downstreams,
        ctx: &Context,
        request: &OrderRequest,
        saga_id: &str,
    ) -> Outcome {
        self.running.fetch_add(1, Ordering::Relaxed);
        struct Running<'a>(&'a AtomicUsize);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _running = Running(&self.running);
        self.insert(Saga {
            saga_id: saga_id.to_owned(),
            order_id: None,
            state: "running".into(),
            failed_step: None,
            reason: None,
            steps: Vec::new(),
        });
        let mut compensations = Vec::new();
        let (failed_step, failure) = match self
            .forward(ds, ctx, request, saga_id, &mut compensations)
            .await
        {
            Ok(body) => {
                self.update(saga_id, |s| s.state = "confirmed".into());
                return Outcome {
                    status: StatusCode::CREATED,
                    retry_after: None,
                    body,
                };
            }
            Err(failed) => failed,
        };
        self.update(saga_id, |s| {
            s.failed_step = Some(failed_step.into());
            s.reason = Some(failure.reason().to_owned());
            s.steps.push(step(
                failed_step,
                "failed",
                Some(failure.reason().to_owned()),
            ));
        });
        let order_id = self.get(saga_id).and_then(|s| s.order_id);
        // A confirm whose effect is unknown: the cancel goes first, as a fence.
        if let (Failure::Unavailable { .. }, "confirm_order", Some(order_id)) =
            (&failure, failed_step, &order_id)
        {
            compensations = vec![Compensation::Fence {
                order_id: order_id.clone(),
            }];
        }
        // Compensate in reverse; a compensation may bring others after it.
        let mut queue: VecDeque<Compensation> = compensations.into_iter().rev().collect();
        let mut results = Vec::new();
        while let Some(comp) = queue.pop_front() {
            let name = comp.name();
            let status = match self.compensate(ds, ctx, &comp).await {
                Compensated::Done => "done",
                Compensated::Then(next) => {
                    queue.extend(next);
                    "done"
                }
                Compensated::Confirmed => {
                    // The confirm had landed: the saga succeeded after all.
                    self.update(saga_id, |s| {
                        s.state = "confirmed".into();
                        s.steps.push(step(
                            "confirm_order",
                            "done",
                            Some("confirmed; its answer was lost".into()),
                        ));
                    });
                    return self.confirmed_late(ds, ctx, saga_id, &order_id).await;
                }
                Compensated::Retry => {
                    self.deferred.fetch_add(1, Ordering::Relaxed);
                    self.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Pending {
                            saga_id: saga_id.to_owned(),
                            compensation: comp,
                            ctx: ctx.clone(),
                        });
                    "pending"
                }
                Compensated::Refused(why) => {
                    self.update(saga_id, |s| s.steps.push(step(name, "failed", Some(why))));
                    results.push(json!({ "step": name, "status": "failed" }));
                    continue;
                }
            };
            self.update(saga_id, |s| s.steps.push(step(name, status, None)));
            results.push(json!({ "step": name, "status": status }));
        }
        let mut state = String::new();
        self.update(saga_id, |s| {
            s.settle();
            state = s.state.clone();
        });
        let (status, retry_after) = match &failure {
            Failure::Refused { status, .. } => (*status, None),
            Failure::Unavailable { retry_after, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, *retry_after)
            }
        };
        Outcome {
            status,
            retry_after,
            body: json!({
                "outcome": "failed",
                "saga_id": saga_id,
                "order_id": order_id,
                "failed_step": failed_step,
                "reason": failure.reason(),
                "saga_state": state,
                "compensations": results,
            }),
        }
    }

    /// The answer for a saga whose confirm landed though its answer was lost.
    async fn confirmed_late(
        &self,
        ds: &Downstreams,
        ctx: &Context,
        saga_id: &str,
        order_id: &Option<String>,
    ) -> Outcome {
        let id = order_id.clone().unwrap_or_default();
        let order = ds
            .order
            .call(
                ctx,
                Method::GET,
                &format!("/orders/{id}"),
                None::<&()>,
                None,
            )
            .await
            .ok()
            .and_then(|a| a.json::<Order>().ok());
        Outcome {
            status: StatusCode::CREATED,
            retry_after: None,
            body: json!({
                "outcome": "confirmed",
                "saga_id": saga_id,
                "order_id": id,
                "status": "confirmed",
                "total_cents": order.as_ref().and_then(|o| o.total_cents),
                "payment_id": order.as_ref().and_then(|o| o.payment_id.clone()),
                "reservation_id": order.as_ref().and_then(|o| o.reservation_id.clone()),
            }),
        }
    }

    /// The forward steps; on a failure, the step and why, with `compensations` holding what
    /// must be undone (each pushed before its step, so a step whose answer was lost is undone
    /// too).
    async fn forward(
        &self,
        ds: &Downstreams,
        ctx: &Context,
        request: &OrderRequest,
        saga_id: &str,
        compensations: &mut Vec<Compensation>,
    ) -> Result<serde_json::Value, (&'static str, Failure)> {
        // 1. Create the order, pending.
        let create = json!({ "customer_id": request.customer_id, "items": request.items });
        let order: Order = expect(
            "create_order",
            ds.order
                .call(ctx, Method::POST, "/orders", Some(&create), Some(saga_id))
                .await,
            "order",
        )?;
        let order_id = order.order_id.clone();
        self.update(saga_id, |s| {
            s.order_id = Some(order_id.clone());
            s.steps
                .push(step("create_order", "done", Some(order_id.clone())));
        });
        compensations.push(Compensation::Cancel {
            order_id: order_id.clone(),
            reason: "saga failed".into(),
        });

        // 2. Reserve the stock.
        compensations.push(Compensation::Release {
            order_id: order_id.clone(),
        });
        let reserve = json!({ "order_id": order_id, "items": request.items });
        let key = format!("{saga_id}-reserve");
        let reservation: Reservation = expect(
            "reserve_inventory",
            ds.inventory
                .call(
                    ctx,
                    Method::POST,
                    "/reservations",
                    Some(&reserve),
                    Some(&key),
                )
                .await,
            "inventory",
        )?;
        self.update(saga_id, |s| {
            s.steps.push(step(
                "reserve_inventory",
                "done",
                Some(reservation.reservation_id.clone()),
            ))
        });

        // 3. Charge, with a key that makes a replay harmless.
        compensations.push(Compensation::Void {
            order_id: order_id.clone(),
        });
        let charge = json!({
            "order_id": order_id,
            "customer_id": request.customer_id,
            "amount_cents": reservation.total_cents,
        });
        let key = format!("{saga_id}-charge");
        let charge: Charge = expect(
            "charge_payment",
            ds.payment
                .call(ctx, Method::POST, "/charges", Some(&charge), Some(&key))
                .await,
            "payment",
        )?;
        self.update(saga_id, |s| {
            s.steps.push(step(
                "charge_payment",
                "done",
                Some(charge.charge_id.clone()),
            ))
        });

        // 4. Confirm.
        let confirm = json!({
            "payment_id": charge.charge_id,
            "reservation_id": reservation.reservation_id,
            "total_cents": reservation.total_cents,
        });
        let key = format!("{saga_id}-confirm");
        let confirmed: Order = expect(
            "confirm_order",
            ds.order
                .call(
                    ctx,
                    Method::POST,
                    &format!("/orders/{order_id}/confirm"),
                    Some(&confirm),
                    Some(&key),
                )
                .await,
            "order",
        )?;
        self.update(saga_id, |s| {
            s.steps.push(step("confirm_order", "done", None))
        });
        Ok(json!({
            "outcome": "confirmed",
            "saga_id": saga_id,
            "order_id": confirmed.order_id,
            "status": confirmed.status,
            "total_cents": reservation.total_cents,
            "payment_id": charge.charge_id,
            "reservation_id": reservation.reservation_id,
        }))
    }

    /// Runs one compensation.
    async fn compensate(
        &self,
        ds: &Downstreams,
        ctx: &Context,
        comp: &Compensation,
    ) -> Compensated {
        let (service, method, path, body) = match comp {
            Compensation::Void { order_id } => (
                &ds.payment,
                Method::POST,
                "/voids".to_owned(),
                json!({ "order_id": order_id }),
            ),
            Compensation::Release { order_id } => (
                &ds.inventory,
                Method::POST,
                "/releases".to_owned(),
                json!({ "order_id": order_id }),
            ),
            Compensation::Cancel { order_id, reason } => (
                &ds.order,
                Method::POST,
                format!("/orders/{order_id}/cancel"),
                json!({ "reason": reason }),
            ),
            Compensation::Fence { order_id } => (
                &ds.order,
                Method::POST,
                format!("/orders/{order_id}/cancel"),
                json!({ "reason": "its confirmation could not be verified" }),
            ),
        };
        // Each compensation is idempotent on its service; the key lets it be retried.
        let key = format!("{}-{}", comp.name(), comp.order_id());
        let answer = match service
            .call(ctx, method, &path, Some(&body), Some(&key))
            .await
        {
            Ok(answer) => answer,
            Err(_) => return Compensated::Retry,
        };
        match (comp, answer.status) {
            (_, s) if s.is_success() => match comp {
                Compensation::Fence { order_id } => Compensated::Then(vec![
                    Compensation::Void {
                        order_id: order_id.clone(),
                    },
                    Compensation::Release {
                        order_id: order_id.clone(),
                    },
                ]),
                _ => Compensated::Done,
            },
            (Compensation::Fence { .. }, StatusCode::CONFLICT)
                if answer.error_code().as_deref() == Some("order_confirmed") =>
            {
                Compensated::Confirmed
            }
            _ if transient(&answer) => Compensated::Retry,
            (_, s) => Compensated::Refused(format!(
                "{} answered {}: {}",
                service.name(),
                s.as_u16(),
                answer.error_code().unwrap_or_default()
            )),
        }
    }

    /// Retries the waiting compensations, every `every`, until the process ends.
    pub async fn run_deferred(self: Arc<Self>, ds: Downstreams, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.retry_deferred(&ds).await;
        }
    }

    /// One pass over the waiting compensations.
    pub async fn retry_deferred(&self, ds: &Downstreams) {
        let waiting = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            // Counted as retrying before they leave the queue: never seen as none waiting.
            self.retrying.fetch_add(pending.len(), Ordering::SeqCst);
            std::mem::take(&mut *pending)
        };
        let mut queue: VecDeque<Pending> = waiting.into();
        while let Some(item) = queue.pop_front() {
            let name = item.compensation.name();
            let result = self.compensate(ds, &item.ctx, &item.compensation).await;
            let confirmed = matches!(result, Compensated::Confirmed);
            let (status, detail) = match result {
                Compensated::Retry => {
                    self.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(item);
                    self.retrying.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                Compensated::Done => ("done", "completed after its service came back".to_owned()),
                Compensated::Then(next) => {
                    self.deferred
                        .fetch_add(next.len() as u64, Ordering::Relaxed);
                    self.retrying.fetch_add(next.len(), Ordering::SeqCst);
                    for compensation in next {
                        queue.push_back(Pending {
                            saga_id: item.saga_id.clone(),
                            compensation,
                            ctx: item.ctx.clone(),
                        });
                    }
                    ("done", "completed after its service came back".to_owned())
                }
                Compensated::Confirmed => ("done", "the order was confirmed after all".to_owned()),
                Compensated::Refused(why) => ("failed", why),
            };
            self.completed_later.fetch_add(1, Ordering::Relaxed);
            self.update(&item.saga_id, |s| {
                if let Some(st) = s
                    .steps
                    .iter_mut()
                    .rev()
                    .find(|st| st.name == name && st.status == "pending")
                {
                    st.status = status.into();
                    st.detail = Some(detail);
                }
                if confirmed {
                    s.state = "confirmed".into();
                } else {
                    s.settle();
                }
            });
            self.retrying.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Stops the background retries (at shutdown) and reports what is still waiting: it is
    /// lost with the process, as the log is.
    pub fn stop_deferred(&self, task: &tokio::task::JoinHandle<()>) {
        task.abort();
        let pending = self.pending();
        if pending > 0 {
            eprintln!("shutdown: {pending} compensation(s) still waiting for their services");
        }
    }

    /// Waits, up to `limit`, for the sagas under way to finish (for a graceful shutdown).
    pub async fn wait_idle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A step's answer as `T`, or why it failed.
fn expect<T: serde::de::DeserializeOwned>(
    step: &'static str,
    result: Result<Answer, Unavailable>,
    service: &str,
) -> Result<T, (&'static str, Failure)> {
    match result {
        Ok(answer) if answer.status.is_success() => answer.json::<T>().map_err(|_| {
            (
                step,
                Failure::Unavailable {
                    retry_after: None,
                    reason: format!("{service} sent an unreadable answer"),
                },
            )
        }),
        Ok(answer) => Err((step, Failure::from_answer(service, &answer))),
        Err(unavailable) => Err((step, Failure::from_unavailable(&unavailable))),
    }
}
