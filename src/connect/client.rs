use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::TaggingConnector;

/// The connector stack every upstream client uses: TCP, rustls, then tagging.
pub type UpstreamConnector = TaggingConnector<HttpsConnector<HttpConnector>>;

/// Builds the hyper-util client for upstream traffic: rustls with the webpki roots (or your
/// own), tagged connections, and a pool that lets idle connections go before providers do.
///
/// Providers and their load balancers close idle keep-alive connections after about 30 s,
/// while hyper-util keeps them 90 s by default; reusing one of those fails the next request.
/// The default idle timeout here is 20 s, below every provider limit we know of.
/// A maximum connection age (default 5 min) and one transparent retry on a fresh connection
/// when a stale pooled one fails anyway come from
/// [`FreshConnectionLayer::build`](crate::fresh::FreshConnectionLayer::build), which takes this
/// builder.
///
/// ```
/// use tower_responses::connect::UpstreamClientBuilder;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let builder = UpstreamClientBuilder::new().pool_idle_timeout(Duration::from_secs(10));
/// assert_eq!(builder.idle_timeout(), Duration::from_secs(10));
/// // The client as the bottom of a stack (or under `FreshConnectionLayer`).
/// let client = builder.service();
/// # let _ = client;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct UpstreamClientBuilder {
    pool_idle_timeout: Duration,
    connect_timeout: Duration,
    max_idle_per_host: usize,
    roots: Option<rustls::RootCertStore>,
}

impl Default for UpstreamClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClientBuilder {
    /// Defaults: 20 s pool idle timeout, 10 s connect timeout, the webpki roots.
    pub fn new() -> Self {
        UpstreamClientBuilder {
            pool_idle_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            max_idle_per_host: 64,
            roots: None,
        }
    }

    /// How long a pooled connection may idle before it is closed instead of reused.
    /// Keep it below the provider's own idle limit.
    pub fn pool_idle_timeout(mut self, idle: Duration) -> Self {
        self.pool_idle_timeout = idle;
        self
    }

    /// The configured pool idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.pool_idle_timeout
    }

    /// Time allowed to open a TCP connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Idle connections kept per host.
    pub fn max_idle_per_host(mut self, n: usize) -> Self {
        self.max_idle_per_host = n;
        self
    }

    /// Trusts this CA certificate (DER) instead of the webpki set: a private CA, or a test
    /// CA. Call it once per certificate; the first call replaces the webpki roots.
    pub fn root_certificate_der(mut self, der: &[u8]) -> Result<Self, crate::error::ConfigError> {
        let roots = self.roots.get_or_insert_with(rustls::RootCertStore::empty);
        roots
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .map_err(|e| crate::error::ConfigError(format!("root certificate: {e}")))?;
        Ok(self)
    }

    /// The tagged, TLS-capable connector alone, for callers that build their own client.
    pub fn connector(&self) -> UpstreamConnector {
        let roots = self.roots.clone().unwrap_or_else(|| rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The ring provider supports the safe default versions, so this cannot fail.
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        TaggingConnector::new(https)
    }

    /// Builds the client.
    pub(crate) fn build<B>(&self) -> Client<UpstreamConnector, B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        self.build_with(self.connector())
    }

    /// Builds the client on a connector made by [`connector`](Self::connector), keeping a clone
    /// of it lets the caller read [`TaggingConnector::opened`].
    pub(crate) fn build_with<B>(&self, connector: UpstreamConnector) -> Client<UpstreamConnector, B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(self.max_idle_per_host)
            .build(connector)
    }
}

impl UpstreamClientBuilder {
    /// The client as the innermost service of a layer stack, with an unpooled client on the
    /// same tagged connector for requests that ask for a
    /// [`NewConnection`](super::NewConnection).
    pub fn service(&self) -> super::ClientService<UpstreamConnector> {
        let connector = self.connector();
        super::ClientService::with_connector(self.build_with(connector.clone()), connector)
    }
}
