//! The error type bulwark's layers return, and helpers to find a bulwark rejection in it.
//!
//! Every layer that can fail returns [`BoxError`], tower's convention, so layers stack in any
//! order and the error fits axum's `HandleErrorLayer` and tonic. What failed is told by the type
//! of the error, or of one of its causes: a rejection by bulwark itself is one of the small
//! public types listed in [`Rejection`], and an error from the inner service passes through
//! unchanged, still downcastable to its own type.
//!
//! Layers may wrap an error in another (retry exhaustion keeps the last error as its
//! `source()`), so look for a rejection with [`find`], [`is`] or [`rejection`], which walk the
//! whole `source()` chain, rather than with a single `downcast_ref`.
//!
//! ```
//! use std::time::Duration;
//! use bulwark::error::{rejection, Rejection};
//! use bulwark::timeout::error::Elapsed;
//! use bulwark::BoxError;
//!
//! # fn example(err: BoxError) {
//! match rejection(&*err) {
//!     Some(Rejection::Elapsed(elapsed)) => println!("gave up after {:?}", elapsed.after()),
//!     Some(other) => println!("rejected by bulwark: {other}"),
//!     None => println!("the downstream failed: {err}"),
//! }
//! # }
//! # example(Box::new(Elapsed::new(Duration::from_secs(1))));
//! ```

use std::error::Error;
use std::fmt;

use crate::bulkhead::error::BulkheadFull;
use crate::circuit_breaker::error::CircuitOpen;
use crate::timeout::error::Elapsed;

/// A type-erased error, as returned by every bulwark layer that can fail.
///
/// The same alias as `tower::BoxError`.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Finds the first error of type `T` in `err` or anywhere in its `source()` chain.
///
/// ```
/// # use std::time::Duration;
/// use bulwark::{error::find, timeout::error::Elapsed, BoxError};
///
/// let err: BoxError = Box::new(Elapsed::new(Duration::from_millis(250)));
/// let elapsed = find::<Elapsed>(&*err).expect("an Elapsed error");
/// assert_eq!(elapsed.after(), Duration::from_millis(250));
/// ```
pub fn find<'a, T>(err: &'a (dyn Error + 'static)) -> Option<&'a T>
where
    T: Error + 'static,
{
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        next = err.source();
    }
    None
}

/// Whether `err` or any error in its `source()` chain is a `T`.
pub fn is<T>(err: &(dyn Error + 'static)) -> bool
where
    T: Error + 'static,
{
    find::<T>(err).is_some()
}

/// A layer's configuration was invalid: returned by the `build()` of each layer's builder.
///
/// Names the component, the bad field and what is wrong with it, for example
/// ``invalid bulkhead config: `max_concurrent` must be greater than zero``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    component: &'static str,
    field: &'static str,
    problem: &'static str,
}

impl ConfigError {
    pub(crate) const fn new(
        component: &'static str,
        field: &'static str,
        problem: &'static str,
    ) -> Self {
        ConfigError {
            component,
            field,
            problem,
        }
    }

    /// The component whose configuration was invalid, such as `"bulkhead"`.
    pub const fn component(&self) -> &'static str {
        self.component
    }

    /// The configuration field that was invalid, such as `"max_concurrent"`.
    pub const fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with the field, such as `"must be greater than zero"`.
    pub const fn problem(&self) -> &'static str {
        self.problem
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} config: `{}` {}",
            self.component, self.field, self.problem
        )
    }
}

impl Error for ConfigError {}

/// A rejection by one of bulwark's own layers, found by [`rejection`].
///
/// New layers add variants, so match with a wildcard arm.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Rejection<'a> {
    /// A [`Timeout`](crate::timeout::Timeout) gave up waiting for the response.
    Elapsed(&'a Elapsed),
    /// A [`Bulkhead`](crate::bulkhead::Bulkhead) had no free slot (within its `max_wait`).
    BulkheadFull(&'a BulkheadFull),
    /// A [`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker) was open (or half-open
    /// with its probe slots taken).
    CircuitOpen(&'a CircuitOpen),
}

impl fmt::Display for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Elapsed(e) => fmt::Display::fmt(e, f),
            Rejection::BulkheadFull(e) => fmt::Display::fmt(e, f),
            Rejection::CircuitOpen(e) => fmt::Display::fmt(e, f),
        }
    }
}

/// Finds the first rejection by a bulwark layer in `err` or its `source()` chain.
///
/// Returns `None` when no bulwark layer rejected the call, that is, when the error came from
/// the inner service (or from something else outside bulwark).
pub fn rejection<'a>(err: &'a (dyn Error + 'static)) -> Option<Rejection<'a>> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(e) = err.downcast_ref::<Elapsed>() {
            return Some(Rejection::Elapsed(e));
        }
        if let Some(e) = err.downcast_ref::<BulkheadFull>() {
            return Some(Rejection::BulkheadFull(e));
        }
        if let Some(e) = err.downcast_ref::<CircuitOpen>() {
            return Some(Rejection::CircuitOpen(e));
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An error that wraps another, the way retry exhaustion wraps the last error.
    #[derive(Debug)]
    struct Wrapper(BoxError);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[derive(Debug)]
    struct Other;

    impl fmt::Display for Other {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("other")
        }
    }

    impl Error for Other {}

    #[test]
    fn finds_a_rejection_at_the_top() {
        let err: BoxError = Box::new(Elapsed::new(Duration::from_secs(3)));
        assert_eq!(
            find::<Elapsed>(&*err).unwrap().after(),
            Duration::from_secs(3)
        );
        assert!(matches!(rejection(&*err), Some(Rejection::Elapsed(_))));
    }

    #[test]
    fn finds_a_rejection_deep_in_the_source_chain() {
        let inner: BoxError = Box::new(Elapsed::new(Duration::from_millis(7)));
        let err: BoxError = Box::new(Wrapper(Box::new(Wrapper(inner))));
        assert!(err.downcast_ref::<Elapsed>().is_none());
        assert_eq!(
            find::<Elapsed>(&*err).unwrap().after(),
            Duration::from_millis(7)
        );
        assert!(is::<Elapsed>(&*err));
        assert_eq!(
            rejection(&*err).unwrap().to_string(),
            "request timed out after 7ms"
        );
    }

    #[test]
    fn an_error_from_outside_bulwark_is_no_rejection() {
        let err: BoxError = Box::new(Wrapper(Box::new(Other)));
        assert!(rejection(&*err).is_none());
        assert!(!is::<Elapsed>(&*err));
        assert!(is::<Other>(&*err));
    }
}
