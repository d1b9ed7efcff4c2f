//! What counts as a failure: a three-way [`Outcome`] decided by a [`Classify`] implementation.
//!
//! Layers that react to failures (the circuit breaker, retry) ask a classifier about each
//! call's result. The answer is one of three:
//!
//! - [`Outcome::Success`]: the downstream did its job.
//! - [`Outcome::Failure`]: the downstream failed; count it.
//! - [`Outcome::Ignored`]: says nothing about the downstream's health (a call the client gave
//!   up on, a rejection by bulwark itself before the downstream was called); count it for
//!   nothing. None of the classifiers here return it; a custom one may.
//!
//! The classifiers here:
//!
//! | Classifier | `Err(_)` | `Ok(response)` |
//! | --- | --- | --- |
//! | [`DefaultClassifier`] | Failure | Success |
//! | [`HttpClassifier`] (feature `http`) | Failure | 5xx is Failure, anything else Success |
//! | [`GrpcClassifier`] (feature `http`) | Failure | by `grpc-status`: UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE are Failure |
//!
//! Any `Fn(&Result<T, E>) -> Outcome` closure is a classifier too:
//!
//! ```
//! use bulwark::classify::{Classify, Outcome};
//!
//! // A 404 from this downstream means it lost data: count it as a failure.
//! let classifier = |result: &Result<u16, std::io::Error>| match result {
//!     Ok(404) | Err(_) => Outcome::Failure,
//!     Ok(_) => Outcome::Success,
//! };
//! assert_eq!(classifier.classify(&Ok(404)), Outcome::Failure);
//! assert_eq!(classifier.classify(&Ok(200)), Outcome::Success);
//! ```

#[cfg(feature = "http")]
mod status;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::status::{GrpcClassifier, HttpClassifier};

/// How a call's result counts toward a downstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The downstream did its job.
    Success,
    /// The downstream failed.
    Failure,
    /// The result says nothing about the downstream's health; it counts for nothing.
    Ignored,
}

impl Outcome {
    /// Whether this is [`Outcome::Success`].
    pub const fn is_success(self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// Whether this is [`Outcome::Failure`].
    pub const fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure)
    }

    /// Whether this is [`Outcome::Ignored`].
    pub const fn is_ignored(self) -> bool {
        matches!(self, Outcome::Ignored)
    }
}

/// Decides the [`Outcome`] of a call from its result.
///
/// `T` is the inner service's response type and `E` its error type. Implemented for every
/// `Fn(&Result<T, E>) -> Outcome`, for [`DefaultClassifier`] and, with the `http` feature, for
/// [`HttpClassifier`] and [`GrpcClassifier`].
///
/// Classifiers run on every call, so keep them cheap: no allocation, no lock.
pub trait Classify<T, E> {
    /// Classifies one call's result.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<F, T, E> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default classifier: every `Err` is a failure, every `Ok` a success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultClassifier {
    _priv: (),
}

impl DefaultClassifier {
    /// Creates the default classifier.
    pub const fn new() -> Self {
        DefaultClassifier { _priv: () }
    }
}

impl<T, E> Classify<T, E> for DefaultClassifier {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_err_as_failure_and_ok_as_success() {
        let c = DefaultClassifier::new();
        assert_eq!(c.classify(&Ok::<_, ()>(1)), Outcome::Success);
        assert_eq!(c.classify(&Err::<(), _>("boom")), Outcome::Failure);
    }

    #[test]
    fn a_closure_is_a_classifier() {
        fn takes<C: Classify<u8, ()>>(c: C, r: Result<u8, ()>) -> Outcome {
            c.classify(&r)
        }
        let ignore_zero = |r: &Result<u8, ()>| match r {
            Ok(0) => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(()) => Outcome::Failure,
        };
        assert_eq!(takes(ignore_zero, Ok(0)), Outcome::Ignored);
        assert_eq!(takes(ignore_zero, Ok(3)), Outcome::Success);
        assert_eq!(takes(ignore_zero, Err(())), Outcome::Failure);
    }

    #[test]
    fn outcome_predicates() {
        assert!(Outcome::Success.is_success() && !Outcome::Success.is_failure());
        assert!(Outcome::Failure.is_failure() && !Outcome::Failure.is_ignored());
        assert!(Outcome::Ignored.is_ignored() && !Outcome::Ignored.is_success());
    }
}
