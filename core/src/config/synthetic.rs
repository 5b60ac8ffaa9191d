//! Mesh files of a chosen size, for benchmarks: the control-path benchmarks (`cargo bench -p
//! weft-core`) and weftd's memory and reload figures (`cargo xtask bench l4`) use the same
//! shapes, so their numbers describe the same mesh.
//!
//! Workloads are spread over 50 namespaces and 100 nodes (`sim-node0`..`sim-node99`), ten to
//! a service; each service has a VIP; each policy selects one service's workloads and allows
//! two principals on two ports, like a typical per-service ALLOW.

use std::fmt::Write;

/// The size of a generated mesh.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub workloads: usize,
    pub services: usize,
    pub policies: usize,
}

const NAMESPACES: usize = 50;
pub const NODES: usize = 100;

/// The address of workload `i`: 10.(i / 65536 + 128).(i / 256 % 256).(i % 256).
pub fn workload_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 128 + i / 65536, (i / 256) % 256, i % 256)
}

/// The VIP of service `i`: 172.16.(i / 256).(i % 256).
pub fn service_vip(i: usize) -> String {
    format!("172.16.{}.{}", i / 256, i % 256)
}

/// The YAML body after `ca:` and `nodes:`: workloads, services and policies of `size`.
pub fn mesh_sections(size: Size) -> String {
    let mut out = String::with_capacity(size.workloads * 160);
    out.push_str("workloads:\n");
    let services = size.services.max(1);
    for i in 0..size.workloads {
        let svc = i % services;
        let _ = writeln!(
            out,
            "  - {{name: w{i}, namespace: ns{}, serviceAccount: sa{svc}, ips: [{}], node: sim-node{}, labels: {{app: s{svc}, pod: w{i}}}}}",
            svc % NAMESPACES,
            workload_ip(i),
            i % NODES
        );
    }
    if size.services > 0 {
        out.push_str("services:\n");
    }
    for s in 0..size.services {
        let _ = writeln!(
            out,
            "  - {{name: s{s}, namespace: ns{}, vips: [{}], ports: [{{port: 80, targetPort: 8080}}], selector: {{app: s{s}}}}}",
            s % NAMESPACES,
            service_vip(s)
        );
    }
    if size.policies > 0 {
        out.push_str("policies:\n");
    }
    for p in 0..size.policies {
        let svc = p % services;
        let _ = writeln!(
            out,
            "  - {{name: p{p}, namespace: ns{}, selector: {{matchLabels: {{app: s{svc}}}}}, rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns{}/sa/sa{}, '*/sa/admin']}}}}], to: [{{operation: {{ports: ['8080', '9090']}}}}]}}]}}",
            svc % NAMESPACES,
            (svc + 1) % NAMESPACES,
            (svc + 1) % services
        );
    }
    out
}
