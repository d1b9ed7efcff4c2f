//! The order saga: create the order, reserve stock, charge, confirm; on a failure, compensate
//! in reverse (refund, release, cancel). A compensation whose service is down is kept and
//! retried in the background until it succeeds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// compensation: `refund_payment`, `release_inventory`, `cancel_order`.
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
    /// `running`, `confirmed`, `compensating` (compensations pending), `compensated`, or
    /// `failed` (nothing to compensate).
    pub state: String,
    /// The step that failed.
    pub failed_step: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

/// A compensation still to run.
#[derive(Debug, Clone)]
enum Compensation {
    /// Refund whatever was charged for the order (found by order, as a charge whose answer
    /// was lost may exist).
    Refund {
        order_id: String,
    },
    Release {
        reservation_id: String,
    },
    Cancel {
        order_id: String,
        reason: String,
    },
}

impl Compensation {
    fn name(&self) -> &'static str {
        match self {
            Compensation::Refund { .. } => "refund_payment",
            Compensation::Release { .. } => "release_inventory",
            Compensation::Cancel { .. } => "cancel_order",
        }
    }
}

/// The saga log and the compensations waiting for their services.
#[derive(Debug, Default)]
pub struct Sagas {
    log: Mutex<HashMap<String, Saga>>,
    pending: Mutex<Vec<(String, Compensation)>>,
    next: AtomicU64,
    deferred: AtomicU64,
    completed_later: AtomicU64,
}

/// What `POST /api/orders` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Who orders.
    pub customer_id: String,
    /// What (1 to 50 lines).
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
    /// The downstream could not be reached, or failed.
    Unavailable {
        status: StatusCode,
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
                status: if s.is_server_error() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_GATEWAY
                },
                retry_after: None,
                reason: format!("{service} answered {}: {code}", s.as_u16()),
            },
        }
    }

    fn from_unavailable(u: &Unavailable) -> Failure {
        Failure::Unavailable {
            status: if u.kind.status == StatusCode::GATEWAY_TIMEOUT {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
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

impl Sagas {
    /// A saga, by id.
    pub fn get(&self, id: &str) -> Option<Saga> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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

    /// Compensations still waiting.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Saga)) {
        if let Some(saga) = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            f(saga);
        }
    }

    /// Runs one order saga to its end (compensations that must wait are queued).
    pub async fn run(&self, ds: &Downstreams, ctx: &Context, request: &OrderRequest) -> Outcome {
        let saga_id = format!("saga-{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        self.log.lock().unwrap_or_else(|e| e.into_inner()).insert(
            saga_id.clone(),
            Saga {
                saga_id: saga_id.clone(),
                order_id: None,
                state: "running".into(),
                failed_step: None,
                reason: None,
                steps: Vec::new(),
            },
        );
        let mut compensations: Vec<Compensation> = Vec::new();
        let result = self
            .forward(ds, ctx, request, &saga_id, &mut compensations)
            .await;
        match result {
            Ok(body) => {
                self.update(&saga_id, |s| s.state = "confirmed".into());
                Outcome {
                    status: StatusCode::CREATED,
                    retry_after: None,
                    body,
                }
            }
            Err((failed_step, failure)) => {
                self.update(&saga_id, |s| {
                    s.failed_step = Some(failed_step.into());
                    s.reason = Some(failure.reason().to_owned());
                    s.steps.push(step(
                        failed_step,
                        "failed",
                        Some(failure.reason().to_owned()),
                    ));
                });
                let order_id = self.get(&saga_id).and_then(|s| s.order_id);
                // Compensate in reverse.
                let mut results = Vec::new();
                for comp in compensations.into_iter().rev() {
                    let done = self.compensate(ds, ctx, &comp).await;
                    let status = if done { "done" } else { "pending" };
                    self.update(&saga_id, |s| s.steps.push(step(comp.name(), status, None)));
                    results.push(json!({ "step": comp.name(), "status": status }));
                    if !done {
                        self.deferred.fetch_add(1, Ordering::Relaxed);
                        self.pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((saga_id.clone(), comp));
                    }
                }
                let waiting = results.iter().any(|r| r["status"] == "pending");
                let state = match (order_id.is_some(), waiting) {
                    (false, _) => "failed",
                    (true, true) => "compensating",
                    (true, false) => "compensated",
                };
                self.update(&saga_id, |s| s.state = state.into());
                let (status, retry_after) = match &failure {
                    Failure::Refused { status, .. } => (*status, None),
                    Failure::Unavailable {
                        status,
                        retry_after,
                        ..
                    } => (*status, *retry_after),
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
        }
    }

    /// The forward steps; on a failure, the step and why, with `compensations` holding what
    /// must be undone.
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
        let reserve = json!({ "order_id": order_id, "items": request.items });
        let key = format!("reserve-{order_id}");
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
        compensations.push(Compensation::Release {
            reservation_id: reservation.reservation_id.clone(),
        });

        // 3. Charge, with a key that makes a replay harmless. A charge whose answer was lost
        // may have happened: from here on, a failure refunds by order.
        let charge = json!({
            "order_id": order_id,
            "customer_id": request.customer_id,
            "amount_cents": reservation.total_cents,
        });
        let key = format!("charge-{order_id}");
        let charged = ds
            .payment
            .call(ctx, Method::POST, "/charges", Some(&charge), Some(&key))
            .await;
        let refused = matches!(&charged, Ok(a) if a.status == StatusCode::PAYMENT_REQUIRED);
        if !refused {
            compensations.push(Compensation::Refund {
                order_id: order_id.clone(),
            });
        }
        let charge: Charge = expect("charge_payment", charged, "payment")?;
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
        let key = format!("confirm-{order_id}");
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

    /// Runs one compensation; `true` when done (or nothing was left to undo).
    async fn compensate(&self, ds: &Downstreams, ctx: &Context, comp: &Compensation) -> bool {
        match comp {
            Compensation::Refund { order_id } => {
                let path = format!("/charges?order_id={order_id}");
                match ds
                    .payment
                    .call(ctx, Method::GET, &path, None::<&()>, None)
                    .await
                {
                    Ok(a) if a.status == StatusCode::NOT_FOUND => true,
                    Ok(a) if a.status.is_success() => {
                        let Ok(charge) = a.json::<Charge>() else {
                            return false;
                        };
                        let path = format!("/charges/{}/refund", charge.charge_id);
                        let key = format!("refund-{}", charge.charge_id);
                        matches!(
                            ds.payment.call(ctx, Method::POST, &path, None::<&()>, Some(&key)).await,
                            Ok(a) if a.status.is_success()
                        )
                    }
                    _ => false,
                }
            }
            Compensation::Release { reservation_id } => {
                let path = format!("/reservations/{reservation_id}");
                matches!(
                    ds.inventory.call(ctx, Method::DELETE, &path, None::<&()>, None).await,
                    Ok(a) if a.status.is_success() || a.status == StatusCode::NOT_FOUND
                )
            }
            Compensation::Cancel { order_id, reason } => {
                let path = format!("/orders/{order_id}/cancel");
                let key = format!("cancel-{order_id}");
                matches!(
                    ds.order
                        .call(ctx, Method::POST, &path, Some(&json!({ "reason": reason })), Some(&key))
                        .await,
                    Ok(a) if a.status.is_success()
                )
            }
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
        let waiting = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let ctx = Context::default();
        for (saga_id, comp) in waiting {
            if self.compensate(ds, &ctx, &comp).await {
                self.completed_later.fetch_add(1, Ordering::Relaxed);
                self.update(&saga_id, |s| {
                    if let Some(st) = s
                        .steps
                        .iter_mut()
                        .rev()
                        .find(|st| st.name == comp.name() && st.status == "pending")
                    {
                        st.status = "done".into();
                        st.detail = Some("completed after its service came back".into());
                    }
                    if !s.steps.iter().any(|st| st.status == "pending") {
                        s.state = "compensated".into();
                    }
                });
            } else {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((saga_id, comp));
            }
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
                    status: StatusCode::BAD_GATEWAY,
                    retry_after: None,
                    reason: format!("{service} sent an unreadable answer"),
                },
            )
        }),
        Ok(answer) => Err((step, Failure::from_answer(service, &answer))),
        Err(unavailable) => Err((step, Failure::from_unavailable(&unavailable))),
    }
}
