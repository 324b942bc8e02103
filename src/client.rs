//! The operator's API client: kube's stack, with hyper's read buffer bounded.
//!
//! hyper grows a connection's read buffer while reads keep filling it, up to
//! about 408 KiB, and never gives the space back. A watch's initial list
//! arrives as fast as the API server sends it, so every watch of a large kind
//! kept about 400 KiB for good: 3.4 MB of a restarted operator's heap at a
//! thousand sites (heaptrack). Watch events are small and kube decodes the
//! body line by line, whatever the size of each read, so a lower ceiling
//! costs a few more reads while a list streams and nothing after.
//!
//! Otherwise the stack is what kube's `ClientBuilder::try_from` builds with
//! the features this crate enables: rustls, the connect, read and write
//! timeouts, the base URI, kube's retry of throttled and unavailable
//! answers, authentication and extra headers. Left out are kube's debug
//! spans per HTTP request.

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{ClientBuilder, ConfigExt, DynBody};
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The most a connection's read buffer grows to (hyper's floor is 8 KiB).
pub const READ_BUFFER_MAX: usize = 64 * 1024;

/// What can stop the client from being built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("finding the cluster's configuration (in-cluster or kubeconfig): {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("setting up the API client: {0}")]
    Stack(#[from] kube::Error),
    #[error("the kubeconfig names proxy {0}, and this build reaches the API server directly only")]
    Proxy(String),
}

/// A client of the cluster found the usual way: in-cluster, else kubeconfig.
pub async fn infer() -> Result<Client, ClientError> {
    from_config(Config::infer().await?)
}

/// A client of the cluster `config` describes.
pub fn from_config(config: Config) -> Result<Client, ClientError> {
    // kube refuses a proxy it was built without; so does this.
    if let Some(proxy) = &config.proxy_url {
        return Err(ClientError::Proxy(proxy.to_string()));
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http1_max_buf_size(READ_BUFFER_MAX)
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;
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
}
