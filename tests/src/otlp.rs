//! An OTLP trace collector for tests: a tonic server implementing the OpenTelemetry trace
//! service, keeping every span it is sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// A span, with its resource's attributes as text.
pub type Received = (Vec<(String, String)>, Span);

/// A running collector; stopped when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// Every span received, with its resource's string attributes.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

struct Keep(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Keep {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut kept = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let resource: Vec<(String, String)> = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), string_value(kv)))
                .collect();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    kept.push((resource.clone(), s));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An attribute's value as text (strings as they are, integers in decimal).
pub fn string_value(kv: &opentelemetry_proto::tonic::common::v1::KeyValue) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

pub async fn collector(addr: SocketAddr) -> anyhow::Result<Collector> {
    let incoming = TcpIncoming::bind(addr)?;
    let addr = incoming.local_addr()?;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let svc = TraceServiceServer::new(Keep(spans.clone()));
    let task = tokio::spawn(async move {
        if let Err(e) = Server::builder().serve_with_incoming(svc, incoming).await {
            eprintln!("OTLP collector on {addr}: {e}");
        }
    });
    Ok(Collector { addr, spans, task })
}
