//! The payment service: charges keyed by `Idempotency-Key` (a replay never charges twice),
//! refunds, and lookup by order. Its data is its own (in memory).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::{json_body, json_error};

/// Charges above this amount are declined.
pub const DECLINE_ABOVE_CENTS: u64 = 500_000;

/// One charge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Charge {
    /// Its id.
    pub charge_id: String,
    /// The order it pays for.
    pub order_id: String,
    /// Who pays.
    pub customer_id: String,
    /// How much, in cents.
    pub amount_cents: u64,
    /// `captured` or `refunded`.
    pub status: String,
}

#[derive(Debug, Default)]
struct Store {
    charges: HashMap<String, Charge>,
    by_key: HashMap<String, String>,
    by_order: HashMap<String, String>,
    /// Orders voided before (or without) a charge: a charge for them that arrives later (a
    /// delayed retry) is refused.
    voided: std::collections::HashSet<String>,
    next_id: u64,
}

/// The payment service's state.
#[derive(Debug, Clone, Default)]
pub struct Payment {
    store: Arc<Mutex<Store>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeRequest {
    order_id: String,
    customer_id: String,
    amount_cents: u64,
}

#[derive(Debug, Deserialize)]
struct ByOrder {
    order_id: String,
}

impl Payment {
    /// The service's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/charges", post(charge).get(lookup))
            .route("/charges/{id}/refund", post(refund))
            .route("/voids", post(void_order))
            .with_state(self.clone())
    }

    /// Every charge, for checks.
    pub fn charges(&self) -> Vec<Charge> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.charges.values().cloned().collect()
    }
}

async fn charge(
    State(pay): State<Payment>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(str::to_owned)
    else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            "a charge needs an `Idempotency-Key` header (1 to 200 characters)",
        )
        .into_response();
    };
    let request: ChargeRequest = match json_body(&body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut store = pay.store.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = store.by_key.get(&key).and_then(|id| store.charges.get(id)) {
        if existing.order_id != request.order_id
            || existing.customer_id != request.customer_id
            || existing.amount_cents != request.amount_cents
        {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different charge",
            )
            .into_response();
        }
        // A replay: the first charge, never a second one.
        return (StatusCode::OK, Json(existing.clone())).into_response();
    }
    if store.voided.contains(&request.order_id) {
        return json_error(
            StatusCode::CONFLICT,
            "order_voided",
            "the order was voided: it cannot be charged",
        )
        .into_response();
    }
    if request.amount_cents > DECLINE_ABOVE_CENTS || request.customer_id.starts_with("declined") {
        return json_error(
            StatusCode::PAYMENT_REQUIRED,
            "declined",
            "the payment was declined",
        )
        .into_response();
    }
    store.next_id += 1;
    let charge = Charge {
        charge_id: format!("ch-{}", store.next_id),
        order_id: request.order_id.clone(),
        customer_id: request.customer_id,
        amount_cents: request.amount_cents,
        status: "captured".into(),
    };
    store.by_key.insert(key, charge.charge_id.clone());
    store
        .by_order
        .insert(request.order_id, charge.charge_id.clone());
    store
        .charges
        .insert(charge.charge_id.clone(), charge.clone());
    (StatusCode::CREATED, Json(charge)).into_response()
}

async fn refund(State(pay): State<Payment>, Path(id): Path<String>) -> Response {
    let mut store = pay.store.lock().unwrap_or_else(|e| e.into_inner());
    match store.charges.get_mut(&id) {
        Some(charge) => {
            // Refunding twice is harmless.
            charge.status = "refunded".into();
            (StatusCode::OK, Json(charge.clone())).into_response()
        }
        None => json_error(StatusCode::NOT_FOUND, "not_found", "no such charge").into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoidOrder {
    order_id: String,
}

/// Refunds whatever was charged for an order, and fences it: a charge for the order that
/// arrives later is refused. Idempotent.
async fn void_order(State(pay): State<Payment>, body: axum::body::Bytes) -> Response {
    let request: VoidOrder = match json_body(&body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut store = pay.store.lock().unwrap_or_else(|e| e.into_inner());
    store.voided.insert(request.order_id.clone());
    let refunded = match store.by_order.get(&request.order_id).cloned() {
        Some(id) => store.charges.get_mut(&id).map(|charge| {
            charge.status = "refunded".into();
            charge.clone()
        }),
        None => None,
    };
    (StatusCode::OK, Json(refunded)).into_response()
}

async fn lookup(State(pay): State<Payment>, Query(q): Query<ByOrder>) -> Response {
    let store = pay.store.lock().unwrap_or_else(|e| e.into_inner());
    match store
        .by_order
        .get(&q.order_id)
        .and_then(|id| store.charges.get(id))
    {
        Some(c) => (StatusCode::OK, Json(c.clone())).into_response(),
        None => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no charge for the order",
        )
        .into_response(),
    }
}
