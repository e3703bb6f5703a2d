use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use serde_json::json;

use super::{MockUpstream, RecordedRequest, Reply, events};

/// Makes the mock behave like the OpenAI platform with `store: true`: a response id lives
/// with the credential that created it, and `previous_response_id` sent with any other
/// credential gets `400 previous_response_not_found`. Streamed answers report
/// `usage.input_tokens` as `tokens_per_item` × the number of `input` items sent, so a client
/// that resends its history shows up in the numbers.
///
/// The store is bounded like the platform's retention: it keeps at most
/// [`ResponseStore::DEFAULT_CAPACITY`] ids (or the capacity given to
/// [`ResponseStore::with_capacity`]) and forgets the oldest first, so a long run through the
/// mock does not grow with every turn, and an id older than that gets
/// `previous_response_not_found` as an expired one would.
///
/// ```
/// use tower_responses::testing::{MockUpstream, ResponseStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mock = MockUpstream::start().await.unwrap();
/// let store = ResponseStore::new(2300);
/// store.install(&mock);
/// store.insert("resp_old", "sk-key-b");
/// assert_eq!(store.owner("resp_old").as_deref(), Some("sk-key-b"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ResponseStore {
    owners: Arc<Mutex<Owners>>,
    next: Arc<Mutex<u64>>,
    tokens_per_item: u64,
}

/// Ids and their owners, with the order they were created in (oldest at the front).
#[derive(Debug, Default)]
struct Owners {
    map: HashMap<String, String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Owners {
    fn insert(&mut self, id: &str, credential: &str) {
        if self
            .map
            .insert(id.to_string(), credential.to_string())
            .is_none()
        {
            self.order.push_back(id.to_string());
        }
        while self.map.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&oldest);
        }
    }

    fn remove(&mut self, id: &str) {
        if self.map.remove(id).is_some() {
            self.order.retain(|k| k != id);
        }
    }
}

impl ResponseStore {
    /// How many ids a store made with [`ResponseStore::new`] keeps: the proxy's own owner map
    /// holds as many.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A store billing `tokens_per_item` input tokens per `input` item, keeping
    /// [`ResponseStore::DEFAULT_CAPACITY`] ids.
    pub fn new(tokens_per_item: u64) -> Self {
        Self::with_capacity(tokens_per_item, Self::DEFAULT_CAPACITY)
    }

    /// A store keeping at most `capacity` ids (at least one), the oldest forgotten first.
    ///
    /// ```
    /// use tower_responses::testing::ResponseStore;
    ///
    /// let store = ResponseStore::with_capacity(2300, 2);
    /// store.insert("resp_1", "sk-a");
    /// store.insert("resp_2", "sk-a");
    /// store.insert("resp_3", "sk-b");
    /// assert_eq!(store.owner("resp_1"), None);
    /// assert_eq!(store.owner("resp_3").as_deref(), Some("sk-b"));
    /// assert_eq!(store.len(), 2);
    /// ```
    pub fn with_capacity(tokens_per_item: u64, capacity: usize) -> Self {
        ResponseStore {
            owners: Arc::new(Mutex::new(Owners {
                capacity: capacity.max(1),
                ..Owners::default()
            })),
            next: Arc::default(),
            tokens_per_item,
        }
    }

    /// How many ids the store holds now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the store holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes `mock` answer `/responses` through this store (its handler).
    pub fn install(&self, mock: &MockUpstream) {
        let me = self.clone();
        mock.set_handler(move |r: &RecordedRequest| me.answer(r));
    }

    /// Records that `credential` owns `id` (a response created before the test started).
    pub fn insert(&self, id: &str, credential: &str) {
        self.lock().insert(id, credential);
    }

    /// The credential that owns `id`.
    pub fn owner(&self, id: &str) -> Option<String> {
        self.lock().map.get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to one request, as the handler gives it (`None` for requests it does not
    /// handle: no JSON body or no credential).
    ///
    /// Besides `POST /responses` (streamed when `stream: true`, else a JSON response object,
    /// `queued` for `background: true`), it answers the calls that name a stored response in
    /// their path, for its owner only (anyone else gets `404`, as on the platform):
    /// `GET`/`DELETE /responses/{id}`, `POST /responses/{id}/cancel` and
    /// `GET /responses/{id}/input_items`.
    pub fn answer(&self, r: &RecordedRequest) -> Option<Reply> {
        if let Some((id, operation)) = addressed(&r.path) {
            return self.answer_addressed(r, id, operation);
        }
        let body = r.json()?;
        let cred = r.credential.clone()?;
        if let Some(prev) = body["previous_response_id"].as_str() {
            if self.owner(prev).as_ref() != Some(&cred) {
                return Some(Reply::json(
                    StatusCode::BAD_REQUEST,
                    json!({"error": {
                        "message": format!("Previous response with id '{prev}' not found."),
                        "type": "invalid_request_error",
                        "param": "previous_response_id",
                        "code": "previous_response_not_found"
                    }}),
                ));
            }
        }
        let n = {
            let mut g = self.next.lock().unwrap_or_else(|p| p.into_inner());
            *g += 1;
            *g
        };
        let id = format!("resp_store_{n}");
        self.insert(&id, &cred);
        let items = body["input"].as_array().map_or(1, Vec::len) as u64;
        let usage = events::usage(items * self.tokens_per_item, 5);
        if body["stream"] != json!(true) {
            let background = body["background"] == json!(true);
            let (status, output) = if background {
                ("queued", Vec::new())
            } else {
                (
                    "completed",
                    vec![events::message_item(&format!("msg_store_{n}"), "ok")],
                )
            };
            let usage = (!background).then_some(usage);
            return Some(Reply::json(
                StatusCode::OK,
                events::response(&id, status, output, usage),
            ));
        }
        Some(Reply::sse(events::answer(
            &id,
            &format!("msg_store_{n}"),
            "ok",
            usage,
        )))
    }

    fn answer_addressed(&self, r: &RecordedRequest, id: &str, operation: &str) -> Option<Reply> {
        let cred = r.credential.clone()?;
        match (&r.method, operation) {
            (&Method::GET | &Method::DELETE, "")
            | (&Method::POST, "cancel")
            | (&Method::GET, "input_items") => {}
            _ => return None,
        }
        if self.owner(id).as_ref() != Some(&cred) {
            return Some(Reply::json(
                StatusCode::NOT_FOUND,
                json!({"error": {
                    "message": format!("Response with id '{id}' not found."),
                    "type": "invalid_request_error",
                    "param": null,
                    "code": null
                }}),
            ));
        }
        let body = match (&r.method, operation) {
            (&Method::DELETE, _) => {
                self.lock().remove(id);
                json!({"id": id, "object": "response", "deleted": true})
            }
            (_, "cancel") => events::response(id, "cancelled", Vec::new(), None),
            (_, "input_items") => json!({
                "object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false
            }),
            _ => events::response(id, "completed", Vec::new(), None),
        };
        Some(Reply::json(StatusCode::OK, body))
    }
}

/// `(id, operation)` of a path naming a stored response: `/responses/{id}` (operation `""`),
/// `/responses/{id}/cancel`, `/responses/{id}/input_items`, with or without `/v1`.
fn addressed(path: &str) -> Option<(&str, &str)> {
    let path = path.split('?').next().unwrap_or("");
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let rest = path.trim_end_matches('/').strip_prefix("/responses/")?;
    let (id, operation) = rest.split_once('/').unwrap_or((rest, ""));
    (!id.is_empty() && id != "compact" && !operation.contains('/')).then_some((id, operation))
}
