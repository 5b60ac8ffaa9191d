//! The explicit destination source: a PROXY protocol header (HAProxy's, v1 text or v2 binary)
//! in front of the application bytes. The `ppp` crate parses it; this module reads exactly the
//! header's bytes (never an application byte, never a busy wait on a slow client).

use std::net::SocketAddr;

use ppp::{HeaderResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::DestinationError;

/// v1 is at most 107 bytes; v2 addresses with a few TLVs fit in 512.
const V1_MAX: usize = 107;
const V2_MAX: usize = 512;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

pub async fn read_destination(tcp: &mut TcpStream) -> Result<SocketAddr, DestinationError> {
    let bad = |m: &str| DestinationError::Malformed(m.to_string());
    // Both versions are longer than 8 bytes; 8 tell them apart.
    let mut head = vec![0u8; 8];
    tcp.read_exact(&mut head).await?;
    if head.starts_with(b"PROXY ") {
        // v1: a text line; read it a byte at a time up to CRLF.
        while !head.ends_with(b"\r\n") {
            if head.len() >= V1_MAX {
                return Err(bad("v1 header longer than 107 bytes"));
            }
            head.push(tcp.read_u8().await?);
        }
    } else if V2_SIGNATURE.starts_with(&head) {
        head.resize(16, 0);
        tcp.read_exact(&mut head[8..]).await?;
        if &head[..12] != V2_SIGNATURE {
            return Err(bad("not a PROXY header"));
        }
        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
        if 16 + len > V2_MAX {
            return Err(bad("v2 header too long"));
        }
        head.resize(16 + len, 0);
        tcp.read_exact(&mut head[16..]).await?;
    } else {
        return Err(bad("not a PROXY header"));
    }
    match HeaderResult::parse(&head) {
        HeaderResult::V1(Ok(h)) => v1_destination(&h.addresses),
        HeaderResult::V2(Ok(h)) => v2_destination(&h.addresses),
        HeaderResult::V1(Err(e)) => Err(DestinationError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(DestinationError::Malformed(e.to_string())),
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
    use std::time::Duration;
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
    async fn v2_header_and_slow_v1_header() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            // v2, IPv4, PROXY command, 12 address bytes, then payload.
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[
                0x21, 0x11, 0, 12, 1, 2, 3, 4, 10, 9, 8, 7, 0x30, 0x39, 0x1f, 0x90,
            ]);
            c.write_all(&h).await.unwrap();
            c.write_all(b"v2!").await.unwrap();
            // v1, trickled a few bytes at a time.
            let mut c2 = TcpStream::connect(addr).await.unwrap();
            let line = v1_header("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
            for part in line.as_bytes().chunks(5) {
                c2.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop((c, c2));
        });
        let (mut s, _) = l.accept().await.unwrap();
        assert_eq!(
            read_destination(&mut s).await.unwrap(),
            "10.9.8.7:8080".parse().unwrap()
        );
        let mut rest = [0u8; 3];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"v2!");
        let (mut s, _) = l.accept().await.unwrap();
        assert_eq!(
            read_destination(&mut s).await.unwrap(),
            "10.0.0.2:2".parse().unwrap()
        );
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
