//! Real TCP servers standing in for applications, and checked byte streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A server task; aborted when dropped. `accepted` counts the connections it saw.
pub struct Server {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Server {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves each connection with `f`.
pub async fn serve<F, Fut>(addr: SocketAddr, f: F) -> anyhow::Result<Server>
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind(addr).await?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(f(s));
        }
    });
    Ok(Server {
        addr,
        accepted,
        task,
    })
}

/// Echoes until EOF, then closes its side.
pub async fn echo_server(addr: SocketAddr) -> anyhow::Result<Server> {
    serve(addr, |mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// A deterministic byte stream (xorshift), so a receiver can check every byte it gets.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

/// Writes `len` pattern bytes, then half-closes.
pub async fn send_pattern<W: AsyncWrite + Unpin>(
    w: &mut W,
    len: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n;
    }
    w.shutdown().await?;
    Ok(())
}

/// Reads to EOF and checks that exactly `len` pattern bytes arrived.
pub async fn expect_pattern<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let mut p = Pattern::new(seed);
    let mut got = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    // The pattern comes in 8-byte words; keep reads aligned so `fill` stays in step.
    let mut pending = Vec::new();
    loop {
        let n = r.read(&mut got).await?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&got[..n]);
        let aligned = pending.len() / 8 * 8;
        let aligned = if total + pending.len() == len {
            pending.len()
        } else {
            aligned
        };
        if aligned == 0 {
            continue;
        }
        want.resize(aligned, 0);
        p.fill(&mut want[..aligned]);
        if pending[..aligned] != want[..aligned] {
            anyhow::bail!("corrupted data after {total} bytes");
        }
        total += aligned;
        pending.drain(..aligned);
        if total > len {
            anyhow::bail!("more than {len} bytes arrived");
        }
    }
    if total + pending.len() != len {
        anyhow::bail!("expected {len} bytes, got {}", total + pending.len());
    }
    Ok(())
}
