//! The HBONE server (15008) against bad peers, on the wire: wrong or missing client
//! certificates, garbage, non-CONNECT requests, bad targets. Each must be refused while the
//! daemon keeps serving everyone else.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use weft_core::identity::{self, CertificateAuthority, SpiffeId};
use weft_tests::traffic::echo_server;
use weft_tests::{Weftd, connect_via, echo_addr, echo_vip, ip, round_trip, sleep_echo};

fn hbone_addr(id: u8) -> SocketAddr {
    SocketAddr::new(ip(id, 2, 1), 15008)
}

fn id_of(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

/// Checks the daemon still serves a normal connection end to end.
async fn still_serving(n1: &Weftd, id: u8) {
    let mut c = connect_via(&n1.addrs, ip(id, 1, 1), echo_vip(id))
        .await
        .unwrap();
    round_trip(&mut c, b"ping\n").await.unwrap();
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl must be installed for this test");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_refuses_missing_and_foreign_client_certificates() {
    let id = 15;
    let m = sleep_echo(id);
    let (n1, n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();
    let addr = hbone_addr(id).to_string();

    // No client certificate at all.
    let out = openssl(&[
        "s_client", "-connect", &addr, "-tls1_3", "-alpn", "h2", "-ign_eof",
    ]);
    assert!(
        out.contains("alert certificate required"),
        "openssl without a certificate:\n{out}"
    );

    // A certificate for the right identity, from another CA.
    let (other_cert, other_key) =
        identity::generate_root("not the mesh root", Duration::from_secs(3600)).unwrap();
    let other = CertificateAuthority::from_pem(&other_cert, &other_key, None, None).unwrap();
    let leaf = other
        .issue(&id_of("sleep"), Duration::from_secs(3600))
        .unwrap();
    let dir = m.dir.path();
    let mut chain = String::new();
    for c in &leaf.chain {
        chain.push_str(&pem_block("CERTIFICATE", c.as_ref()));
    }
    std::fs::write(dir.join("other.pem"), chain).unwrap();
    std::fs::write(
        dir.join("other.key"),
        pem_block("PRIVATE KEY", leaf.key.secret_der()),
    )
    .unwrap();
    let cert_path = dir.join("other.pem");
    let key_path = dir.join("other.key");
    let out = openssl(&[
        "s_client",
        "-connect",
        &addr,
        "-tls1_3",
        "-alpn",
        "h2",
        "-ign_eof",
        "-cert",
        cert_path.to_str().unwrap(),
        "-key",
        key_path.to_str().unwrap(),
    ]);
    assert!(
        out.contains("alert unknown ca") || out.contains("alert bad certificate"),
        "openssl with a foreign certificate:\n{out}"
    );

    // The same with a real HBONE client: the handshake or the first request fails.
    let tls = m.client_tls(Some(&other), "sleep", "echo");
    let tcp = TcpStream::connect(hbone_addr(id)).await.unwrap();
    let refused = async {
        let tls = TlsConnector::from(tls)
            .connect(ServerName::IpAddress(ip(id, 2, 1).into()), tcp)
            .await?;
        let (mut h2, conn) = h2::client::handshake(tls).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{}:8080", ip(id, 2, 1)))
            .body(())
            .unwrap();
        let (resp, _) = h2.send_request(req, false)?;
        resp.await?;
        Ok::<_, anyhow::Error>(())
    };
    assert!(
        timeout(Duration::from_secs(5), refused)
            .await
            .unwrap()
            .is_err()
    );
    assert!(
        n2.logs().contains("refused HBONE TLS handshake"),
        "{}",
        n2.logs()
    );
    still_serving(&n1, id).await;
}

fn pem_block(label: &str, der: &[u8]) -> String {
    // Standard base64 with 64-column lines, enough for openssl.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                b64.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_non_connect_and_bad_authority_are_refused_and_daemon_keeps_serving() {
    let id = 16;
    let m = sleep_echo(id);
    let (n1, n2) = m.start_both().unwrap();
    let _echo = echo_server(echo_addr(id)).await.unwrap();

    // Garbage instead of a TLS ClientHello: the connection is closed.
    let mut raw = TcpStream::connect(hbone_addr(id)).await.unwrap();
    raw.write_all(b"\x00\x01garbage garbage garbage\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let r = timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("garbage connection left hanging");
    assert!(matches!(r, Ok(n) if n < 256) || r.is_err());
    still_serving(&n1, id).await;

    // Valid mutual TLS, then garbage instead of the HTTP/2 preface.
    let tls = m.client_tls(None, "sleep", "echo");
    let tcp = TcpStream::connect(hbone_addr(id)).await.unwrap();
    let mut s = TlsConnector::from(tls.clone())
        .connect(ServerName::IpAddress(ip(id, 2, 1).into()), tcp)
        .await
        .unwrap();
    s.write_all(b"this is not http/2 at all\r\n\r\n")
        .await
        .unwrap();
    let r = timeout(Duration::from_secs(5), s.read_to_end(&mut Vec::new())).await;
    assert!(r.is_ok(), "HTTP/2 garbage connection left hanging");
    still_serving(&n1, id).await;

    // Valid HTTP/2, bad requests: each stream refused, the connection stays usable.
    let tcp = TcpStream::connect(hbone_addr(id)).await.unwrap();
    let s = TlsConnector::from(tls)
        .connect(ServerName::IpAddress(ip(id, 2, 1).into()), tcp)
        .await
        .unwrap();
    let (h2, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(conn);
    let ask = |method: Method, uri: String| {
        let h2 = h2.clone();
        async move {
            let mut h2 = h2.ready().await?;
            let req = Request::builder().method(method).uri(uri).body(()).unwrap();
            let (resp, _) = h2.send_request(req, false)?;
            Ok::<_, h2::Error>(resp.await?.status())
        }
    };
    let target = ip(id, 2, 1);
    let cases = [
        (
            Method::GET,
            format!("https://{target}:8080/"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::CONNECT,
            "example.com:80".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::CONNECT,
            format!("{}:8080", ip(id, 2, 99)),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::CONNECT,
            format!("{}:8080", ip(id, 1, 1)),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::CONNECT,
            format!("{target}:15006"),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::CONNECT,
            format!("{target}:15008"),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::CONNECT,
            format!("{target}:9"),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (Method::CONNECT, format!("{target}:8080"), StatusCode::OK),
    ];
    for (method, uri, want) in cases {
        let got = timeout(Duration::from_secs(5), ask(method.clone(), uri.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, want, "{method} {uri}");
    }
    // Names in `baggage` never become metric labels: a peer cannot mint series.
    let mut h = h2.clone().ready().await.unwrap();
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{target}:8080"))
        .header(
            "baggage",
            "k8s.pod.name=minted-by-peer,k8s.namespace.name=x",
        )
        .body(())
        .unwrap();
    let (resp, _) = h.send_request(req, false).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    assert!(!n2.metrics().contains("minted-by-peer"), "{}", n2.metrics());
    still_serving(&n1, id).await;
}
