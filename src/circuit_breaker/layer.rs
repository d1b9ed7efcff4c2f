use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::config::{CircuitBreakerLayerBuilder, Policy};
use super::core::Core;
use super::{CircuitBreaker, CircuitBreakerHandle};
use crate::classify::DefaultClassifier;

/// Applies a [`CircuitBreaker`] to the services it wraps; every one of them shares this
/// layer's breaker state.
///
/// Built with [`CircuitBreakerLayer::builder`]. See the [module docs](crate::circuit_breaker).
#[must_use]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    core: Arc<Core>,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// Starts building a breaker named `name` (used in errors, events and metrics).
    pub fn builder(name: impl Into<Arc<str>>) -> CircuitBreakerLayerBuilder {
        CircuitBreakerLayerBuilder::new(name.into())
    }
}

impl<C> CircuitBreakerLayer<C> {
    pub(crate) fn from_parts(name: Arc<str>, policy: Policy, classifier: C) -> Self {
        CircuitBreakerLayer {
            core: Arc::new(Core::new(name, policy)),
            classifier,
        }
    }

    /// A handle to this breaker's shared state.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.core.clone())
    }

    /// The shared state and the classifier, for the standard stack.
    pub(crate) fn into_parts(self) -> (Arc<Core>, C) {
        (self.core, self.classifier)
    }

    #[cfg(test)]
    pub(crate) fn core_for_tests(&self) -> Arc<Core> {
        self.core.clone()
    }
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            core: self.core.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.core.clone(), self.classifier.clone())
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.core.name)
            .field("state", &self.core.state())
            .field("policy", &self.core.policy)
            .finish()
    }
}
