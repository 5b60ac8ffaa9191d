//! Moves bytes between a TCP socket and an HTTP/2 stream until both directions are done.
//!
//! Half-close and resets cross the tunnel: a FIN read from TCP becomes END_STREAM, END_STREAM
//! becomes a FIN; a TCP reset becomes RST_STREAM(CONNECT_ERROR) and an RST_STREAM becomes a TCP
//! reset. The copy path reuses one read buffer per connection and frees it while the
//! connection is idle, so idle tunnels cost no buffer memory.

use std::future::{Future, poll_fn};
use std::io;
use std::net::Shutdown;
use std::pin::pin;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Read size when data is flowing: large enough to fill TLS records and HTTP/2 frames, small
/// enough to stay below malloc's mmap threshold.
const READ_CHUNK: usize = 64 * 1024;
const MIN_READ: usize = 4 * 1024;

/// How a spliced connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions were closed in order.
    Closed,
    /// The TCP side failed or was reset; the stream was reset.
    Tcp(io::ErrorKind),
    /// The stream was reset by the peer (or its connection died); the TCP side was reset.
    Stream(String),
    /// The caller cancelled (e.g. policy now denies it); both sides were reset.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpliceOutcome {
    /// Bytes read from TCP and sent into the stream.
    pub sent: u64,
    /// Bytes received from the stream and written to TCP.
    pub received: u64,
    pub end: SpliceEnd,
}

enum Failure {
    Tcp(io::Error),
    Stream(h2::Error),
}

/// Splices `tcp` with the stream (`send`, `recv`) until both directions end, either side fails,
/// or `cancel` completes.
pub async fn splice(
    tcp: TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    cancel: impl Future<Output = ()>,
) -> SpliceOutcome {
    let mut sent = 0u64;
    let mut received = 0u64;
    let end = both_ways(
        tcp_to_stream(&tcp, &mut send, &mut sent),
        stream_to_tcp(&tcp, &mut recv, &mut received),
        cancel,
    )
    .await;
    let end = match end {
        Ok(true) => SpliceEnd::Closed,
        Ok(false) => {
            send.send_reset(Reason::CANCEL);
            reset_tcp(&tcp);
            SpliceEnd::Cancelled
        }
        Err(Failure::Tcp(e)) => {
            send.send_reset(Reason::CONNECT_ERROR);
            SpliceEnd::Tcp(e.kind())
        }
        Err(Failure::Stream(e)) => {
            reset_tcp(&tcp);
            SpliceEnd::Stream(e.to_string())
        }
    };
    SpliceOutcome {
        sent,
        received,
        end,
    }
}

/// Splices two HTTP/2 streams (a waypoint's downstream CONNECT and its upstream one) until both
/// directions end, either fails, or `cancel` completes. `sent` counts downstream to upstream.
/// A reset on one side resets the other.
///
/// Each direction owns what it reads from and writes to, and hands its send half back when it
/// is done, so that a reset arriving on that stream is still seen while the other direction
/// waits (for data, or for the other peer to read): nothing can hang on a vanished peer.
pub async fn splice_streams(
    (down_send, down_recv): (SendStream<Bytes>, RecvStream),
    (up_send, up_recv): (SendStream<Bytes>, RecvStream),
    cancel: impl Future<Output = ()>,
) -> SpliceOutcome {
    let mut sent = 0u64;
    let mut received = 0u64;
    let end = {
        let mut upward = pin!(stream_to_stream(down_recv, up_send, &mut sent));
        let mut downward = pin!(stream_to_stream(up_recv, down_send, &mut received));
        let mut cancel = pin!(cancel);
        // The send half of a finished direction: upstream's once upward is done, downstream's
        // once downward is.
        let (mut up_done, mut down_done): (Option<SendStream<Bytes>>, Option<SendStream<Bytes>>) =
            (None, None);
        loop {
            tokio::select! {
                (r, to) = &mut upward, if up_done.is_none() => match r {
                    Ok(()) => up_done = Some(to),
                    Err(e) => break Err(e),
                },
                (r, to) = &mut downward, if down_done.is_none() => match r {
                    Ok(()) => down_done = Some(to),
                    Err(e) => break Err(e),
                },
                r = reset_of(&mut up_done), if up_done.is_some() && down_done.is_none() => break Err(r),
                r = reset_of(&mut down_done), if down_done.is_some() && up_done.is_none() => break Err(r),
                _ = &mut cancel => break Ok(false),
            }
            if up_done.is_some() && down_done.is_some() {
                break Ok(true);
            }
        }
        // Leaving this block drops an unfinished direction with its streams: h2 resets a stream
        // whose halves are all gone (CANCEL).
    };
    let end = match end {
        Ok(true) => SpliceEnd::Closed,
        Ok(false) => SpliceEnd::Cancelled,
        Err(e) => SpliceEnd::Stream(e.to_string()),
    };
    SpliceOutcome {
        sent,
        received,
        end,
    }
}

/// Waits for a reset on a finished direction's send half.
async fn reset_of(send: &mut Option<SendStream<Bytes>>) -> h2::Error {
    match send {
        Some(s) => reset_reason(s).await,
        None => std::future::pending().await,
    }
}

/// Waits until the peer resets the stream `send` belongs to (or its connection fails).
async fn reset_reason(send: &mut SendStream<Bytes>) -> h2::Error {
    poll_fn(|cx| send.poll_reset(cx))
        .await
        .map(h2::Error::from)
        .unwrap_or_else(|e| e)
}

/// One direction between two streams; returns the send half it wrote to. Capacity is
/// released to the sender only once its data went out on the other stream, so a slow reader
/// slows the writer instead of filling memory.
async fn stream_to_stream(
    mut from: RecvStream,
    mut to: SendStream<Bytes>,
    total: &mut u64,
) -> (Result<(), h2::Error>, SendStream<Bytes>) {
    let r = copy_stream(&mut from, &mut to, total).await;
    if let Err(e) = &r {
        to.send_reset(e.reason().unwrap_or(Reason::CANCEL));
    }
    (r, to)
}

async fn copy_stream(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    total: &mut u64,
) -> Result<(), h2::Error> {
    loop {
        let chunk = tokio::select! {
            c = from.data() => c,
            r = reset_reason(to) => return Err(r),
        };
        let Some(chunk) = chunk else {
            return to.send_data(Bytes::new(), true);
        };
        let mut chunk = chunk?;
        let len = chunk.len();
        if len == 0 {
            continue;
        }
        while !chunk.is_empty() {
            to.reserve_capacity(chunk.len());
            match poll_fn(|cx| to.poll_capacity(cx)).await {
                Some(Ok(0)) => tokio::task::yield_now().await,
                Some(Ok(cap)) => {
                    let part = chunk.split_to(cap.min(chunk.len()));
                    to.send_data(part, false)?;
                }
                Some(Err(e)) => return Err(e),
                // The stream was reset: its reason is what the other side should see.
                None => return Err(reset_reason(to).await),
            }
        }
        *total += len as u64;
        from.flow_control().release_capacity(len)?;
    }
}

/// Drives both directions until both finish (`Ok(true)`), `cancel` fires (`Ok(false)`), or one
/// fails (the other is dropped where it stands).
async fn both_ways<E>(
    up: impl Future<Output = Result<(), E>>,
    down: impl Future<Output = Result<(), E>>,
    cancel: impl Future<Output = ()>,
) -> Result<bool, E> {
    let (mut up, mut down, mut cancel) = (pin!(up), pin!(down), pin!(cancel));
    let (mut up_done, mut down_done) = (false, false);
    loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                r?;
                up_done = true;
            }
            r = &mut down, if !down_done => {
                r?;
                down_done = true;
            }
            _ = &mut cancel => return Ok(false),
        }
        if up_done && down_done {
            return Ok(true);
        }
    }
}

/// Closing with SO_LINGER 0 sends RST instead of FIN, which is how a stream reset must look to
/// the TCP peer.
pub fn reset_tcp(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
}

/// One non-blocking read attempt into `buf`; `None` means wait for readiness. While waiting
/// the buffer is let go, so an idle connection holds no buffer memory.
fn try_read(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_CHUNK);
    }
    // A read that does not fill the buffer has drained the socket (epoll is edge-triggered):
    // forgetting its readiness then spares the next call a read that would only say EAGAIN,
    // one syscall per message on a request/response connection. tokio's own `poll_read` does
    // the same; `try_read_buf` does not, and `try_io` forgets readiness only on WouldBlock.
    let room = buf.capacity() - buf.len();
    let mut drained = None;
    let read = tcp.try_io(Interest::READABLE, || match tcp.try_read_buf(buf)? {
        n if 0 < n && n < room => {
            drained = Some(n);
            Err(io::ErrorKind::WouldBlock.into())
        }
        n => Ok(n),
    });
    match read {
        Ok(n) => Ok(Some(n)),
        Err(_) if drained.is_some() => Ok(drained),
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted =>
        {
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What `tcp` has already received, up to `MIN_READ` bytes, without waiting: `None` when
/// nothing is there yet or the peer has finished (the splice sees that again). Runs once per
/// connection, so it does not take a full `READ_CHUNK`; anything more follows in the splice.
pub fn read_now(tcp: &TcpStream) -> io::Result<Option<Bytes>> {
    // Room for exactly MIN_READ: `try_read` reads into it without reserving a chunk.
    let mut buf = BytesMut::with_capacity(MIN_READ);
    Ok(match try_read(tcp, &mut buf)? {
        Some(n) if n > 0 => Some(buf.freeze()),
        _ => None,
    })
}

async fn tcp_to_stream(
    tcp: &TcpStream,
    send: &mut SendStream<Bytes>,
    total: &mut u64,
) -> Result<(), Failure> {
    let mut buf = BytesMut::new();
    loop {
        let n = match try_read(tcp, &mut buf).map_err(Failure::Tcp)? {
            Some(n) => n,
            None => {
                // While the workload is quiet, a reset of the stream must still reach it (the
                // other direction may already be finished and no longer listening).
                tokio::select! {
                    r = tcp.readable() => r.map_err(Failure::Tcp)?,
                    r = poll_fn(|cx| send.poll_reset(cx)) => {
                        return Err(Failure::Stream(r.map(h2::Error::from).unwrap_or_else(|e| e)));
                    }
                }
                continue;
            }
        };
        if n == 0 {
            return send.send_data(Bytes::new(), true).map_err(Failure::Stream);
        }
        *total += n as u64;
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(0)) => tokio::task::yield_now().await,
                Some(Ok(cap)) => {
                    let part = chunk.split_to(cap.min(chunk.len()));
                    send.send_data(part, false).map_err(Failure::Stream)?;
                }
                Some(Err(e)) => return Err(Failure::Stream(e)),
                None => {
                    return Err(Failure::Stream(h2::Error::from(Reason::STREAM_CLOSED)));
                }
            }
        }
    }
}

async fn stream_to_tcp(
    tcp: &TcpStream,
    recv: &mut RecvStream,
    total: &mut u64,
) -> Result<(), Failure> {
    loop {
        match recv.data().await {
            Some(Ok(chunk)) => {
                write_all(tcp, &chunk).await.map_err(Failure::Tcp)?;
                *total += chunk.len() as u64;
                recv.flow_control()
                    .release_capacity(chunk.len())
                    .map_err(Failure::Stream)?;
            }
            Some(Err(e)) => return Err(Failure::Stream(e)),
            None => {
                return match socket2::SockRef::from(tcp).shutdown(Shutdown::Write) {
                    // The peer may already be gone; that ends this direction just the same.
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                    Err(e) => Err(Failure::Tcp(e)),
                };
            }
        }
    }
}

async fn write_all(tcp: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match tcp.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Splices two TCP connections: the plain paths (passthrough, plaintext inbound). `sent` counts
/// `a` to `b`. A FIN is passed on as a FIN; an error or `cancel` resets both sides.
pub async fn splice_tcp(
    a: TcpStream,
    b: TcpStream,
    cancel: impl Future<Output = ()>,
) -> SpliceOutcome {
    let mut sent = 0u64;
    let mut received = 0u64;
    let end = both_ways(
        tcp_to_tcp(&a, &b, &mut sent),
        tcp_to_tcp(&b, &a, &mut received),
        cancel,
    )
    .await;
    let end = match end {
        Ok(true) => SpliceEnd::Closed,
        Ok(false) => SpliceEnd::Cancelled,
        Err(e) => SpliceEnd::Tcp(e.kind()),
    };
    if end != SpliceEnd::Closed {
        reset_tcp(&a);
        reset_tcp(&b);
    }
    SpliceOutcome {
        sent,
        received,
        end,
    }
}

async fn tcp_to_tcp(from: &TcpStream, to: &TcpStream, total: &mut u64) -> io::Result<()> {
    let mut buf = BytesMut::new();
    loop {
        let n = match try_read(from, &mut buf)? {
            Some(n) => n,
            None => {
                from.readable().await?;
                continue;
            }
        };
        if n == 0 {
            return match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        }
        write_all(to, &buf).await?;
        *total += n as u64;
        buf.clear();
    }
}
