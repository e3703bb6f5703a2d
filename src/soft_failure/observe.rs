use std::fmt;
use std::sync::Arc;

/// Sees every event of a stream that [`SoftFailureDetectLayer`](super::SoftFailureDetectLayer)
/// parses, so outer layers learn from a stream without parsing it again.
pub trait StreamObserver: Send + Sync + 'static {
    /// One event: the credential that served it (from the request's
    /// [`CredentialLease`](crate::credentials::CredentialLease), if any), its type, and its
    /// `data` bytes.
    fn event(&self, credential: Option<&str>, event_type: &str, data: &[u8]);
}

/// Request extension: the observers of this request's stream. Layers add theirs with
/// [`StreamObservers::add`] before calling inward.
#[derive(Clone, Default)]
pub struct StreamObservers(Vec<Arc<dyn StreamObserver>>);

impl fmt::Debug for StreamObservers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StreamObservers")
            .field(&self.0.len())
            .finish()
    }
}

impl StreamObservers {
    /// Adds `observer` to the request's observers.
    pub fn add<B>(req: &mut http::Request<B>, observer: Arc<dyn StreamObserver>) {
        match req.extensions_mut().get_mut::<StreamObservers>() {
            Some(list) => list.0.push(observer),
            None => {
                req.extensions_mut().insert(StreamObservers(vec![observer]));
            }
        }
    }

    pub(super) fn notify(&self, credential: Option<&str>, event_type: &str, data: &[u8]) {
        for o in &self.0 {
            o.event(credential, event_type, data);
        }
    }
}

/// Response extension: the stream's events were (and will be) shown to the request's
/// [`StreamObservers`]; an observer need not parse the body itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsObserved;
