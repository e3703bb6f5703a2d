use std::fmt;
use std::sync::Arc;

use crate::classify::Failure;

/// Receives failures that arrive after a response was handed to the client (mid-stream),
/// so the pool can cool the credential for later requests.
pub trait LeaseReporter: Send + Sync + 'static {
    /// A failure seen on a request served by `credential`.
    fn report(&self, credential: &str, failure: &Failure);
}

impl<F> LeaseReporter for F
where
    F: Fn(&str, &Failure) + Send + Sync + 'static,
{
    fn report(&self, credential: &str, failure: &Failure) {
        self(credential, failure)
    }
}

/// Request extension: which credential serves this request, and where to report failures
/// that show up after the response is committed to the client.
///
/// `CredentialRotateLayer` inserts it; inner layers (the SSE body of `SoftFailureDetectLayer`)
/// call [`report`](Self::report).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower_responses::credentials::CredentialLease;
/// use tower_responses::classify::{Failure, FailureClass};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let sink = seen.clone();
/// let lease = CredentialLease::new("key-1", move |cred: &str, f: &Failure| {
///     sink.lock().unwrap().push((cred.to_string(), f.class));
/// });
/// lease.report(&Failure::new(FailureClass::QuotaExhausted));
/// assert_eq!(seen.lock().unwrap()[0], ("key-1".to_string(), FailureClass::QuotaExhausted));
/// ```
#[derive(Clone)]
pub struct CredentialLease {
    credential: Arc<str>,
    reporter: Arc<dyn LeaseReporter>,
}

impl CredentialLease {
    /// A lease on `credential` reporting to `reporter`.
    pub fn new(credential: impl Into<Arc<str>>, reporter: impl LeaseReporter) -> Self {
        CredentialLease {
            credential: credential.into(),
            reporter: Arc::new(reporter),
        }
    }

    /// The credential's label.
    pub fn credential(&self) -> &str {
        &self.credential
    }

    /// Reports a failure against the leased credential.
    pub fn report(&self, failure: &Failure) {
        self.reporter.report(&self.credential, failure);
    }
}

impl fmt::Debug for CredentialLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialLease")
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}
