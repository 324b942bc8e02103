//! The operator's API client: kube's stack over one HTTP/2 connection, with
//! hyper's read buffer bounded where HTTP/1.1 is all a server offers.
//!
//! kube speaks HTTP/1.1 only, and HTTP/1.1 carries one request at a time:
//! every watch holds a connection of its own for as long as it runs, and a
//! burst of reconciles opens more. An operator building a thousand sites
//! kept 42 connections to the API server, each with its TLS session, its
//! buffers and hyper's request queue. HTTP/2, offered over TLS (ALPN), puts
//! every watch and request on one connection as client-go does; pings find
//! a connection that went silent, as client-go's do, so a dead one fails
//! every request on it in seconds rather than at the read timeout.
//!
//! On HTTP/1.1 hyper grows a connection's read buffer while reads keep
//! filling it, up to about 408 KiB, and never gives the space back; a
//! watch's initial list arrives as fast as the server sends it, so every
//! watch of a large kind kept about 400 KiB for good. Watch events are small
//! and kube decodes the body line by line, whatever the size of each read,
//! so a lower ceiling costs a few more reads while a list streams.
//!
//! Otherwise the stack is what kube's `ClientBuilder::try_from` builds with
//! the features this crate enables: rustls (with the server name the
//! kubeconfig may fix), the connect, read and write timeouts, the base URI,
//! kube's retry of throttled and unavailable answers, authentication and
//! extra headers. Left out are kube's debug spans per HTTP request.

use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{ClientBuilder, ConfigExt, DynBody};
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The most an HTTP/1.1 connection's read buffer grows to (hyper's floor
/// is 8 KiB).
pub const READ_BUFFER_MAX: usize = 64 * 1024;

/// How long opening the shared connection may hold up the start.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/2 connection that has read nothing for this long is pinged
/// (client-go's `ReadIdleTimeout`); watches keep a healthy one busy anyway.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(30);
/// A ping unanswered this long closes the connection and fails what it
/// carried, so watches restart and requests retry on a new one
/// (client-go's `PingTimeout`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// What one HTTP/2 stream may have received and not yet been read: a watch
/// whose reader is slow holds at most this much before the API server waits
/// (hyper's default is 2 MiB, for links far longer than a cluster's).
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// The same for the whole connection, shared by every watch and request.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// What can stop the client from being built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("finding the cluster's configuration (in-cluster or kubeconfig): {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("setting up the API client: {0}")]
    Stack(#[from] kube::Error),
    #[error("the kubeconfig names proxy {0}, and this build reaches the API server directly only")]
    Proxy(String),
    #[error("the kubeconfig's tls-server-name {name:?} is not a valid server name: {source}")]
    ServerName {
        name: String,
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
}

/// A client of the cluster found the usual way (in-cluster, else
/// kubeconfig), its connection opened.
pub async fn infer() -> Result<Client, ClientError> {
    let client = from_config(Config::infer().await?)?;
    open_connection(&client).await;
    Ok(client)
}

/// Open the connection every request will share, before the watches start.
/// hyper learns that a connection speaks HTTP/2 only once it is open, so
/// requests sent together to a client with none each open their own, and a
/// watch keeps its connection for as long as it runs. (The same race after
/// a connection is lost lasts only as long as the watches that restarted
/// together: hyper's pool keeps one HTTP/2 connection per server, and the
/// others close with their requests.) A failure is only logged: the API
/// server may be starting, and the watches retry.
async fn open_connection(client: &Client) {
    match tokio::time::timeout(OPEN_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(version)) => tracing::debug!(version = %version.git_version, "connected to the API server"),
        Ok(Err(err)) => tracing::info!(%err, "could not reach the API server yet; the watches will retry"),
        Err(_) => {
            tracing::info!("the API server did not answer within {OPEN_TIMEOUT:?}; the watches will retry")
        }
    }
}

/// A client of the cluster `config` describes.
pub fn from_config(config: Config) -> Result<Client, ClientError> {
    // kube refuses a proxy it was built without; so does this.
    if let Some(proxy) = &config.proxy_url {
        return Err(ClientError::Proxy(proxy.to_string()));
    }
    let mut connector = TimeoutConnector::new(https_connector(&config)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http1_max_buf_size(READ_BUFFER_MAX)
        .http2_keep_alive_interval(PING_AFTER_IDLE)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http_client)
        .map_response(|response| {
            response
                .map(|body| Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>)
        })
        .boxed_clone();
    Ok(ClientBuilder::new(service, config.default_namespace).build())
}

/// TLS as kube sets it up (roots, client certificates, a reloaded CA file),
/// offering HTTP/2 first and HTTP/1.1 to a server without it; plain HTTP
/// stays HTTP/1.1.
fn https_connector(config: &Config) -> Result<HttpsConnector<HttpConnector>, ClientError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let builder =
        HttpsConnectorBuilder::new().with_tls_config(config.rustls_client_config()?).https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => {
            let server_name = name
                .clone()
                .try_into()
                .map_err(|source| ClientError::ServerName { name: name.clone(), source })?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(server_name))
        }
        None => builder,
    };
    Ok(builder.enable_http1().enable_http2().wrap_connector(http))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn config(url: &str) -> Config {
        Config::new(url.parse().expect("a URL"))
    }

    /// Answer one request with `body`, sent chunked in pieces of 100 KiB.
    async fn serve_once(listener: tokio::net::TcpListener, body: String) {
        let (mut socket, _) = listener.accept().await.expect("a connection");
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).await.expect("the request");
            request.push(byte[0]);
        }
        let mut answer =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for chunk in body.as_bytes().chunks(100 * 1024) {
            answer.extend(format!("{:x}\r\n", chunk.len()).bytes());
            answer.extend(chunk);
            answer.extend(b"\r\n");
        }
        answer.extend(b"0\r\n\r\n");
        socket.write_all(&answer).await.expect("the answer");
    }

    #[tokio::test]
    async fn an_object_larger_than_the_read_buffer_arrives_whole() {
        crate::tls::client::install_default_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let value = "x".repeat(5 * READ_BUFFER_MAX);
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "big", "namespace": "n"},
            "data": {"value": value},
        });
        let server = tokio::spawn(serve_once(listener, body.to_string()));
        let client = from_config(config(&url)).expect("builds");
        let got = Api::<ConfigMap>::namespaced(client, "n").get("big").await.expect("the ConfigMap");
        assert_eq!(got.data.unwrap_or_default().get("value").map(String::len), Some(value.len()));
        server.await.expect("the server");
    }

    #[tokio::test]
    async fn a_proxy_is_refused_with_its_address() {
        crate::tls::client::install_default_provider();
        let mut config = config("https://127.0.0.1:6443");
        config.proxy_url = Some("http://proxy.example:3128".parse().expect("a URL"));
        match from_config(config) {
            Err(err) => assert!(err.to_string().contains("proxy.example:3128"), "{err}"),
            Ok(_) => panic!("a client through a proxy this build cannot use"),
        }
    }

    /// What a TLS test server saw: connections accepted, and the protocol
    /// each negotiated (ALPN).
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        protocols: Mutex<Vec<Option<Vec<u8>>>>,
    }

    const SERVER_NAME: &str = "kubernetes.test";

    /// A TLS server offering `alpn` that answers every request with a
    /// ConfigMap after 200 ms, so concurrent requests overlap; returns the
    /// client's configuration for it (its CA, the fixed server name).
    async fn serve_tls(alpn: &[&[u8]], seen: Arc<Seen>) -> Config {
        use hyper::server::conn::{http1, http2};
        use hyper_util::rt::TokioIo;

        crate::tls::client::install_default_provider();
        let now = SystemTime::now();
        let ca = crate::tls::new_authority("test-ca", now).expect("a CA");
        let issued = crate::tls::issue_server(&ca, &[SERVER_NAME.into()], now, Duration::from_secs(3600))
            .expect("a server certificate");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("PEM certificates");
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("a PEM key");
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a server configuration");
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("https://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                seen.connections.fetch_add(1, Ordering::SeqCst);
                let Ok(stream) = acceptor.accept(socket).await else { continue };
                let protocol = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let h2 = protocol.as_deref() == Some(b"h2".as_slice());
                seen.protocols.lock().expect("not poisoned").push(protocol);
                let answer = hyper::service::service_fn(|request: hyper::Request<_>| async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let body = if request.uri().path() == "/version" {
                        serde_json::json!({"major": "1", "minor": "36", "gitVersion": "v1.36.0",
                            "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "",
                            "compiler": "", "platform": ""})
                    } else {
                        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "a", "namespace": "n"}})
                    };
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(body.to_string()),
                    )))
                });
                let io = TokioIo::new(stream);
                tokio::spawn(async move {
                    let _ = if h2 {
                        http2::Builder::new(TokioExecutor::new()).serve_connection(io, answer).await
                    } else {
                        http1::Builder::new().serve_connection(io, answer).await
                    };
                });
            }
        });
        let mut config = Config::new(url.parse().expect("a URL"));
        config.root_cert = Some(
            CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes())
                .map(|cert| cert.expect("the CA's PEM").to_vec())
                .collect(),
        );
        config.tls_server_name = Some(SERVER_NAME.into());
        config
    }

    /// Eight requests at once, as a starting operator's watches are, once
    /// the connection is open as [`infer`] opens it.
    async fn eight_at_once(config: Config) {
        let client = from_config(config).expect("builds");
        open_connection(&client).await;
        let api = Api::<ConfigMap>::namespaced(client, "n");
        let answers = futures::future::join_all((0..8).map(|_| api.get("a"))).await;
        for answer in answers {
            assert_eq!(answer.expect("a ConfigMap").metadata.name.as_deref(), Some("a"));
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_http2_connection() {
        let seen = Arc::new(Seen::default());
        eight_at_once(serve_tls(&[b"h2", b"http/1.1"], seen.clone()).await).await;
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        assert_eq!(*seen.protocols.lock().expect("not poisoned"), [Some(b"h2".to_vec())]);
    }

    #[tokio::test]
    async fn a_server_without_http2_is_spoken_to_in_http1() {
        let seen = Arc::new(Seen::default());
        eight_at_once(serve_tls(&[b"http/1.1"], seen.clone()).await).await;
        // One request at a time per connection: the eight overlapping ones
        // needed a connection each (the first reused the opening one's).
        assert_eq!(seen.connections.load(Ordering::SeqCst), 8);
        let protocols = seen.protocols.lock().expect("not poisoned");
        assert!(protocols.iter().all(|p| p.as_deref() == Some(b"http/1.1".as_slice())), "{protocols:?}");
    }

    #[test]
    fn an_invalid_fixed_server_name_is_refused_with_it() {
        crate::tls::client::install_default_provider();
        let mut config = config("https://127.0.0.1:6443");
        config.tls_server_name = Some("not a name!".into());
        match from_config(config) {
            Err(err) => assert!(err.to_string().contains("not a name!"), "{err}"),
            Ok(_) => panic!("a client with an unusable server name"),
        }
    }
}
