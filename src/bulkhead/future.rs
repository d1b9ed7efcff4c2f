//! The response future of [`Bulkhead`](super::Bulkhead).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::error::BulkheadFull;
use super::Permit;
use crate::BoxError;

pin_project! {
    /// The response future of [`Bulkhead`](super::Bulkhead).
    ///
    /// Holds the call's slot until it completes or is dropped.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called {
            #[pin]
            response: F,
            permit: Option<Permit>,
        },
        Rejected {
            error: Option<BulkheadFull>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(response: F, permit: Permit) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                response,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn rejected(error: BulkheadFull) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { response, permit } => {
                let result = std::task::ready!(response.poll(cx));
                // Free the slot as soon as the call is done, not when the future is dropped.
                drop(permit.take());
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(Box::new(error))),
                None => panic!("bulkhead ResponseFuture polled after completion"),
            },
        }
    }
}
