//! The load generator the L4 benchmarks run inside pods (`xtask loadgen ...`, release build).
//! Each mode prints one JSON object on stdout.
//!
//! - `echo ADDR`: echoes every byte back, any number of connections (tokio).
//! - `latency ADDR RATE SECONDS CONNECTIONS SIZE`: request/response of SIZE bytes at a fixed
//!   total RATE over CONNECTIONS open connections. Each request has an intended send time on
//!   a fixed schedule and its latency is measured from that time, not from when it was sent,
//!   so a stall counts against every request it delayed (no coordinated omission).
//! - `http-latency ADDR RATE SECONDS CONNECTIONS`: as `latency`, with HTTP/1.1 `GET /` on
//!   kept connections instead of raw bytes (for the waypoint, which needs HTTP to route).
//!   Both also report the CPU stalls seen during the run and the latencies of the requests
//!   none touched (`stalls`).
//! - `http-serve ADDR`: answers every HTTP/1.1 or HTTP/2 (prior knowledge) request with a
//!   2-byte 200.
//! - `connrate ADDR SECONDS WORKERS`: closed loop of connect + 64-byte exchange + close.
//! - `hold ADDR COUNT`: opens COUNT connections, prints once they are all up, then holds them
//!   until stdin closes.
//! - `relay ADDR TARGET`: a plain TCP relay (no TLS, no HTTP/2, no policy): every connection
//!   accepted on ADDR is copied both ways to a new connection to TARGET. Two of them in a row
//!   are the floor any design with a user-space proxy on each node pays on this machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::json;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize, what: &str| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("loadgen: missing {what}"))
    };
    let addr: SocketAddr = arg(1, "address")?.parse().context("loadgen: address")?;
    raise_fd_limit();
    match arg(0, "mode")? {
        "echo" => echo(addr),
        "latency" => latency(
            addr,
            arg(2, "rate")?.parse()?,
            Duration::from_secs(arg(3, "seconds")?.parse()?),
            arg(4, "connections")?.parse()?,
            Exchange::Bytes(arg(5, "size")?.parse()?),
        ),
        "http-latency" => latency(
            addr,
            arg(2, "rate")?.parse()?,
            Duration::from_secs(arg(3, "seconds")?.parse()?),
            arg(4, "connections")?.parse()?,
            Exchange::Http,
        ),
        "http-serve" => http_serve(addr),
        "connrate" => connrate(
            addr,
            Duration::from_secs(arg(2, "seconds")?.parse()?),
            arg(3, "workers")?.parse()?,
        ),
        "hold" => hold(addr, arg(2, "count")?.parse()?),
        "relay" => relay(addr, arg(2, "target")?.parse().context("loadgen: target")?),
        other => bail!("loadgen: unknown mode {other}"),
    }
}

/// Many connections need many descriptors: use the hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-parameter; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn echo(addr: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(addr).await?;
        println!("{}", json!({"listening": addr.to_string()}));
        loop {
            let (mut s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

fn histogram() -> Histogram<u64> {
    // 1 us .. 60 s in nanoseconds, 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("constant bounds are valid")
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let us = |ns: u64| ns as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_us": us(h.value_at_quantile(0.50)),
        "p90_us": us(h.value_at_quantile(0.90)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "max_us": us(h.max()),
    })
}

/// Sleeps until `when` with the kernel's timer slack at its minimum, so the schedule holds to
/// microseconds without spinning a core the proxies need.
fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        std::thread::sleep(when - now);
    }
}

/// What one request/response of `latency` is.
#[derive(Clone, Copy)]
enum Exchange {
    /// SIZE bytes out, the same back (an echo server).
    Bytes(usize),
    /// `GET /` and a response with a `content-length` body.
    Http,
}

const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n";

/// Reads one HTTP/1.1 response: the head, then `content-length` bytes of body. One exchange
/// is in flight per connection, so what one read returns belongs to one message.
fn read_http(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-message");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// hyper's server (HTTP/1.1 and HTTP/2 prior knowledge on one port, as the proxies' own
/// backends are): every request gets a 2-byte 200. Multi-thread runtime, one task per
/// connection, TCP_NODELAY.
fn http_serve(addr: SocketAddr) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(addr).await?;
        println!("{}", json!({"listening": addr.to_string()}));
        loop {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    })
}

fn latency(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    connections: usize,
    exchange: Exchange,
) -> anyhow::Result<()> {
    let streams: Vec<TcpStream> = (0..connections)
        .map(|_| connect(addr))
        .collect::<Result<_, _>>()
        .context("opening the connections")?;
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    // Start every connection's schedule at once, offset so requests interleave evenly.
    let start = Instant::now() + Duration::from_millis(100);
    let warmup = Duration::from_millis(500);
    let probe = super::stalls::Probe::start();
    // Per thread: each request's intended send time and its latency in nanoseconds.
    let results: Vec<anyhow::Result<Vec<(Instant, u64)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut stream)| {
                s.spawn(move || -> anyhow::Result<Vec<(Instant, u64)>> {
                    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
                    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
                    let mut done = Vec::with_capacity(
                        (duration + warmup).div_duration_f64(interval) as usize + 1,
                    );
                    let size = match exchange {
                        Exchange::Bytes(n) => n,
                        Exchange::Http => 0,
                    };
                    let (req, mut resp) = (vec![0x5a_u8; size], vec![0_u8; size]);
                    let mut head = Vec::new();
                    let offset = interval.mul_f64(i as f64 / connections as f64);
                    for k in 0u32.. {
                        let intended = start + offset + interval * k;
                        if intended > start + warmup + duration {
                            break;
                        }
                        sleep_until(intended);
                        match exchange {
                            Exchange::Bytes(_) => {
                                stream.write_all(&req)?;
                                stream.read_exact(&mut resp)?;
                            }
                            Exchange::Http => {
                                stream.write_all(HTTP_REQUEST)?;
                                read_http(&mut stream, &mut head)?;
                            }
                        }
                        if intended >= start + warmup {
                            done.push((intended, intended.elapsed().as_nanos() as u64));
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a client thread panicked"))
            })
            .collect()
    });
    // Every request, and apart those that no CPU stall touched: the difference is the
    // hypervisor's, not the path's (`stalls`). Without the probe, only the first.
    let stalls = probe
        .stop()
        .inspect_err(|e| eprintln!("loadgen: no CPU stall probe: {e:#}"))
        .ok();
    let (mut all, mut outside) = (histogram(), histogram());
    for r in results {
        for (intended, ns) in r? {
            let ns = ns.max(1_000);
            let _ = all.record(ns);
            let end = intended + Duration::from_nanos(ns);
            if let Some(stalls) = &stalls
                && !super::stalls::overlaps(stalls, intended, end)
            {
                let _ = outside.record(ns);
            }
        }
    }
    let mut out = summary(&all);
    out["rate"] = json!(all.len() as f64 / duration.as_secs_f64());
    if let Some(stalls) = &stalls {
        out["outside_stalls"] = summary(&outside);
        out["stalls"] = json!(stalls.len());
        out["stalled_ms"] = json!(
            stalls
                .iter()
                .map(|p| (p.to - p.from).as_secs_f64() * 1e3)
                .sum::<f64>()
        );
    }
    println!("{out}");
    Ok(())
}

fn connrate(addr: SocketAddr, duration: Duration, workers: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    let results: Vec<(Histogram<u64>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(move || {
                    let mut hist = histogram();
                    let mut failed = 0u64;
                    let (req, mut resp) = ([7_u8; 64], [0_u8; 64]);
                    while start.elapsed() < duration {
                        let t = Instant::now();
                        let ok = connect(addr).and_then(|mut s| {
                            s.write_all(&req)?;
                            s.read_exact(&mut resp)
                        });
                        match ok {
                            Ok(()) => {
                                let _ = hist.record((t.elapsed().as_nanos() as u64).max(1_000));
                            }
                            Err(_) => failed += 1,
                        }
                    }
                    (hist, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| (histogram(), 1)))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut all = histogram();
    let mut failed = 0;
    for (h, f) in results {
        let _ = all.add(&h);
        failed += f;
    }
    let mut out = summary(&all);
    out["rate"] = json!(all.len() as f64 / elapsed);
    out["failed"] = json!(failed);
    println!("{out}");
    Ok(())
}

/// Shaped like weftd's data path where it is not weft's own: the multi-thread runtime with
/// its default workers, TCP_NODELAY on both sides, 64 KiB copy buffers, one task per
/// connection.
fn relay(addr: SocketAddr, target: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(addr).await?;
        println!(
            "{}",
            json!({"listening": addr.to_string(), "target": target.to_string()})
        );
        loop {
            let (mut down, _) = l.accept().await?;
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, 65536, 65536)
                    .await;
            });
        }
    })
}

fn hold(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = connect(addr).with_context(|| format!("connection {i}"))?;
        // One byte each way proves the connection reaches the server through the proxies.
        s.write_all(b"x")?;
        let mut b = [0_u8; 1];
        s.read_exact(&mut b)?;
        held.push(s);
    }
    println!("{}", json!({"held": held.len()}));
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
    Ok(())
}
