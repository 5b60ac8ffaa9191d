//! The test applications as a process, for tests that run them inside network namespaces
//! (pods), where the eBPF capture sees their sockets:
//!
//! - `weft-test-app serve NAME HTTP_ADDR GRPC_ADDR`: `http_app` and `grpc_app` as `NAME`;
//!   prints `ready`, then each HTTP request it saw as a JSON line (`method`, `path`, `headers`),
//!   and its gRPC call counts (`grpc_calls`) whenever they change.
//! - `weft-test-app grpc ADDR AUTHORITY CALL...`: one tonic channel over a TCP connection to
//!   ADDR (a service VIP: captured), then each CALL in order, one JSON line per call:
//!   `say:MESSAGE`, `count:N`, `fail:CODE`.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use weft_tests::grpc_app::proto::{CountRequest, SayRequest};
use weft_tests::grpc_app::{grpc_app, grpc_client};
use weft_tests::http_app::http_app;

fn out(line: serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

async fn serve(name: &'static str, http: SocketAddr, grpc: SocketAddr) -> anyhow::Result<()> {
    let app = http_app(http, name).await?;
    let grpc = grpc_app(grpc, name).await?;
    out(json!("ready"));
    let mut printed = 0;
    let mut calls = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = app.seen();
        for s in &seen[printed..] {
            out(json!({"method": s.method, "path": s.path, "headers": s.headers}));
        }
        printed = seen.len();
        let now: Vec<usize> = ["Say", "Count", "Fail"]
            .iter()
            .map(|m| grpc.calls(m))
            .collect();
        if now != calls {
            out(json!({"grpc_calls": {"Say": now[0], "Count": now[1], "Fail": now[2]}}));
            calls = now;
        }
    }
}

async fn grpc(addr: SocketAddr, authority: &str, calls: &[String]) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut client = grpc_client(tcp, authority).await?;
    for call in calls {
        let (what, arg) = call.split_once(':').unwrap_or((call, ""));
        let line = match what {
            "say" => match client
                .say(SayRequest {
                    message: arg.to_owned(),
                    code: 0,
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    json!({"call": call, "code": 0, "server": r.server, "headers": r.headers})
                }
                Err(s) => json!({"call": call, "code": s.code() as i32, "message": s.message()}),
            },
            "count" => match client.count(CountRequest { n: arg.parse()? }).await {
                Ok(r) => {
                    let mut stream = r.into_inner();
                    let (mut servers, mut indices) = (Vec::new(), Vec::new());
                    let end = loop {
                        match stream.message().await {
                            Ok(Some(m)) => {
                                servers.push(m.server);
                                indices.push(m.index);
                            }
                            Ok(None) => break 0,
                            Err(s) => break s.code() as i32,
                        }
                    };
                    servers.dedup();
                    json!({"call": call, "code": end, "servers": servers, "indices": indices})
                }
                Err(s) => json!({"call": call, "code": s.code() as i32, "message": s.message()}),
            },
            "fail" => match client
                .fail(SayRequest {
                    message: "asked to fail".to_owned(),
                    code: arg.parse()?,
                })
                .await
            {
                Ok(_) => json!({"call": call, "code": 0}),
                Err(s) => json!({"call": call, "code": s.code() as i32, "message": s.message()}),
            },
            other => bail!("unknown call {other:?}: say:MESSAGE, count:N or fail:CODE"),
        };
        out(line);
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") if args.len() == 4 => {
            let name: &'static str = Box::leak(args[1].clone().into_boxed_str());
            serve(name, args[2].parse()?, args[3].parse()?).await
        }
        Some("grpc") if args.len() >= 3 => grpc(args[1].parse()?, &args[2], &args[3..]).await,
        _ => bail!(
            "usage: weft-test-app serve NAME HTTP_ADDR GRPC_ADDR | grpc ADDR AUTHORITY CALL..."
        ),
    }
}
