//! `cargo xtask demo`: a local mesh of network namespaces with transparent eBPF capture.
//!
//! Two node namespaces joined by a bridge (each node's "uplink" plugs into it), each running
//! weftd; a `client` pod on node1, and an `outside` host that is not in the mesh; on node2 the
//! `web` pods: web-1 and web-2 (version v1, behind the service `web-v1`, 10.60.100.2), web-3
//! and web-4 (v2; web-4 fails every other request), and a waypoint pod. The service `web`
//! (10.60.100.1) is bound to the waypoint, which splits it 90/10 between the versions, pins v2
//! on a header, retries what web-4 fails, and refuses DELETE (see [`waypoint`]). Unmodified
//! `curl` and python HTTP servers are the applications. The demo sends requests, prints who
//! talked to whom with which identities and the metric lines, prints commands to try, and
//! waits for Ctrl-C (`--once`: exits at once). Everything it made is removed when it ends, by
//! name.
//!
//! The topology is the one the end-to-end tests build (`weft_tests::netns`), so what the demo
//! shows is what CI checks.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use weft_tests::netns::{Topology, read, write_mesh};

mod waypoint;

const PREFIX: &str = "weft-demo";
const ID: u8 = 60;
/// The service the first act calls: web-1 and web-2, straight through the nodes.
const VIP: &str = "10.60.100.2";
const NAMESPACES: [&str; 10] = [
    "node1", "node2", "lan", "client", "outside", "web-1", "web-2", "web-3", "web-4", "waypoint",
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "--loopback") {
        return crate::loopback_demo::run(args);
    }
    let once = args.iter().any(|a| a == "--once");
    if !crate::tools::is_root() {
        bail!(
            "the demo creates network namespaces and loads eBPF programs, so it needs root: \
             run it as root (e.g. `sudo -E cargo xtask demo`), or run `cargo xtask demo --loopback` \
             for a mesh on loopback without capture"
        );
    }
    crate::tools::ensure(&[
        ("curl", "curl"),
        ("python3", "python3"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
    ])?;
    // One demo at a time; what a killed one left is removed.
    let _claim = weft_tests::netns::claim_names("cargo xtask demo", PREFIX, &NAMESPACES)?;
    // `cargo xtask test` has built everything already (`--no-build`).
    if !args.iter().any(|a| a == "--no-build") {
        crate::cargo(&["build", "-p", "weftd", "-p", "weft-waypoint"])?;
    }
    let weftd = weft_tests::weftd_bin();
    check_kernel(&weftd)?;

    let dir = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = demo(&dir, once);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `weftd capture check` in a private mount namespace with a bpffs of its own: refuses with
/// the check's own words when this kernel lacks something capture needs.
fn check_kernel(weftd: &Path) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let script = format!(
        "mount -t bpf bpf {dir} && exec {weftd} capture check --bpffs {dir}",
        dir = scratch.path().display(),
        weftd = weftd.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .context("running unshare")?;
    if !out.status.success() {
        bail!(
            "this machine cannot run eBPF capture:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn demo(dir: &Path, once: bool) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut t = Topology::named(PREFIX, ID)?;
    t.node("node1")?;
    t.node("node2")?;
    t.link_nodes("node1", 1, "node2", 2)?;
    let client = t.pod("node1", "client", 1, 2)?;
    let outside = t.pod("node1", "outside", 9, 2)?;
    let web1 = t.pod("node2", "web-1", 2, 2)?;
    let web2 = t.pod("node2", "web-2", 2, 3)?;
    let web3 = t.pod("node2", "web-3", 2, 4)?;
    let web4 = t.pod("node2", "web-4", 2, 5)?;
    let waypoint_ip = t.pod("node2", "waypoint", 2, 6)?;
    let cgroup2 = t.extra_cgroup("node2")?;
    let nodes =
        t.ebpf_node("node1", &t.cgroup, "uplink") + &t.ebpf_node("node2", &cgroup2, "uplink");
    let netns = |pod: &str| t.ns_path(pod).display().to_string();
    let web = |pod: &str, ip: &str, version: &str| {
        format!(
            "  - {{name: {pod}, workloadName: web-{version}, serviceAccount: web, ips: [{ip}], node: node2, netns: \"{}\", labels: {{app: web, version: {version}}}}}\n",
            netns(pod)
        )
    };
    let workloads = format!(
        "  - {{name: client, serviceAccount: client, ips: [{client}], node: node1, netns: \"{}\", labels: {{app: client}}}}
  - {{name: waypoint, serviceAccount: waypoint, ips: [{waypoint_ip}], node: node2, netns: \"{}\", labels: {{app: waypoint}}, mode: none}}
",
        netns("client"),
        netns("waypoint"),
    ) + &web("web-1", &web1, "v1")
        + &web("web-2", &web2, "v1")
        + &web("web-3", &web3, "v2")
        + &web("web-4", &web4, "v2");
    let rest = format!(
        "services:
  - {{name: web-v1, vips: [{VIP}], ports: [{{port: 80, targetPort: 8080, appProtocol: http}}], selector: {{version: v1}}}}
{}policies:
  - name: web-allow-client
    namespace: default
    selector: {{matchLabels: {{app: web}}}}
    rules: [{{from: [{{source: {{principals: [\"cluster.local/ns/default/sa/client\"]}}}}]}}]
{}",
        waypoint::SERVICES,
        waypoint::POLICIES_AND_ROUTES
    );
    write_mesh(dir, &nodes, &workloads, &rest)?;
    let _web1 = t.http_server(dir, "web-1", &web1)?;
    let _web2 = t.http_server(dir, "web-2", &web2)?;
    let _web3 = t.http_server(dir, "web-3", &web3)?;
    let _web4 = waypoint::flaky_server(&t, dir, "web-4", &web4)?;
    let _weftd1 = t.start_weftd(dir, "node1", "")?;
    let _weftd2 = t.start_weftd(dir, "node2", "")?;
    let _waypoint = waypoint::start(&t, dir)?;
    let in_pod = write_in_pod(&t, dir, &cgroup2)?;
    let node_cmd =
        |node: &str, cmd: &str| format!("nsenter --net={} {cmd}", t.ns_path(node).display());

    println!(
        "\n== topology (network namespaces {PREFIX}-*)
  node1: weftd, pod client ({client}, enrolled), host outside ({outside}, not in the mesh)
  node2: weftd, pods web-1 ({web1}) and web-2 ({web2}), enrolled, behind service web-v1 {VIP}:80;
         web-3 ({web3}) and web-4 ({web4}, flaky) as v2; a waypoint pod ({waypoint_ip}) in front of
         the service web {}:80
  policy: web accepts only the identity of client",
        waypoint::VIP
    );
    println!(
        "\n== client calls http://{VIP}/ with plain curl; capture sends it through both weftd"
    );
    let mut served = std::collections::BTreeSet::new();
    for i in 1..=4 {
        let out = t.pod_exec("client", &format!("curl -s --max-time 5 http://{VIP}/"))?;
        let reply = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("request {i}: {reply}");
        served.insert(reply);
    }
    let replicas: std::collections::BTreeSet<String> = ["hello from web-1", "hello from web-2"]
        .map(String::from)
        .into();
    if served != replicas {
        bail!(
            "the client's requests were not all answered by the two replicas ({served:?}); node1's log:\n{}",
            read(dir.join("node1.log"))
        );
    }
    println!("\n== outside (not in the mesh) calls web-1 directly: STRICT, so it is refused");
    let status = t.curl_status("outside", &format!("http://{web1}:8080/"), "");
    if status != "000" {
        bail!("a host outside the mesh got HTTP {status} from a STRICT workload");
    }
    println!("curl http://{web1}:8080/ -> refused (no answer)");
    std::thread::sleep(Duration::from_millis(300));

    println!("\n== access log: who talked to whom, with which identities");
    for node in ["node1", "node2"] {
        for line in read(dir.join(format!("{node}.log")))
            .lines()
            .filter(|l| l.contains("weft::access"))
        {
            println!(
                "{node}: {}",
                line.split("weft::access: ").last().unwrap_or(line)
            );
        }
    }
    println!("\n== metrics");
    for (node, prefixes) in [
        (
            "node1",
            &["weft_capture_events_total", "weft_capture_enrolled"][..],
        ),
        ("node2", &["weft_tcp_connections_opened_total"][..]),
    ] {
        for line in t
            .metrics(node)
            .lines()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        {
            println!("{node}: {line}");
        }
    }

    waypoint::act(&t, dir)?;

    println!(
        "\n== try (as root, in another terminal)
  {in_pod} client curl -s http://{VIP}/                      # through the mesh
  {in_pod} outside curl -s --max-time 3 http://{web1}:8080/  # refused: not in the mesh
  {in_pod} client curl -s -H 'x-version: v2' http://{}/   # pinned to v2 by the waypoint
  {in_pod} client curl -s -X DELETE http://{}/            # 403 from the waypoint's policy
  {}   # the waypoint's routes as compiled
  {}   # only TLS crosses the link
  {}   # metrics of node1
  {}   # state: capture, certificates, pool
  tail -f {}                                      # node2's log
  edit {} (e.g. set client's `mode: none`) and watch weftd reload it",
        waypoint::VIP,
        waypoint::VIP,
        node_cmd("waypoint", "curl -s 127.0.0.1:15000/config_dump"),
        node_cmd("node1", "tcpdump -ni uplink -A tcp port 15008"),
        node_cmd("node1", "curl -s 127.0.0.1:15020/metrics | grep ^weft_"),
        node_cmd("node1", "curl -s 127.0.0.1:15000/config_dump"),
        dir.join("node2.log").display(),
        dir.join("mesh.yaml").display()
    );
    if once {
        return Ok(());
    }
    println!("\nCtrl-C stops the demo and removes everything it created.");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping and removing the namespaces, cgroups and pinned capture state");
    Ok(())
}

/// `in-pod POD CMD...`: runs CMD as a process of POD, in its network namespace and its node's
/// pod cgroup, which is what makes capture apply to it.
fn write_in_pod(t: &Topology, dir: &Path, cgroup2: &Path) -> anyhow::Result<String> {
    let path = dir.join("in-pod");
    let script = format!(
        "#!/bin/sh\n# in-pod POD CMD...: run CMD in POD's network namespace and its node's pod cgroup\npod=$1; shift\ncase $pod in web-*) cg={}/cgroup.procs;; *) cg={}/cgroup.procs;; esac\nexec nsenter --net=/var/run/netns/{PREFIX}-$pod sh -c 'echo $$ > \"$0\" && exec \"$@\"' \"$cg\" \"$@\"\n",
        cgroup2.display(),
        t.cgroup.display()
    );
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path.display().to_string())
}
