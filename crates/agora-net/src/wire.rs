//! Length-prefixed JSON frames over a libp2p stream: `u32` big-endian length, then that many
//! bytes of JSON. A frame longer than the limit is refused from its header, before any of it is
//! read or allocated; a frame that is not the expected JSON is an error, never a panic.

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Default largest frame (a generation request may carry a long conversation).
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// What can go wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the stream failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a frame of {len} bytes is larger than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("a frame is not a valid message: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("no frame arrived within {0:?}")]
    Timeout(Duration),
    #[error("the stream ended in the middle of a frame")]
    Truncated,
}

impl WireError {
    /// Whether the peer broke the protocol (as opposed to the connection failing).
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            WireError::TooLarge { .. } | WireError::Malformed(_) | WireError::Truncated
        )
    }
}

/// A framed, bidirectional stream with a frame-size limit.
pub struct Framed<S> {
    io: S,
    max: usize,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub fn new(io: S, max: usize) -> Self {
        Self {
            io,
            max,
            buf: Vec::new(),
        }
    }

    /// Sends one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), WireError> {
        let body = serde_json::to_vec(msg).map_err(WireError::Malformed)?;
        fits(body.len(), self.max)?;
        // One write: a small message and its header go out as one frame of the transport.
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        self.io.write_all(&frame).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Sends bytes as one frame (binary payloads, e.g. a model's chunk).
    pub async fn send_bytes(&mut self, body: &[u8]) -> Result<(), WireError> {
        fits(body.len(), self.max)?;
        // Two writes: a large body is not copied behind its header.
        self.io
            .write_all(&(body.len() as u32).to_be_bytes())
            .await?;
        self.io.write_all(body).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Receives one frame's bytes, refusing one longer than `max` (and than the stream's limit)
    /// from its header; `Ok(None)` when the peer closed the stream between frames.
    pub async fn recv_bytes(&mut self, max: usize) -> Result<Option<Vec<u8>>, WireError> {
        let mut body = Vec::new();
        let got = self.read_frame(max.min(self.max), &mut body).await?;
        Ok(got.then_some(body))
    }

    /// Reads one frame's body into `buf`, refusing a length over `max` from the header; false
    /// when the peer closed the stream between frames.
    async fn read_frame(&mut self, max: usize, buf: &mut Vec<u8>) -> Result<bool, WireError> {
        let mut len = [0u8; 4];
        match read_exact_or_eof(&mut self.io, &mut len).await? {
            ReadOutcome::Eof => return Ok(false),
            ReadOutcome::Partial => return Err(WireError::Truncated),
            ReadOutcome::Full => {}
        }
        let len = u32::from_be_bytes(len) as usize;
        fits(len, max)?;
        buf.clear();
        buf.resize(len, 0);
        match read_exact_or_eof(&mut self.io, buf).await? {
            ReadOutcome::Full => Ok(true),
            _ if len == 0 => Ok(true),
            _ => Err(WireError::Truncated),
        }
    }

    /// Sends raw bytes as one frame (tests of misbehaving peers use this).
    pub async fn send_raw(&mut self, declared_len: u32, body: &[u8]) -> Result<(), WireError> {
        self.io.write_all(&declared_len.to_be_bytes()).await?;
        self.io.write_all(body).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Receives one message; `Ok(None)` when the peer closed the stream between frames.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let mut buf = std::mem::take(&mut self.buf);
        let got = self.read_frame(self.max, &mut buf).await;
        let msg = match got {
            Ok(true) => serde_json::from_slice(&buf)
                .map(Some)
                .map_err(WireError::Malformed),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        if buf.capacity() <= 64 << 10 {
            self.buf = buf; // a large buffer is not kept around for the next, small frames
        }
        msg
    }

    /// [`Framed::recv`] with a deadline.
    pub async fn recv_timeout<T: DeserializeOwned>(
        &mut self,
        limit: Duration,
    ) -> Result<Option<T>, WireError> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Timeout(limit)),
        }
    }

    /// Closes the writing half.
    pub async fn close(&mut self) -> Result<(), WireError> {
        self.io.close().await?;
        Ok(())
    }

    pub fn into_inner(self) -> S {
        self.io
    }
}

enum ReadOutcome {
    Full,
    Partial,
    Eof,
}

/// A frame of `len` bytes is refused when over `max`.
fn fits(len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(())
}

async fn read_exact_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<ReadOutcome> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(if filled == 0 {
                ReadOutcome::Eof
            } else {
                ReadOutcome::Partial
            });
        }
        filled += n;
    }
    Ok(ReadOutcome::Full)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::io::Cursor;
    use serde_json::{Value, json};

    /// An in-memory duplex: reads from `input`, writes into `output`.
    struct Pipe {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl AsyncRead for Pipe {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.output.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn framed(input: Vec<u8>, max: usize) -> Framed<Pipe> {
        Framed::new(
            Pipe {
                input: Cursor::new(input),
                output: Vec::new(),
            },
            max,
        )
    }

    #[tokio::test]
    async fn round_trip() {
        let mut a = framed(vec![], 1024);
        a.send(&json!({"x": 1})).await.unwrap();
        a.send(&json!("two")).await.unwrap();
        let bytes = a.into_inner().output;
        let mut b = framed(bytes, 1024);
        assert_eq!(b.recv::<Value>().await.unwrap(), Some(json!({"x": 1})));
        assert_eq!(b.recv::<Value>().await.unwrap(), Some(json!("two")));
        assert!(b.recv::<Value>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_is_refused_from_the_header() {
        let mut b = framed(u32::MAX.to_be_bytes().to_vec(), 1024);
        let e = b.recv::<Value>().await.unwrap_err();
        assert!(matches!(e, WireError::TooLarge { len, max: 1024 } if len == u32::MAX as usize));
        assert!(e.is_violation());
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors() {
        let mut g = vec![0, 0, 0, 3];
        g.extend_from_slice(b"{{{");
        assert!(matches!(
            framed(g, 1024).recv::<Value>().await,
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            framed(vec![0, 0], 1024).recv::<Value>().await,
            Err(WireError::Truncated)
        ));
        assert!(matches!(
            framed(vec![0, 0, 0, 9, b'1'], 1024).recv::<Value>().await,
            Err(WireError::Truncated)
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut f = framed(bytes, 256);
                for _ in 0..4 {
                    if f.recv::<Value>().await.is_err() { break; }
                }
            });
        }
    }
}
