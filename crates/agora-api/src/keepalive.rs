//! A keep-alive HTTP/1.1 client connection for load generators (`agora-bench`): one request in
//! flight, reconnecting after an error. The blocking [`crate::client::Client`] is for tools; this
//! is for many concurrent connections on one runtime.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::tlog::{Result, TlogHttpError};

/// `host:port` and path prefix of an `http://` URL.
pub fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| TlogHttpError::Transport {
            url: url.to_string(),
            msg: "only http:// URLs are supported by the load generator".into(),
        })?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    Ok((host.to_string(), path.to_string()))
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(host: &str) -> Conn {
        Conn {
            host: host.to_string(),
            sender: None,
        }
    }

    async fn sender(&mut self) -> std::result::Result<&mut SendRequest<Full<Bytes>>, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = tokio::net::TcpStream::connect(&self.host)
                .await
                .map_err(|e| format!("connect {}: {e}", self.host))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    /// Send a request; returns status and body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> std::result::Result<(u16, Bytes), String> {
        let host = self.host.clone();
        let s = self.sender().await?;
        s.ready().await.map_err(|e| e.to_string())?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let result = s.send_request(req).await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.to_string());
            }
        };
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:80/log/").ok(),
            Some(("127.0.0.1:80".into(), "/log".into()))
        );
        assert!(split_url("https://x").is_err());
    }
}
