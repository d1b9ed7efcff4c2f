//! The inventory service: a catalog with stock and prices, and reservations of stock for
//! orders. Its data is its own (in memory).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::{json_body, json_error, Item};

/// One product.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Product {
    /// Stock-keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price of one unit, in cents.
    pub unit_price_cents: u64,
    /// Units that can be reserved now.
    pub available: u64,
}

/// A reservation of stock for one order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reservation {
    /// Its id.
    pub reservation_id: String,
    /// The order it is for.
    pub order_id: String,
    /// What is reserved.
    pub items: Vec<Item>,
    /// The price of the reserved items, in cents.
    pub total_cents: u64,
    /// `reserved` or `released`.
    pub status: String,
}

#[derive(Debug, Default)]
struct Store {
    products: BTreeMap<String, Product>,
    reservations: HashMap<String, Reservation>,
    by_order: HashMap<String, String>,
    /// Orders released before (or without) a reservation: a late reserve for them is refused.
    voided: std::collections::HashSet<String>,
    next_id: u64,
}

/// The inventory service's state.
#[derive(Debug, Clone)]
pub struct Inventory {
    store: Arc<Mutex<Store>>,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory::with_stock_scale(1)
    }
}

impl Inventory {
    /// The catalog, with every product's stock multiplied by `scale` (for load and soak runs).
    pub fn with_stock_scale(scale: u64) -> Self {
        let mut store = Store::default();
        for product in Inventory::catalog(scale) {
            store.products.insert(product.sku.clone(), product);
        }
        Inventory {
            store: Arc::new(Mutex::new(store)),
        }
    }

    /// The products a new inventory starts with, stock multiplied by `scale`.
    pub fn catalog(scale: u64) -> Vec<Product> {
        [
            ("sku-anvil", "Anvil", 4_999, 20),
            ("sku-rope", "Rope, 10 m", 1_250, 100),
            ("sku-lamp", "Lamp", 2_500, 5),
            ("sku-rare", "Rare coin", 99_900, 1),
        ]
        .into_iter()
        .map(|(sku, name, price, stock)| Product {
            sku: sku.to_owned(),
            name: name.to_owned(),
            unit_price_cents: price,
            available: stock * scale.max(1),
        })
        .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveRequest {
    order_id: String,
    items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
struct ByOrder {
    order_id: String,
}

impl Inventory {
    /// The service's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/catalog", get(catalog))
            .route("/reservations", post(reserve).get(lookup))
            .route("/reservations/{id}", delete(release))
            .route("/releases", post(release_order))
            .with_state(self.clone())
    }

    /// The products and their available stock.
    pub fn products(&self) -> Vec<Product> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.products.values().cloned().collect()
    }

    /// The active reservations.
    pub fn reserved(&self) -> Vec<Reservation> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store
            .reservations
            .values()
            .filter(|r| r.status == "reserved")
            .cloned()
            .collect()
    }
}

async fn catalog(State(inv): State<Inventory>) -> Json<Vec<Product>> {
    let store = inv.store.lock().unwrap_or_else(|e| e.into_inner());
    Json(store.products.values().cloned().collect())
}

async fn reserve(State(inv): State<Inventory>, body: axum::body::Bytes) -> Response {
    let request: ReserveRequest = match json_body(&body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut store = inv.store.lock().unwrap_or_else(|e| e.into_inner());
    if store.voided.contains(&request.order_id) {
        return json_error(
            StatusCode::CONFLICT,
            "order_voided",
            "the order was released: it cannot reserve again",
        )
        .into_response();
    }
    // One reservation per order: a retried request gets the first one back.
    if let Some(existing) = store
        .by_order
        .get(&request.order_id)
        .and_then(|id| store.reservations.get(id))
    {
        return (StatusCode::OK, Json(existing.clone())).into_response();
    }
    // The quantity wanted of each product, however many lines name it.
    let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
    for item in &request.items {
        let Some(qty) = wanted
            .get(item.sku.as_str())
            .copied()
            .unwrap_or(0)
            .checked_add(item.qty)
        else {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_quantity",
                "quantity too large",
            )
            .into_response();
        };
        wanted.insert(&item.sku, qty);
    }
    let mut total = 0u64;
    for (&sku, &qty) in &wanted {
        let Some(product) = store.products.get(sku) else {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_sku",
                &format!("no product `{sku}`"),
            )
            .into_response();
        };
        if product.available < qty {
            return json_error(
                StatusCode::CONFLICT,
                "insufficient_stock",
                &format!("`{sku}`: {qty} wanted, {} available", product.available),
            )
            .into_response();
        }
        let Some(line) = product.unit_price_cents.checked_mul(qty) else {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_quantity",
                "quantity too large",
            )
            .into_response();
        };
        total = total.saturating_add(line);
    }
    let wanted: Vec<(String, u64)> = wanted.into_iter().map(|(s, q)| (s.to_owned(), q)).collect();
    for (sku, qty) in &wanted {
        if let Some(product) = store.products.get_mut(sku) {
            product.available -= qty;
        }
    }
    store.next_id += 1;
    let reservation = Reservation {
        reservation_id: format!("res-{}", store.next_id),
        order_id: request.order_id.clone(),
        items: wanted
            .into_iter()
            .map(|(sku, qty)| Item { sku, qty })
            .collect(),
        total_cents: total,
        status: "reserved".into(),
    };
    store
        .by_order
        .insert(request.order_id, reservation.reservation_id.clone());
    store
        .reservations
        .insert(reservation.reservation_id.clone(), reservation.clone());
    (StatusCode::CREATED, Json(reservation)).into_response()
}

async fn release(State(inv): State<Inventory>, Path(id): Path<String>) -> Response {
    let mut store = inv.store.lock().unwrap_or_else(|e| e.into_inner());
    if !store.reservations.contains_key(&id) {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such reservation")
            .into_response();
    }
    let current = release_in(&mut store, &id);
    (StatusCode::OK, Json(current)).into_response()
}

/// Releases reservation `id`; releasing twice is harmless (the stock goes back once).
fn release_in(store: &mut Store, id: &str) -> Option<Reservation> {
    let reservation = store.reservations.get(id).cloned()?;
    if reservation.status == "reserved" {
        for item in &reservation.items {
            if let Some(product) = store.products.get_mut(&item.sku) {
                product.available = product.available.saturating_add(item.qty);
            }
        }
        if let Some(r) = store.reservations.get_mut(id) {
            r.status = "released".into();
        }
    }
    store.reservations.get(id).cloned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseOrder {
    order_id: String,
}

/// Releases whatever is reserved for an order, and fences it: a reserve for the order that
/// arrives later (a delayed retry) is refused. Idempotent.
async fn release_order(State(inv): State<Inventory>, body: axum::body::Bytes) -> Response {
    let request: ReleaseOrder = match json_body(&body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut store = inv.store.lock().unwrap_or_else(|e| e.into_inner());
    store.voided.insert(request.order_id.clone());
    let released = store
        .by_order
        .get(&request.order_id)
        .cloned()
        .and_then(|id| release_in(&mut store, &id));
    (StatusCode::OK, Json(released)).into_response()
}

async fn lookup(State(inv): State<Inventory>, Query(q): Query<ByOrder>) -> Response {
    let store = inv.store.lock().unwrap_or_else(|e| e.into_inner());
    match store
        .by_order
        .get(&q.order_id)
        .and_then(|id| store.reservations.get(id))
    {
        Some(r) => (StatusCode::OK, Json(r.clone())).into_response(),
        None => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no reservation for the order",
        )
        .into_response(),
    }
}
