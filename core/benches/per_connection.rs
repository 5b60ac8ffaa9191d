//! The work weftd does per connection outside the data copy, on a mesh of 10 000 workloads,
//! 1 000 services and 1 000 policies: destination lookup (VIP, workload address, the service a
//! workload address belongs to) and policy evaluation. And the control path: loading that
//! mesh file. Targets (issue 4): lookup and evaluation <= 1 us; load well under 200 ms.
//!
//! `cargo bench -p weft-core`; `cargo xtask bench l4` quotes these figures.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_core::authz::{ConnectionInfo, WorkloadRef};
use weft_core::config::synthetic::{Size, mesh_sections, service_vip, workload_ip};
use weft_core::model::Destination;

const SIZE: Size = Size {
    workloads: 10_000,
    services: 1_000,
    policies: 1_000,
};

fn mesh_text() -> String {
    format!("nodes:\n  - {{name: sim-node0}}\n{}", mesh_sections(SIZE))
}

fn benches(c: &mut Criterion) {
    let text = mesh_text();
    let state = match weft_core::config::load_str(&text, "bench.yaml", Path::new(".")) {
        Ok(m) => m.state,
        Err(e) => panic!("the generated mesh does not load: {e}"),
    };

    let vip: SocketAddr = format!("{}:80", service_vip(500)).parse().unwrap();
    c.bench_function("resolve_service_vip", |b| {
        b.iter(|| match state.resolve(black_box(vip)) {
            Destination::Service { endpoint, .. } => black_box(endpoint.is_some()),
            _ => panic!("not a service"),
        })
    });
    let pod: IpAddr = workload_ip(7_500).parse().unwrap();
    c.bench_function("workload_by_ip", |b| {
        b.iter(|| black_box(state.workload_by_ip(black_box(pod)).is_some()))
    });
    let target = SocketAddr::new(pod, 8080);
    c.bench_function("service_of_workload_address", |b| {
        b.iter(|| black_box(state.service_of(black_box(target)).is_some()))
    });

    // Workload 7 500 is an endpoint of service 500 (ns0); policy 500 allows sa501 of ns1.
    let labels: BTreeMap<String, String> = [("app".to_string(), "s500".to_string())].into();
    let workload = WorkloadRef {
        namespace: "ns0",
        labels: &labels,
    };
    let allowed = ConnectionInfo {
        source_principal: Some("spiffe://cluster.local/ns/ns1/sa/sa501"),
        source_namespace: Some("ns1"),
        source_ip: workload_ip(1).parse().unwrap(),
        destination_ip: pod,
        destination_port: 8080,
    };
    assert!(state.policies.evaluate(&workload, &allowed).allowed);
    let denied = ConnectionInfo {
        source_principal: Some("spiffe://cluster.local/ns/ns9/sa/other"),
        source_namespace: Some("ns9"),
        ..allowed
    };
    assert!(!state.policies.evaluate(&workload, &denied).allowed);
    c.bench_function("policy_evaluate_allow", |b| {
        b.iter(|| black_box(state.policies.evaluate(black_box(&workload), &allowed)))
    });
    c.bench_function("policy_evaluate_deny", |b| {
        b.iter(|| black_box(state.policies.evaluate(black_box(&workload), &denied)))
    });

    let mut group = c.benchmark_group("control_path");
    group.sample_size(10);
    group.bench_function("mesh_load_10k_workloads_1k_services_1k_policies", |b| {
        b.iter(|| {
            weft_core::config::load_str(black_box(&text), "bench.yaml", Path::new("."))
                .map(|m| m.state.workloads.len())
        })
    });
    group.finish();
}

criterion_group!(per_connection, benches);
criterion_main!(per_connection);
