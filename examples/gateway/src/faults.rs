//! Switchable faults for the embedded downstream services: an error rate, added latency, and
//! "down" (the service's listener closes, so connections are refused).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::json_error;

/// The faults of one service, shared by its server and the gateway's admin API.
#[derive(Debug)]
pub struct Faults {
    /// `error_rate` as the bits of an `f64` in [0, 1].
    error_rate: AtomicU64,
    latency_ms: AtomicU64,
    delay_response_ms: AtomicU64,
    /// How many of the next requests get the latency (`u64::MAX`: all).
    slow_requests: AtomicU64,
    down: watch::Sender<bool>,
    /// Only requests whose path contains this get the faults above (`down` aside).
    path: std::sync::Mutex<Option<String>>,
    /// A request held by the latency is still handled if its caller hangs up meanwhile.
    finish_when_abandoned: std::sync::atomic::AtomicBool,
    /// Requests inside the service (in the fault middleware) now.
    in_flight: AtomicU64,
    rng: AtomicU64,
    /// The `x-request-id` and `traceparent` of the last request, to check propagation.
    last_seen: std::sync::Mutex<(Option<String>, Option<String>)>,
}

/// The faults as the admin API shows and takes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// The share of requests answered 503 at once, in [0, 1].
    #[serde(default)]
    pub error_rate: f64,
    /// Latency added to requests, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Latency added after the service has handled a request, in milliseconds: its effect is
    /// done, only the answer is late (what a lost answer looks like to the caller).
    #[serde(default)]
    pub delay_response_ms: u64,
    /// How many of the next requests get the latencies; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_requests: Option<u64>,
    /// Whether the service refuses connections (always the whole service).
    #[serde(default)]
    pub down: bool,
    /// Only requests whose path contains this get the error rate and the latencies (and count
    /// towards `slow_requests`), e.g. `"/confirm"`; every request when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A request held by `latency_ms` is still handled if its caller hangs up meanwhile, as a
    /// request stuck in a queue would be (by default it is dropped with the connection).
    #[serde(default)]
    pub finish_when_abandoned: bool,
}

impl FaultSettings {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("`error_rate` must be between 0.0 and 1.0".into());
        }
        if self.latency_ms > 600_000 {
            return Err("`latency_ms` must be at most 600000 (10 minutes)".into());
        }
        if self.delay_response_ms > 600_000 {
            return Err("`delay_response_ms` must be at most 600000 (10 minutes)".into());
        }
        if let Some(path) = &self.path {
            if path.is_empty() || path.len() > 200 {
                return Err("`path` must be 1 to 200 characters".into());
            }
        }
        Ok(())
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: AtomicU64::new(0f64.to_bits()),
            latency_ms: AtomicU64::new(0),
            delay_response_ms: AtomicU64::new(0),
            slow_requests: AtomicU64::new(u64::MAX),
            down: watch::Sender::new(false),
            path: std::sync::Mutex::new(None),
            finish_when_abandoned: std::sync::atomic::AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            last_seen: std::sync::Mutex::new((None, None)),
        }
    }
}

impl Faults {
    /// The current settings.
    pub fn get(&self) -> FaultSettings {
        FaultSettings {
            error_rate: f64::from_bits(self.error_rate.load(Ordering::Relaxed)),
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            delay_response_ms: self.delay_response_ms.load(Ordering::Relaxed),
            slow_requests: match self.slow_requests.load(Ordering::Relaxed) {
                u64::MAX => None,
                n => Some(n),
            },
            down: *self.down.borrow(),
            path: self.path.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            finish_when_abandoned: self.finish_when_abandoned.load(Ordering::Relaxed),
        }
    }

    /// Applies `settings` (validated by the caller).
    pub fn set(&self, settings: FaultSettings) {
        self.error_rate
            .store(settings.error_rate.to_bits(), Ordering::Relaxed);
        self.latency_ms
            .store(settings.latency_ms, Ordering::Relaxed);
        self.delay_response_ms
            .store(settings.delay_response_ms, Ordering::Relaxed);
        self.slow_requests.store(
            settings.slow_requests.unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = settings.path;
        self.finish_when_abandoned
            .store(settings.finish_when_abandoned, Ordering::Relaxed);
        self.down.send_replace(settings.down);
    }

    /// Requests inside the service now (a request held by a latency counts until answered).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The `x-request-id` and `traceparent` the service last received.
    pub fn last_seen(&self) -> (Option<String>, Option<String>) {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Watches the `down` switch.
    pub fn watch_down(&self) -> watch::Receiver<bool> {
        self.down.subscribe()
    }

    /// A uniform number in [0, 1).
    fn random(&self) -> f64 {
        let mut x = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        x ^= x >> 30;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The faults of every embedded service, by name. Cheap to clone (one `Arc`).
#[derive(Debug, Clone, Default)]
pub struct FaultRegistry {
    services: Arc<BTreeMap<&'static str, Arc<Faults>>>,
}

impl FaultRegistry {
    /// A registry for `names`, all healthy.
    pub fn new(names: &[&'static str]) -> Self {
        FaultRegistry {
            services: Arc::new(
                names
                    .iter()
                    .map(|&n| (n, Arc::new(Faults::default())))
                    .collect(),
            ),
        }
    }

    /// The faults of `service`.
    pub fn get(&self, service: &str) -> Option<&Arc<Faults>> {
        self.services.get(service)
    }

    /// Every service's settings.
    pub fn all(&self) -> BTreeMap<&'static str, FaultSettings> {
        self.services.iter().map(|(n, f)| (*n, f.get())).collect()
    }
}

/// One request inside a service: counted in when made, out when dropped (answered, abandoned
/// by its caller, or done in a task of its own), so the count is exact on every path.
struct InFlight(Arc<Faults>);

impl InFlight {
    fn enter(faults: &Arc<Faults>) -> Self {
        faults.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(faults.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Middleware for a downstream service: adds the latency, then fails the configured share of
/// requests with a 503 (only on the configured path, when one is set), then delays the answer
/// of a request the service handled.
pub async fn inject(State(faults): State<Arc<Faults>>, request: Request, next: Next) -> Response {
    let seen = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (header("x-request-id"), header("traceparent"))
    };
    *faults.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
    let in_flight = InFlight::enter(&faults);
    let settings = faults.get();
    if let Some(path) = &settings.path {
        if !request.uri().path().contains(path.as_str()) {
            return next.run(request).await;
        }
    }
    let slow = (settings.latency_ms > 0 || settings.delay_response_ms > 0)
        && faults
            .slow_requests
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            })
            .is_ok();
    if slow && settings.latency_ms > 0 && settings.finish_when_abandoned {
        // Held, then handled to the end in a task of its own, whether or not the caller is
        // still there; counted in flight (once) until then.
        let task = tokio::spawn(async move {
            let _in_flight = in_flight;
            tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
            handle(&faults, &settings, slow, request, next).await
        });
        return task.await.unwrap_or_else(|_| {
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the held request failed",
            )
            .into_response()
        });
    }
    if slow && settings.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
    }
    handle(&faults, &settings, slow, request, next).await
}

/// Fails the configured share of requests with a 503 at once; handles the rest, and delays
/// their answer when the request is `slow` (the service acted: only the answer is late).
async fn handle(
    faults: &Faults,
    settings: &FaultSettings,
    slow: bool,
    request: Request,
    next: Next,
) -> Response {
    if settings.error_rate > 0.0 && faults.random() < settings.error_rate {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected_fault",
            "failed by the fault switch",
        )
        .into_response();
    }
    let response = next.run(request).await;
    if slow && settings.delay_response_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.delay_response_ms)).await;
    }
    response
}
