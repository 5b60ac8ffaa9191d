//! One CONNECT stream as a byte stream (`AsyncRead` + `AsyncWrite`), so that an HTTP server or
//! client (hyper) can run inside a tunnel: the waypoint serves HTTP in the stream a node opened
//! to it, and speaks HTTP to an endpoint in a stream it opened itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A CONNECT stream's two halves. Reads return `prefix` first (bytes already taken off the
/// stream, e.g. to detect the protocol); shutdown ends the stream (END_STREAM), as a FIN would.
pub struct StreamIo {
    send: SendStream<Bytes>,
    /// Taken only by `drop`.
    recv: Option<RecvStream>,
    /// Received and not yet read.
    pending: Bytes,
    shut: bool,
    /// Whatever must live as long as the stream (a pooled connection's lease).
    _keep: Option<Box<dyn Send + Sync>>,
}

impl StreamIo {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        StreamIo {
            send,
            recv: Some(recv),
            pending: Bytes::new(),
            shut: false,
            _keep: None,
        }
    }

    /// Reads return `prefix` before anything still on the stream.
    pub fn with_prefix(mut self, prefix: Bytes) -> Self {
        self.pending = prefix;
        self
    }

    pub fn keeping(mut self, keep: Box<dyn Send + Sync>) -> Self {
        self._keep = Some(keep);
        self
    }
}

/// How long a finished stream waits for the peer's end before it is dropped anyway.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for StreamIo {
    /// Dropping a stream the peer has not finished sends RST_STREAM(CANCEL), and a peer that
    /// gets a reset may drop the data it has not delivered yet: the last response of a
    /// `connection: close` exchange would be lost. Once our side has ended cleanly, the peer's
    /// remaining data is read (and discarded) until it ends too.
    fn drop(&mut self) {
        let Some(mut recv) = self.recv.take() else {
            return;
        };
        if !self.shut || recv.is_end_stream() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let drain = async {
                while let Some(Ok(chunk)) = recv.data().await {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                }
            };
            let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
        });
    }
}

fn stream_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HBONE stream failed"));
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl AsyncRead for StreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            let Some(recv) = self.recv.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(stream_error(e))),
                Some(Ok(chunk)) => {
                    // The window opens as data arrives; the bytes still held are bounded by
                    // one frame, so the peer is not made to wait on our reader.
                    recv.flow_control()
                        .release_capacity(chunk.len())
                        .map_err(stream_error)?;
                    self.pending = chunk;
                }
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(0)) => {
                // Capacity was reserved but none granted yet: ask again on the next poll.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Ok(cap)) => {
                let n = cap.min(buf.len());
                self.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(stream_error)?;
                Poll::Ready(Ok(n))
            }
            Some(Err(e)) => Poll::Ready(Err(stream_error(e))),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Data frames are queued in h2 and written by its connection task.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send
                .send_data(Bytes::new(), true)
                .map_err(stream_error)?;
        }
        Poll::Ready(Ok(()))
    }
}
