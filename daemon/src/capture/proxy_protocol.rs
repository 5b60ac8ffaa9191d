//! The explicit destination source: a PROXY protocol header (HAProxy's, v1 text or v2 binary)
//! in front of the application bytes. The `ppp` crate parses it; this module only finds where
//! the header ends so that no application byte is consumed.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::DestinationError;

/// v2 headers with TLVs can be longer than v1's 107 bytes; 512 is plenty for a destination.
const MAX_HEADER: usize = 512;

pub async fn read_destination(tcp: &mut TcpStream) -> Result<SocketAddr, DestinationError> {
    let mut peek = [0u8; MAX_HEADER];
    let mut last = 0;
    loop {
        let n = tcp.peek(&mut peek).await?;
        if n == 0 {
            return Err(DestinationError::Malformed(
                "connection closed before the header".into(),
            ));
        }
        let parsed = HeaderResult::parse(&peek[..n]);
        if parsed.is_incomplete() {
            if n == MAX_HEADER {
                return Err(DestinationError::Malformed("header too long".into()));
            }
            if n == last {
                // peek returns at once while the partial header sits in the buffer.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            last = n;
            continue;
        }
        let (len, dst) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_destination(&h.addresses)?),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_destination(&h.addresses)?),
            HeaderResult::V1(Err(e)) => return Err(DestinationError::Malformed(e.to_string())),
            HeaderResult::V2(Err(e)) => return Err(DestinationError::Malformed(e.to_string())),
        };
        let mut consume = vec![0u8; len];
        tcp.read_exact(&mut consume).await?;
        return Ok(dst);
    }
}

fn v1_destination(a: &v1::Addresses) -> Result<SocketAddr, DestinationError> {
    match a {
        v1::Addresses::Tcp4(a) => Ok(SocketAddr::from((
            a.destination_address,
            a.destination_port,
        ))),
        v1::Addresses::Tcp6(a) => Ok(SocketAddr::from((
            a.destination_address,
            a.destination_port,
        ))),
        v1::Addresses::Unknown => Err(DestinationError::Malformed(
            "PROXY UNKNOWN has no destination".into(),
        )),
    }
}

fn v2_destination(a: &v2::Addresses) -> Result<SocketAddr, DestinationError> {
    match a {
        v2::Addresses::IPv4(a) => Ok(SocketAddr::from((
            a.destination_address,
            a.destination_port,
        ))),
        v2::Addresses::IPv6(a) => Ok(SocketAddr::from((
            a.destination_address,
            a.destination_port,
        ))),
        _ => Err(DestinationError::Malformed(
            "header has no TCP destination".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn v1_header(src: SocketAddr, dst: SocketAddr) -> String {
        let proto = if dst.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {proto} {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
    }

    #[tokio::test]
    async fn reads_header_and_leaves_payload() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let h = v1_header(c.local_addr().unwrap(), "10.1.2.3:8080".parse().unwrap());
            c.write_all(h.as_bytes()).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            c
        });
        let (mut s, _) = l.accept().await.unwrap();
        let dst = read_destination(&mut s).await.unwrap();
        assert_eq!(dst, "10.1.2.3:8080".parse().unwrap());
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        drop(client.await);
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let (mut s, _) = l.accept().await.unwrap();
        assert!(matches!(
            read_destination(&mut s).await,
            Err(DestinationError::Malformed(_))
        ));
    }
}
