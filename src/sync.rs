//! The atomics of the lock-free shared state: std's, or loom's when the crate is built for
//! its loom models (`--cfg bulwark_loom`).

#[cfg(bulwark_loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
#[cfg(not(bulwark_loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
