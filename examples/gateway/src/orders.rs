//! The order service: orders created pending, then confirmed or cancelled. Its data is its
//! own (in memory).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::{json_body, json_error, Item};

/// One order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Order {
    /// Its id.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// What.
    pub items: Vec<Item>,
    /// `pending`, `confirmed` or `cancelled`.
    pub status: String,
    /// The payment, once confirmed.
    pub payment_id: Option<String>,
    /// The reservation, once confirmed.
    pub reservation_id: Option<String>,
    /// The total, once confirmed, in cents.
    pub total_cents: Option<u64>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
}

#[derive(Debug, Default)]
struct Store {
    orders: HashMap<String, Order>,
    by_key: HashMap<String, String>,
    next_id: u64,
}

/// The order service's state.
#[derive(Debug, Clone, Default)]
pub struct Orders {
    store: Arc<Mutex<Store>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    customer_id: String,
    items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmRequest {
    payment_id: String,
    reservation_id: String,
    total_cents: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: String,
}

impl Orders {
    /// The service's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/orders", post(create))
            .route("/orders/{id}", get(fetch))
            .route("/orders/{id}/confirm", post(confirm))
            .route("/orders/{id}/cancel", post(cancel))
            .with_state(self.clone())
    }

    /// Every order, for checks.
    pub fn orders(&self) -> Vec<Order> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.orders.values().cloned().collect()
    }
}

async fn create(
    State(svc): State<Orders>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: CreateRequest = match json_body(&body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut store = svc.store.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = key
        .as_ref()
        .and_then(|k| store.by_key.get(k))
        .and_then(|id| store.orders.get(id))
    {
        return (StatusCode::OK, Json(existing.clone())).into_response();
    }
    store.next_id += 1;
    let order = Order {
        order_id: format!("ord-{}", store.next_id),
        customer_id: request.customer_id,
        items: request.items,
        status: "pending".into(),
        payment_id: None,
        reservation_id: None,
        total_cents: None,
        cancel_reason: None,
    };
    if let Some(key) = key {
        store.by_key.insert(key, order.order_id.clone());
    }
    store.orders.insert(order.order_id.clone(), order.clone());
    (StatusCode::CREATED, Json(order)).into_response()
}

async fn fetch(State(svc): State<Orders>, Path(id): Path<String>) -> Response {
    let store = svc.store.lock().unwrap_or_else(|e| e.into_inner());
    match store.orders.get(&id) {
        Some(o) => (StatusCode::OK, Json(o.clone())).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "not_found", "no such order").into_response(),
    }
}

async fn confirm(
    State(svc): State<Orders>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: ConfirmRequest = match json_body(&body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut store = svc.store.lock().unwrap_or_else(|e| e.into_inner());
    let Some(order) = store.orders.get_mut(&id) else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such order").into_response();
    };
    match order.status.as_str() {
        "pending" | "confirmed" => {
            order.status = "confirmed".into();
            order.payment_id = Some(request.payment_id);
            order.reservation_id = Some(request.reservation_id);
            order.total_cents = Some(request.total_cents);
            (StatusCode::OK, Json(order.clone())).into_response()
        }
        _ => json_error(
            StatusCode::CONFLICT,
            "order_cancelled",
            "a cancelled order cannot be confirmed",
        )
        .into_response(),
    }
}

async fn cancel(
    State(svc): State<Orders>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: CancelRequest = match json_body(&body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut store = svc.store.lock().unwrap_or_else(|e| e.into_inner());
    let Some(order) = store.orders.get_mut(&id) else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such order").into_response();
    };
    if order.status == "confirmed" {
        return json_error(
            StatusCode::CONFLICT,
            "order_confirmed",
            "a confirmed order cannot be cancelled here",
        )
        .into_response();
    }
    order.status = "cancelled".into();
    order.cancel_reason.get_or_insert(request.reason);
    (StatusCode::OK, Json(order.clone())).into_response()
}
