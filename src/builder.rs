//! [`ServiceBuilderExt`]: bulwark's layers as methods of `tower::ServiceBuilder`.

use std::time::Duration;

use tower::layer::util::Stack;
use tower::ServiceBuilder;

use crate::bulkhead::BulkheadLayer;
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::timeout::TimeoutLayer;

/// Adds bulwark's layers to a `tower::ServiceBuilder`, outermost first, like its own methods.
///
/// The timeout and retry methods are named `timeout_after` and `retry_with` so that they never
/// collide with tower's own `timeout` and `retry`.
///
/// ```
/// use std::time::Duration;
/// use bulwark::stack::StackLayer;
/// use bulwark::{BoxError, BulkheadLayer, CircuitBreakerLayer, ServiceBuilderExt};
/// use tower::{service_fn, ServiceBuilder};
///
/// # fn main() -> Result<(), BoxError> {
/// let inner = || service_fn(|n: u32| async move { Ok::<_, BoxError>(n) });
///
/// // One layer at a time, in the order of the standard stack...
/// let by_hand = ServiceBuilder::new()
///     .bulkhead(BulkheadLayer::builder("inventory").max_concurrent(64).build()?)
///     .timeout_after(Duration::from_secs(5))
///     .circuit_breaker(CircuitBreakerLayer::builder("inventory").build()?)
///     .service(inner());
///
/// // ...or the whole standard stack, validated as one.
/// let stack = ServiceBuilder::new()
///     .standard_stack(StackLayer::builder("inventory").build()?)
///     .service(inner());
/// # let _ = (by_hand, stack);
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Adds a [`BulkheadLayer`].
    fn bulkhead(self, layer: BulkheadLayer) -> ServiceBuilder<Stack<BulkheadLayer, L>>;

    /// Adds a [`CircuitBreakerLayer`].
    fn circuit_breaker<C>(
        self,
        layer: CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C>, L>>;

    /// Adds a retry layer: a [`RetryLayer`](crate::RetryLayer) or, with the `http` feature, an
    /// [`HttpRetryLayer`](crate::retry::HttpRetryLayer).
    fn retry_with<R: sealed::RetryLayers>(self, layer: R) -> ServiceBuilder<Stack<R, L>>;

    /// Adds a bulwark [`TimeoutLayer`] of `timeout`.
    fn timeout_after(self, timeout: Duration) -> ServiceBuilder<Stack<TimeoutLayer, L>>;

    /// Adds the standard stack: a [`StackLayer`](crate::stack::StackLayer) or, with the `http`
    /// feature, an [`HttpStackLayer`](crate::stack::HttpStackLayer).
    fn standard_stack<T: sealed::StackLayers>(self, stack: T) -> ServiceBuilder<Stack<T, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn bulkhead(self, layer: BulkheadLayer) -> ServiceBuilder<Stack<BulkheadLayer, L>> {
        self.layer(layer)
    }

    fn circuit_breaker<C>(
        self,
        layer: CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C>, L>> {
        self.layer(layer)
    }

    fn retry_with<R: sealed::RetryLayers>(self, layer: R) -> ServiceBuilder<Stack<R, L>> {
        self.layer(layer)
    }

    fn timeout_after(self, timeout: Duration) -> ServiceBuilder<Stack<TimeoutLayer, L>> {
        self.layer(TimeoutLayer::new(timeout))
    }

    fn standard_stack<T: sealed::StackLayers>(self, stack: T) -> ServiceBuilder<Stack<T, L>> {
        self.layer(stack)
    }
}

mod sealed {
    use tower::ServiceBuilder;

    pub trait Sealed<L> {}
    impl<L> Sealed<L> for ServiceBuilder<L> {}

    /// The retry layers [`retry_with`](super::ServiceBuilderExt::retry_with) takes.
    pub trait RetryLayers {}
    impl<C> RetryLayers for crate::retry::RetryLayer<C> {}
    #[cfg(feature = "http")]
    impl RetryLayers for crate::retry::HttpRetryLayer {}

    /// The stacks [`standard_stack`](super::ServiceBuilderExt::standard_stack) takes.
    pub trait StackLayers {}
    impl<C, P> StackLayers for crate::stack::StackLayer<C, P> {}
    #[cfg(feature = "http")]
    impl<C> StackLayers for crate::stack::HttpStackLayer<C> {}
}
