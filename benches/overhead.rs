//! Per-call overhead of bulwark's layers beside tower's own, measured in the same run.
//!
//! ```sh
//! cargo bench --bench overhead            # full run
//! cargo bench --bench overhead -- --test  # smoke: each bench once (what CI runs)
//! cargo bench --bench overhead -- contended  # the contended mode alone
//! ```
//!
//! Each benchmark drives `iters` calls (`ready().await` then `call(..).await`) on one runtime
//! and reports time per call. Compare each layer with `baseline` (a bare `service_fn` whose
//! future is ready at once) and with tower's equivalent layer: the difference is the layer's
//! cost, and the ratio between bulwark and tower is what matters on a noisy machine.
//!
//! Modes:
//! - `ready`: the inner future completes on its first poll.
//! - `pending_once`: the inner future is pending once before completing, so timers really arm
//!   and wakers are registered.
//! - `contended`: 64 tasks on a 2-worker multi-thread runtime (workers pinned to two CPUs),
//!   each calling its own clone of one service whose inner future is ready at once; reported
//!   time is wall time per call across all tasks (lower is better). Measured by this bench
//!   itself, not by criterion: every entry of a group once per round, back to back, over 21
//!   rounds, with ratios taken round by round (see [`contended`]).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tokio::runtime::Runtime;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A future pending once (waking itself at once) before it completes.
struct PendingOnce(Option<u64>);

impl Future for PendingOnce {
    type Output = Result<u64, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.take() {
            Some(x) if x & (1 << 63) == 0 => {
                self.0 = Some(x | (1 << 63));
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(x) => Poll::Ready(Ok(x & !(1 << 63))),
            None => Poll::Pending,
        }
    }
}

/// The floor for any layer whose response future can reach state shared by every clone (a
/// breaker's, a retry layer's counters and budget): the future holds a clone of an `Arc`,
/// dropped when the call completes. Nothing else is done.
#[derive(Clone)]
struct SharedHandle<S> {
    inner: S,
    shared: std::sync::Arc<()>,
}

impl<S> SharedHandle<S> {
    fn new(inner: S) -> Self {
        SharedHandle {
            inner,
            shared: std::sync::Arc::new(()),
        }
    }
}

impl<S: Service<u64>> Service<u64> for SharedHandle<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = HandleFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: u64) -> Self::Future {
        HandleFuture {
            inner: self.inner.call(request),
            shared: Some(self.shared.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    struct HandleFuture<F> {
        #[pin]
        inner: F,
        shared: Option<std::sync::Arc<()>>,
    }
}

impl<F: Future> Future for HandleFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        drop(this.shared.take());
        Poll::Ready(output)
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Ready,
    PendingOnce,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Ready => "ready",
            Mode::PendingOnce => "pending_once",
        }
    }
}

type Inner = tower::util::ServiceFn<fn(u64) -> Either>;

/// The inner future of either mode, so every layer wraps the same service type.
enum Either {
    Ready(std::future::Ready<Result<u64, Infallible>>),
    PendingOnce(PendingOnce),
}

impl Future for Either {
    type Output = Result<u64, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Either::Ready(f) => Pin::new(f).poll(cx),
            Either::PendingOnce(f) => Pin::new(f).poll(cx),
        }
    }
}

fn inner(mode: Mode) -> Inner {
    match mode {
        Mode::Ready => service_fn(|x| Either::Ready(std::future::ready(Ok(x)))),
        Mode::PendingOnce => service_fn(|x| Either::PendingOnce(PendingOnce(Some(x)))),
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn bench_sequential<S>(c: &mut Criterion, group: &str, name: &str, mode: Mode, svc: S)
where
    S: Service<u64, Response = u64> + Clone,
    S::Error: std::fmt::Debug,
{
    let rt = runtime();
    let mut group = c.benchmark_group(format!("{group}/{}", mode.name()));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut svc = svc.clone();
            rt.block_on(async {
                let start = tokio::time::Instant::now();
                for i in 0..iters {
                    let res = svc.ready().await.unwrap().call(black_box(i)).await.unwrap();
                    black_box(res);
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// The multi-thread runtime every contended entry runs on: one for the whole run, each
/// worker pinned to its own CPU where there are two, so that two calls really run at once.
fn contended_runtime() -> &'static Runtime {
    static RUNTIME: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let next = std::sync::atomic::AtomicUsize::new(0);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(move || {
                if cores.len() >= 2 {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    core_affinity::set_for_current(cores[i % 2]);
                }
            })
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Tasks sharing clones of one service in the contended mode.
const TASKS: u64 = 64;

/// One contended entry: runs `TASKS` tasks of the given number of calls each and returns
/// the wall time they took.
type ContendedRun = Box<dyn Fn(u64) -> Duration>;

thread_local! {
    /// The contended entries of each group, registered by the group functions and measured,
    /// in pairs, by [`contended`].
    static CONTENDED: std::cell::RefCell<Vec<(String, String, ContendedRun)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Registers `svc` as entry `name` of `group`'s contended mode: 64 tasks on 2 worker
/// threads share clones of it; the inner future is ready at once, so the two workers hammer
/// the layer's shared state (its atomics and `Arc` counts) and nothing else. (With a future
/// pending once, the cost per call was tokio's own timer wheel under contention, paid alike
/// by every layer that arms a timer.)
fn bench_contended<S>(_: &mut Criterion, group: &str, name: &str, svc: S)
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    let run: ContendedRun = Box::new(move |per_task| {
        contended_runtime().block_on(async {
            let start = tokio::time::Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let mut svc = svc.clone();
                    tokio::spawn(async move {
                        for i in 0..per_task {
                            let res = svc.ready().await.unwrap().call(black_box(i)).await;
                            black_box(res.unwrap());
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            start.elapsed()
        })
    });
    CONTENDED.with(|c| {
        c.borrow_mut()
            .push((group.to_owned(), name.to_owned(), run))
    });
}

/// Measures the contended entries in rounds: each round runs every entry of a group once,
/// back to back (in an order that rotates), and each entry's time added over the baseline is
/// divided by its tower counterpart's from the same round.
///
/// Criterion's one-entry-at-a-time sampling is not used here: on this shared 2-vCPU machine a
/// whole benchmark of contended calls landed at about 55 or about 215 ns per call for the
/// same entry, depending (it seems) on where the host placed the two vCPUs at the time; entries
/// measured minutes apart were not comparable. Entries run seconds apart, in pairs, are.
///
/// Prints a table per group and writes `contended.json` beside criterion's results (read by
/// `scripts/criterion_table.py`). As for criterion: `--test`, or no `--bench` (as under
/// `cargo test --benches`), runs one short round and writes nothing; `--list` and
/// `--profile-time` skip it; a filter (a regular expression, or a whole name with `--exact`)
/// selects the groups with an entry (`{group}/contended/{name}`) it matches.
fn contended(_: &mut Criterion) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| {
        args.iter()
            .any(|a| a == f || a.starts_with(&format!("{f}=")))
    };
    if flag("--list") || flag("--profile-time") || flag("--ignored") {
        return;
    }
    let smoke = flag("--test") || !flag("--bench");
    // Criterion's options that take a value: that value is not a filter.
    const VALUED: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--color",
        "-c",
        "--format",
        "--output-format",
        "--plotting-backend",
        "--profile-time",
    ];
    let mut filters = Vec::new();
    let mut skip_value = false;
    for arg in &args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg.starts_with('-') {
            skip_value = VALUED.contains(&arg.as_str());
        } else {
            filters.push(arg.as_str());
        }
    }
    // As criterion reads its filter: a regular expression, or the whole name with `--exact`.
    let exact = flag("--exact");
    let patterns: Vec<regex::Regex> = if exact {
        Vec::new()
    } else {
        filters
            .iter()
            .filter_map(|f| regex::Regex::new(f).ok())
            .collect()
    };
    let wanted = |group: &str, names: &[&str]| {
        filters.is_empty()
            || names.iter().any(|name| {
                let id = format!("{group}/contended/{name}");
                if exact {
                    filters.iter().any(|f| *f == id)
                } else {
                    patterns.iter().any(|p| p.is_match(&id))
                }
            })
    };
    let (rounds, per_task) = if smoke { (1, 10) } else { (21, 2_000) };
    let entries = CONTENDED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let mut groups: Vec<String> = entries.iter().map(|(g, _, _)| g.clone()).collect();
    groups.dedup();
    let mut json = serde_json::Map::new();
    for group in groups {
        let mine: Vec<&(String, String, ContendedRun)> =
            entries.iter().filter(|(g, _, _)| *g == group).collect();
        let names: Vec<&str> = mine.iter().map(|(_, n, _)| n.as_str()).collect();
        if !wanted(&group, &names) {
            continue;
        }
        if !names.contains(&"baseline") {
            continue;
        }
        // ns per call, per entry, per round.
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); mine.len()];
        for round in 0..rounds {
            for k in 0..mine.len() {
                let i = (k + round) % mine.len();
                let elapsed = (mine[i].2)(per_task);
                times[i].push(elapsed.as_nanos() as f64 / (per_task * TASKS) as f64);
            }
        }
        let index = |name: &str| mine.iter().position(|(_, n, _)| n == name);
        let Some(base) = index("baseline") else {
            continue;
        };
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("\n{group}/contended: {rounds} rounds of {TASKS} tasks x {per_task} calls, ns per call (median), added over the baseline, ratio of added to the counterpart's (median, min, max over rounds)");
        let mut out = serde_json::Map::new();
        for (i, (_, name, _)) in mine.iter().enumerate() {
            let ns = median(times[i].clone());
            let added = ns - median(times[base].clone());
            let mut entry = serde_json::json!({ "ns": ns, "added": added });
            let mut line = format!("  {name:24} {ns:8.1} {added:8.1}");
            // No ratio against a counterpart that adds next to nothing (tower's never-retry
            // `Retry` adds about 1 ns): it would be noise over noise.
            let counterpart = counterpart(&group, name)
                .and_then(index)
                .filter(|&j| median(times[j].clone()) - median(times[base].clone()) >= 2.0);
            let ratios: Vec<f64> = counterpart
                .map(|j| {
                    (0..rounds)
                        .map(|r| (times[i][r] - times[base][r]) / (times[j][r] - times[base][r]))
                        .filter(|x| x.is_finite())
                        .collect()
                })
                .unwrap_or_default();
            if let (Some(j), false) = (counterpart, ratios.is_empty()) {
                let (lo, hi) = ratios
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                let mid = median(ratios);
                line += &format!("   {mid:.2} ({lo:.2} to {hi:.2}) vs {}", mine[j].1);
                entry["ratio"] = serde_json::json!({
                    "vs": mine[j].1, "median": mid, "min": lo, "max": hi
                });
            }
            println!("{line}");
            out.insert(name.clone(), entry);
        }
        json.insert(group, serde_json::Value::Object(out));
    }
    // The groups measured replace their last results; the others' are kept.
    if !smoke && !json.is_empty() {
        // Where criterion writes its own results.
        let dir = match (
            std::env::var_os("CRITERION_HOME"),
            std::env::var_os("CARGO_TARGET_DIR"),
        ) {
            (Some(home), _) => std::path::PathBuf::from(home),
            (None, Some(target)) => std::path::PathBuf::from(target).join("criterion"),
            (None, None) => {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion")
            }
        };
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("contended.json");
        let mut all = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Map<_, _>>(&text).ok())
            .unwrap_or_default();
        all.extend(json);
        if let Err(e) = std::fs::write(&path, serde_json::Value::Object(all).to_string()) {
            eprintln!("could not write {}: {e}", path.display());
        }
    }
}

/// The tower entry each bulwark entry is compared with (as in `scripts/criterion_table.py`).
fn counterpart(group: &str, name: &str) -> Option<&'static str> {
    match (group, name) {
        ("timeout", "bulwark") => Some("tower"),
        ("bulkhead", "bulwark" | "bulwark_max_wait") => Some("tower_concurrency_limit"),
        ("circuit_breaker", "bulwark" | "bulwark_windows") => Some("tower_concurrency_limit"),
        ("retry", "bulwark") => Some("tower_budget"),
        ("retry", "bulwark_no_budget") => Some("tower"),
        ("stack", "bulwark" | "bulwark_as_tower") => Some("tower"),
        _ => None,
    }
}

fn bulkhead(c: &mut Criterion) {
    const CAP: usize = 1024;
    let layer = || {
        bulwark::BulkheadLayer::builder("bench")
            .max_concurrent(CAP)
            .build()
            .expect("a valid bulkhead")
    };
    // The same cap, with a max_wait: slots are then a fair semaphore's permits.
    let waiting = || {
        bulwark::BulkheadLayer::builder("bench")
            .max_concurrent(CAP)
            .max_wait(Duration::from_millis(10))
            .build()
            .expect("a valid bulkhead")
    };
    for mode in [Mode::Ready, Mode::PendingOnce] {
        bench_sequential(c, "bulkhead", "baseline", mode, inner(mode));
        bench_sequential(
            c,
            "bulkhead",
            "tower_concurrency_limit",
            mode,
            tower::limit::ConcurrencyLimitLayer::new(CAP).layer(inner(mode)),
        );
        bench_sequential(c, "bulkhead", "bulwark", mode, layer().layer(inner(mode)));
        bench_sequential(
            c,
            "bulkhead",
            "bulwark_max_wait",
            mode,
            waiting().layer(inner(mode)),
        );
    }
    let mode = Mode::Ready;
    bench_contended(c, "bulkhead", "baseline", inner(mode));
    bench_contended(
        c,
        "bulkhead",
        "tower_concurrency_limit",
        tower::limit::ConcurrencyLimitLayer::new(CAP).layer(inner(mode)),
    );
    bench_contended(c, "bulkhead", "bulwark", layer().layer(inner(mode)));
    bench_contended(
        c,
        "bulkhead",
        "bulwark_max_wait",
        waiting().layer(inner(mode)),
    );
}

fn circuit_breaker(c: &mut Criterion) {
    let default = || {
        bulwark::CircuitBreakerLayer::builder("bench")
            .build()
            .expect("a valid breaker")
    };
    // Every rule on: a count window, a time window and slow calls.
    let windows = || {
        bulwark::CircuitBreakerLayer::builder("bench")
            .failure_rate_over_calls(0.5, 100, 20)
            .failure_rate_over_time(0.5, Duration::from_secs(10), 10, 20)
            .slow_calls(Duration::from_secs(1), 0.5)
            .build()
            .expect("a valid breaker")
    };
    let limit = || tower::limit::ConcurrencyLimitLayer::new(1024);
    for mode in [Mode::Ready, Mode::PendingOnce] {
        bench_sequential(c, "circuit_breaker", "baseline", mode, inner(mode));
        bench_sequential(
            c,
            "circuit_breaker",
            "tower_concurrency_limit",
            mode,
            limit().layer(inner(mode)),
        );
        bench_sequential(
            c,
            "circuit_breaker",
            "shared_handle",
            mode,
            SharedHandle::new(inner(mode)),
        );
        bench_sequential(
            c,
            "circuit_breaker",
            "bulwark",
            mode,
            default().layer(inner(mode)),
        );
        bench_sequential(
            c,
            "circuit_breaker",
            "bulwark_windows",
            mode,
            windows().layer(inner(mode)),
        );
    }
    let mode = Mode::Ready;
    bench_contended(c, "circuit_breaker", "baseline", inner(mode));
    bench_contended(
        c,
        "circuit_breaker",
        "tower_concurrency_limit",
        limit().layer(inner(mode)),
    );
    bench_contended(
        c,
        "circuit_breaker",
        "shared_handle",
        SharedHandle::new(inner(mode)),
    );
    bench_contended(
        c,
        "circuit_breaker",
        "bulwark",
        default().layer(inner(mode)),
    );
    bench_contended(
        c,
        "circuit_breaker",
        "bulwark_windows",
        windows().layer(inner(mode)),
    );
}

/// tower's `Retry` with a policy that never retries (but clones the request, as a policy
/// that may retry must): the cost of the retry machinery alone.
#[derive(Clone, Copy)]
struct NeverRetry;

impl<E> tower::retry::Policy<u64, u64, E> for NeverRetry {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

/// tower's `Retry` with a policy that deposits every call into tower's own `TpsBudget` and
/// never retries: the fair comparison for bulwark's default, which keeps a budget too.
#[derive(Clone)]
struct NeverRetryWithBudget(std::sync::Arc<tower::retry::budget::TpsBudget>);

impl<E> tower::retry::Policy<u64, u64, E> for NeverRetryWithBudget {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, E>) -> Option<Self::Future> {
        use tower::retry::budget::Budget;
        self.0.deposit();
        None
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn retry(c: &mut Criterion) {
    let bulwark = || {
        bulwark::RetryLayer::builder("bench")
            .build()
            .expect("a valid retry layer")
    };
    let bulwark_no_budget = || {
        bulwark::RetryLayer::builder("bench")
            .no_budget()
            .build()
            .expect("a valid retry layer")
    };
    let tower = || tower::retry::RetryLayer::new(NeverRetry);
    let tower_budget = || {
        tower::retry::RetryLayer::new(NeverRetryWithBudget(std::sync::Arc::new(
            tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 10, 0.2),
        )))
    };
    for mode in [Mode::Ready, Mode::PendingOnce] {
        bench_sequential(c, "retry", "baseline", mode, inner(mode));
        bench_sequential(c, "retry", "tower", mode, tower().layer(inner(mode)));
        bench_sequential(
            c,
            "retry",
            "shared_handle",
            mode,
            SharedHandle::new(inner(mode)),
        );
        bench_sequential(
            c,
            "retry",
            "tower_budget",
            mode,
            tower_budget().layer(inner(mode)),
        );
        bench_sequential(c, "retry", "bulwark", mode, bulwark().layer(inner(mode)));
        bench_sequential(
            c,
            "retry",
            "bulwark_no_budget",
            mode,
            bulwark_no_budget().layer(inner(mode)),
        );
    }
    let mode = Mode::Ready;
    bench_contended(c, "retry", "baseline", inner(mode));
    bench_contended(c, "retry", "tower", tower().layer(inner(mode)));
    bench_contended(c, "retry", "shared_handle", SharedHandle::new(inner(mode)));
    bench_contended(
        c,
        "retry",
        "tower_budget",
        tower_budget().layer(inner(mode)),
    );
    bench_contended(c, "retry", "bulwark", bulwark().layer(inner(mode)));
    bench_contended(
        c,
        "retry",
        "bulwark_no_budget",
        bulwark_no_budget().layer(inner(mode)),
    );
}

/// The standard stack beside tower's retry > concurrency-limit > timeout stack.
fn stack(c: &mut Criterion) {
    let bulwark = || {
        bulwark::stack::StackLayer::builder("bench")
            .build()
            .expect("a valid stack")
    };
    // The stack cut down to what tower's stack does: retry without a budget, a concurrency
    // cap, one timeout; no breaker. The same work, to compare like with like.
    let bulwark_as_tower = || {
        bulwark::stack::StackLayer::builder("bench")
            .max_concurrent(1024)
            .total_timeout(Duration::from_secs(10))
            .no_attempt_timeout()
            .retry(|retry| retry.no_budget())
            .no_circuit_breaker()
            .build()
            .expect("a valid stack")
    };
    let tower_stack = || {
        tower::ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(NeverRetry))
            .concurrency_limit(1024)
            .timeout(Duration::from_secs(10))
    };
    for mode in [Mode::Ready, Mode::PendingOnce] {
        bench_sequential(c, "stack", "baseline", mode, inner(mode));
        bench_sequential(
            c,
            "stack",
            "tower",
            mode,
            tower_stack().service(inner(mode)),
        );
        bench_sequential(c, "stack", "bulwark", mode, bulwark().layer(inner(mode)));
        bench_sequential(
            c,
            "stack",
            "bulwark_as_tower",
            mode,
            bulwark_as_tower().layer(inner(mode)),
        );
    }
    let mode = Mode::Ready;
    bench_contended(c, "stack", "baseline", inner(mode));
    bench_contended(c, "stack", "tower", tower_stack().service(inner(mode)));
    bench_contended(c, "stack", "bulwark", bulwark().layer(inner(mode)));
    bench_contended(
        c,
        "stack",
        "bulwark_as_tower",
        bulwark_as_tower().layer(inner(mode)),
    );
}

fn timeout(c: &mut Criterion) {
    let limit = Duration::from_secs(30);
    for mode in [Mode::Ready, Mode::PendingOnce] {
        bench_sequential(c, "timeout", "baseline", mode, inner(mode));
        bench_sequential(
            c,
            "timeout",
            "tower",
            mode,
            tower::timeout::TimeoutLayer::new(limit).layer(inner(mode)),
        );
        bench_sequential(
            c,
            "timeout",
            "bulwark",
            mode,
            bulwark::TimeoutLayer::new(limit).layer(inner(mode)),
        );
    }
    let mode = Mode::Ready;
    bench_contended(c, "timeout", "baseline", inner(mode));
    bench_contended(
        c,
        "timeout",
        "tower",
        tower::timeout::TimeoutLayer::new(limit).layer(inner(mode)),
    );
    bench_contended(
        c,
        "timeout",
        "bulwark",
        bulwark::TimeoutLayer::new(limit).layer(inner(mode)),
    );
}

criterion_group!(
    benches,
    timeout,
    bulkhead,
    circuit_breaker,
    retry,
    stack,
    contended
);
criterion_main!(benches);
