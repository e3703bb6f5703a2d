//! A proxy run as a target of the harness: `serve-proxy` and `chaos serve-proxy` each build a
//! `ProxyConfig` and hand it here, which binds it, prints `READY <addr>` for
//! [`spawn_self`](crate::targets::spawn_self) and serves until killed.

use std::time::{Duration, SystemTime};

use tower_responses::credentials::SessionBinding;
use tower_responses::proxy::{Proxy, ProxyConfig};

/// State written into the proxy's store before it takes traffic (`--preload-ids`,
/// `--preload-sessions`), so per-request cost can be read against a full store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Preload {
    /// Response ids recorded with an owner (the store keeps its newest `capacity` of them).
    pub ids: usize,
    /// Session bindings recorded.
    pub sessions: usize,
}

impl Preload {
    pub fn from_args(args: &[String]) -> Preload {
        let n = |name| {
            crate::flag(args, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Preload {
            ids: n("--preload-ids"),
            sessions: n("--preload-sessions"),
        }
    }

    fn apply(self, proxy: &Proxy) {
        if self.ids == 0 && self.sessions == 0 {
            return;
        }
        let Some(pool) = proxy.pool() else {
            eprintln!("preload: the proxy has no credential pool, nothing to fill");
            return;
        };
        let Some(owner) = pool.labels().first().cloned() else {
            return;
        };
        let state = pool.state();
        let expires = SystemTime::now() + Duration::from_secs(7 * 24 * 3600);
        // Ids shaped like the upstream's (`resp_` and 48 hex digits), sessions like Codex's.
        for i in 0..self.ids {
            state.put_owner(&format!("resp_{i:048x}"), &owner, expires);
        }
        for i in 0..self.sessions {
            let binding = SessionBinding {
                primary: owner.to_string(),
                fallback: None,
                last: Some(owner.to_string()),
            };
            state.set_session(&format!("0199a0b4-preload-{i:012}"), binding);
        }
        eprintln!(
            "preload: {} response ids and {} sessions recorded",
            self.ids, self.sessions
        );
    }
}

/// Binds `config`, fills its state with `preload`, prints `READY <addr>` and serves for ever;
/// the process exit code.
pub fn serve_child(config: ProxyConfig, preload: Preload) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return 1;
        }
    };
    let result: Result<(), String> = rt.block_on(async move {
        let proxy = Proxy::bind(config).await.map_err(|e| e.to_string())?;
        preload.apply(&proxy);
        println!("READY {}", proxy.local_addr());
        proxy
            .serve(std::future::pending())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
