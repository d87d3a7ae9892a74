//! The object store client behind a URL and the engine's private async runtime.
//!
//! HTTP(S) URLs go to an `object_store` HTTP store rooted at `scheme://host[:port]` (`hf://`
//! URLs too, at the Hub's address, with the Hub token as a bearer token when set); `s3://`
//! URLs to its S3 store configured from the environment the way AWS tools are (`AWS_*`
//! variables, web identity, container and instance credentials; `AWS_ENDPOINT_URL` for
//! S3-compatible stores, plain `http://` endpoints allowed when named so). Retries with
//! exponential backoff are the store's: 5xx answers, resets and timeouts, a body cut short
//! resumed from the last byte received with its `Content-Range` checked.
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::{
    BackoffConfig, ClientOptions, HeaderMap, HeaderValue, ObjectStore, RetryConfig,
};
use tokio::runtime::Runtime;

use super::url::{hub_token, RemoteUrl, Scheme};
use super::{RemoteError, RemoteSettings};

/// The runtime every remote read runs on (two I/O threads: the work is waiting on sockets).
/// Callers block on it from ordinary threads; nothing async leaves the engine.
pub(crate) fn runtime() -> Result<&'static Runtime, RemoteError> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("flashpack-remote")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| RemoteError::Setup {
            reason: format!("async runtime: {e}"),
            source: None,
        })
}

/// reqwest is built without a default TLS provider; ring is ours. Another library in the
/// process may have installed one first, which serves as well.
fn install_tls_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The store holding `url`'s object, and the object's path in it.
pub(crate) fn open_store(url: &RemoteUrl, settings: &RemoteSettings) -> Result<Store, RemoteError> {
    // The store draws each wait from [init, 2 x the previous one], capped at the max: an empty
    // range (a zero init, or a max under half the init) would panic there.
    let init_backoff = settings.initial_backoff.max(Duration::from_millis(1));
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff,
            max_backoff: settings.max_backoff.max(init_backoff),
            base: 2.0,
        },
        max_retries: settings.retries,
        retry_timeout: settings.timeout,
    };
    let client = ClientOptions::new()
        .with_timeout(settings.request_timeout)
        .with_connect_timeout(settings.connect_timeout);
    install_tls_provider();
    match url.scheme {
        Scheme::Http | Scheme::Https | Scheme::Hf => http_store(url, client, retry),
        Scheme::S3 => s3_store(url, client, retry),
    }
}

type Store = (Arc<dyn ObjectStore>, object_store::path::Path);

fn setup(e: object_store::Error) -> RemoteError {
    RemoteError::Setup {
        reason: e.to_string(),
        source: Some(Box::new(e)),
    }
}

/// An HTTP(S) store for `url` (the Hub's, with `HF_TOKEN` sent to the Hub only).
fn http_store(
    url: &RemoteUrl,
    client: ClientOptions,
    retry: RetryConfig,
) -> Result<Store, RemoteError> {
    let path = object_store::path::Path::from_url_path(&url.key)
        .map_err(|e| RemoteError::BadUrl(e.to_string()))?;
    let mut client = client.with_allow_http(url.is_plain_http());
    // The Hub token goes to the Hub only (reqwest drops it on a redirect to another host, such
    // as the Hub's CDN).
    if let (Scheme::Hf, Some(token)) = (url.scheme, hub_token()) {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| RemoteError::Setup {
                reason: "HF_TOKEN is not a valid HTTP header value".into(),
                source: None,
            })?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", value);
        client = client.with_default_headers(headers);
    }
    let store = HttpBuilder::new()
        .with_url(url.base.clone())
        .with_retry(retry)
        .with_client_options(client)
        .build()
        .map_err(setup)?;
    Ok((Arc::new(store), path))
}

/// An S3 store for `url`'s bucket, configured from the environment (`AWS_*`; an
/// `AWS_ENDPOINT_URL[_S3]` makes path-style requests to an S3-compatible store).
fn s3_store(
    url: &RemoteUrl,
    client: ClientOptions,
    retry: RetryConfig,
) -> Result<Store, RemoteError> {
    let path = object_store::path::Path::parse(&url.key)
        .map_err(|e| RemoteError::BadUrl(e.to_string()))?;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(url.base.clone())
        .with_retry(retry);
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok();
    let plain_http = endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    if let Some(e) = endpoint {
        // Path-style requests (`endpoint/bucket/key`), as S3-compatible stores expect.
        builder = builder
            .with_endpoint(e)
            .with_virtual_hosted_style_request(false);
    }
    let store = builder
        .with_client_options(client.with_allow_http(plain_http))
        .build()
        .map_err(setup)?;
    Ok((Arc::new(store), path))
}
