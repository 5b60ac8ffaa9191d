//! Network namespaces as nodes and pods, joined by veth pairs with /32 routes like a ptp CNI,
//! and a cgroup2 directory for pod processes. Everything is created under names derived from
//! the test id and process id, and removed by those names when dropped, even after a failure.
//! The host's own namespace, routes and sysctls are never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// Runs a command, failing with its output when it fails.
pub fn sh(cmd: &str) -> anyhow::Result<String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .with_context(|| cmd.to_string())?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let fs = sh(&format!("stat -f -c %T {p}")).unwrap_or_default();
        if fs.trim() == "cgroup2fs" {
            return Ok(p.into());
        }
    }
    bail!("no cgroup2 mount under /sys/fs/cgroup")
}

/// One test's namespaces and cgroup.
pub struct Topology {
    pub prefix: String,
    namespaces: Vec<String>,
    pub cgroup: PathBuf,
    /// More cgroup directories (one per further node, by node name), removed on drop.
    extra_cgroups: Vec<(String, PathBuf)>,
    /// The node of each pod, for the cgroup its processes belong in.
    pod_nodes: std::collections::HashMap<String, String>,
    /// The node-side address every pod uses as its gateway (on every host veth).
    pub gateway: String,
    subnet: u8,
    pods: std::collections::HashMap<String, String>,
    /// A bpffs instance of this test's own, for capture's pins (`<bpffs>/<node>`).
    pub bpffs: PathBuf,
}

impl Topology {
    /// `id` picks the subnet 10.<id>.0.0/16 inside the test's own namespaces.
    pub fn new(id: u8) -> anyhow::Result<Self> {
        let prefix = format!("wt{id}x{}", std::process::id() % 10000);
        let cgroup = format!("weft-test-{prefix}");
        Self::create(prefix, &cgroup, id)
    }

    /// A topology whose namespaces are `<prefix>-<name>` and whose pods' cgroup is `<prefix>`
    /// (for the demo, whose names a person types).
    pub fn named(prefix: &str, id: u8) -> anyhow::Result<Self> {
        Self::create(prefix.to_string(), prefix, id)
    }

    fn create(prefix: String, cgroup: &str, id: u8) -> anyhow::Result<Self> {
        let cgroup = cgroup2_root()?.join(cgroup);
        std::fs::create_dir_all(&cgroup)?;
        // Each bpffs mount is a separate instance: pins made here are this topology's only.
        let bpffs = std::env::temp_dir().join(format!("weft-bpf-{prefix}"));
        std::fs::create_dir_all(&bpffs)?;
        sh(&format!("mount -t bpf bpf {}", bpffs.display()))?;
        Ok(Topology {
            bpffs,
            prefix,
            namespaces: Vec::new(),
            cgroup,
            extra_cgroups: Vec::new(),
            pod_nodes: Default::default(),
            gateway: format!("10.{id}.0.1"),
            subnet: id,
            pods: Default::default(),
        })
    }

    /// The address of pod `name` (empty if there is none).
    pub fn pod_ip(&self, name: &str) -> String {
        self.pods.get(name).cloned().unwrap_or_default()
    }

    /// The cgroup2 directory of `node`'s pods: two weftd cannot both attach to one cgroup,
    /// so every node but the first gets its own. Pods of `node` run in it from then on.
    pub fn extra_cgroup(&mut self, node: &str) -> anyhow::Result<PathBuf> {
        let name = self
            .cgroup
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let dir = self.cgroup.with_file_name(format!("{name}-{node}"));
        std::fs::create_dir_all(&dir)?;
        self.extra_cgroups.push((node.to_string(), dir.clone()));
        Ok(dir)
    }

    /// The cgroup the processes of `pod` run in: its node's.
    pub fn pod_cgroup(&self, pod: &str) -> &Path {
        let node = self.pod_nodes.get(pod);
        self.extra_cgroups
            .iter()
            .find(|(n, _)| Some(n) == node)
            .map_or(&self.cgroup, |(_, dir)| dir)
    }

    pub fn ns_path(&self, name: &str) -> PathBuf {
        Path::new("/var/run/netns").join(format!("{}-{name}", self.prefix))
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A node namespace with forwarding on.
    pub fn node(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = self.ns(name);
        sh(&format!("ip netns add {ns}"))?;
        self.namespaces.push(ns.clone());
        sh(&format!("ip -n {ns} link set lo up"))?;
        sh(&format!(
            "ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1"
        ))?;
        Ok(())
    }

    /// A pod (or outside host) namespace at `10.<id>.<net>.<host>`, wired to `node` by a veth
    /// whose node side holds the gateway address, with a /32 route each way.
    pub fn pod(&mut self, node: &str, name: &str, net: u8, host: u8) -> anyhow::Result<String> {
        let (nodens, ns) = (self.ns(node), self.ns(name));
        let ip = format!("10.{}.{net}.{host}", self.subnet);
        let veth = format!("v{}{}", net, host);
        sh(&format!("ip netns add {ns}"))?;
        self.namespaces.push(ns.clone());
        sh(&format!(
            "ip -n {nodens} link add {veth} type veth peer name eth0 netns {ns}"
        ))?;
        sh(&format!(
            "ip -n {nodens} addr add {}/32 dev {veth}",
            self.gateway
        ))?;
        sh(&format!("ip -n {nodens} link set {veth} up"))?;
        sh(&format!("ip -n {nodens} route add {ip}/32 dev {veth}"))?;
        sh(&format!("ip -n {ns} link set lo up"))?;
        sh(&format!("ip -n {ns} addr add {ip}/32 dev eth0"))?;
        sh(&format!("ip -n {ns} link set eth0 up"))?;
        sh(&format!(
            "ip -n {ns} route add {} dev eth0 scope link",
            self.gateway
        ))?;
        sh(&format!(
            "ip -n {ns} route add default via {} dev eth0",
            self.gateway
        ))?;
        self.pods.insert(name.to_string(), ip.clone());
        self.pod_nodes.insert(name.to_string(), node.to_string());
        Ok(ip)
    }

    /// Joins two nodes through a bridge (in a namespace `lan` of its own): each node has an
    /// interface `uplink` at 10.<id>.254.<net> plugged into it, and routes the other node's pod
    /// network (10.<id>.<net>.0/24) via the other node's uplink address. Returns the uplink
    /// addresses.
    pub fn link_nodes(
        &mut self,
        a: &str,
        a_net: u8,
        b: &str,
        b_net: u8,
    ) -> anyhow::Result<(String, String)> {
        let lan = self.ns("lan");
        if !self.namespaces.contains(&lan) {
            sh(&format!("ip netns add {lan}"))?;
            self.namespaces.push(lan.clone());
            sh(&format!("ip -n {lan} link add name br0 type bridge"))?;
            sh(&format!("ip -n {lan} link set br0 up"))?;
        }
        let (na, nb) = (self.ns(a), self.ns(b));
        let (ia, ib) = (
            format!("10.{}.254.{a_net}", self.subnet),
            format!("10.{}.254.{b_net}", self.subnet),
        );
        for (ns, net) in [(&na, a_net), (&nb, b_net)] {
            let port = format!("port{net}");
            sh(&format!(
                "ip -n {ns} link add name uplink type veth peer name {port} netns {lan}"
            ))?;
            sh(&format!("ip -n {lan} link set {port} master br0"))?;
            sh(&format!("ip -n {lan} link set {port} up"))?;
        }
        for (ns, mine, peer, peer_net) in [(&na, &ia, &ib, b_net), (&nb, &ib, &ia, a_net)] {
            sh(&format!("ip -n {ns} addr add {mine}/32 dev uplink"))?;
            sh(&format!("ip -n {ns} link set uplink up"))?;
            sh(&format!("ip -n {ns} route add {peer}/32 dev uplink"))?;
            sh(&format!(
                "ip -n {ns} route add 10.{}.{peer_net}.0/24 via {peer} dev uplink",
                self.subnet
            ))?;
        }
        Ok((ia, ib))
    }

    /// Runs `cmd` in namespace `name` (without remounting /sys, unlike `ip netns exec`).
    pub fn exec(&self, name: &str, cmd: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path(name).display()))
            .args(["sh", "-c", cmd]);
        c
    }

    /// Runs `cmd` as a pod process: in the pod's namespace and in the test cgroup, which is
    /// where capture applies. The wrapper moves only its own PID.
    pub fn pod_exec(&self, name: &str, cmd: &str) -> anyhow::Result<Output> {
        Ok(self.pod_command(name, cmd).stdin(Stdio::null()).output()?)
    }

    /// `cmd` as a pod process (see [`Topology::pod_exec`]), to be spawned by the caller.
    pub fn pod_command(&self, name: &str, cmd: &str) -> Command {
        let procs = self.pod_cgroup(name).join("cgroup.procs");
        self.exec(
            name,
            &format!("echo $$ > {} && exec {cmd}", procs.display()),
        )
    }

    /// tcpdump of TCP on `node`'s uplink into `<dir>/link.pcap`, capturing once this returns.
    ///
    /// Waits for tcpdump's own "listening on" line rather than a fixed sleep: on a loaded
    /// 2-core runner tcpdump can take longer than any sleep to open the interface, and the
    /// first request then crosses the link unseen. Immediate mode hands each packet over as it
    /// arrives instead of in blocks filled for up to a second.
    pub fn capture_uplink(&self, dir: &Path, node: &str) -> anyhow::Result<LinkCapture> {
        let path = dir.join("link.pcap");
        let mut child = self
            .exec(
                node,
                &format!(
                    "exec tcpdump -i uplink --immediate-mode -s 0 -U -w {} tcp",
                    path.display()
                ),
            )
            .stderr(Stdio::piped())
            .spawn()
            .context("tcpdump must be installed")?;
        let stderr = child.stderr.take().context("tcpdump's stderr")?;
        let dump = Killed(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stderr).lines();
            let mut said = Vec::new();
            for line in lines.by_ref().map_while(Result::ok) {
                let listening = line.contains("listening on");
                said.push(line);
                if listening {
                    let _ = tx.send(Ok(()));
                    // Keep draining so tcpdump never blocks on a full pipe.
                    for _ in lines.by_ref() {}
                    return;
                }
            }
            let _ = tx.send(Err(said.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(())) => Ok(LinkCapture { dump, path }),
            Ok(Err(said)) => bail!("tcpdump on {node} exited before capturing: {said}"),
            Err(_) => bail!("tcpdump on {node} was not capturing after 15 s"),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Processes left in a namespace keep it alive; kill them first, by namespace.
            let _ = sh(&format!("ip netns pids {ns} | xargs -r kill -9"));
            let _ = sh(&format!("ip netns del {ns}"));
        }
        // Unmounting drops every pin, and with them the links still attached to the cgroups.
        let _ = sh(&format!("umount {}", self.bpffs.display()));
        let _ = std::fs::remove_dir(&self.bpffs);
        for cg in std::iter::once(&self.cgroup).chain(self.extra_cgroups.iter().map(|(_, d)| d)) {
            if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = sh(&format!("kill -9 {pid}"));
                }
            }
            let _ = std::fs::remove_dir(cg);
        }
    }
}

/// Sole use of the fixed names of a [`Topology::named`] run (`what` names the command, for the
/// refusal). A second run at once would take the first's namespaces for leftovers, so it is
/// refused; holding the claim, what a killed earlier run left is removed. Released on drop.
pub fn claim_names(what: &str, prefix: &str, names: &[&str]) -> anyhow::Result<NameClaim> {
    let path = std::env::temp_dir().join(format!("{prefix}.lock"));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!("another `{what}` is running (it holds {})", path.display());
    }
    if remove_leftovers(prefix, names) {
        println!("removed what an earlier `{what}` left behind");
    }
    Ok(NameClaim { _file: file, path })
}

/// See [`claim_names`].
pub struct NameClaim {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for NameClaim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes what a killed [`Topology::named`] run left behind under its fixed names: the
/// namespaces `<prefix>-<name>` (and their processes), its bpffs mount, its cgroups `<prefix>`
/// and `<prefix>-<name>`. Only those names are touched. Returns whether anything was found.
fn remove_leftovers(prefix: &str, names: &[&str]) -> bool {
    let mut found = false;
    for name in names {
        let ns = format!("{prefix}-{name}");
        if Path::new("/var/run/netns").join(&ns).exists() {
            found = true;
            let _ = sh(&format!("ip netns pids {ns} | xargs -r kill -9"));
            let _ = sh(&format!("ip netns del {ns}"));
        }
    }
    let bpffs = std::env::temp_dir().join(format!("weft-bpf-{prefix}"));
    if bpffs.exists() {
        found = true;
        let _ = sh(&format!("umount {}", bpffs.display()));
        let _ = std::fs::remove_dir(&bpffs);
    }
    if let Ok(root) = cgroup2_root() {
        let cgroups = std::iter::once(prefix.to_string())
            .chain(names.iter().map(|name| format!("{prefix}-{name}")));
        for cg in cgroups {
            let dir = root.join(cg);
            if dir.exists() {
                found = true;
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.split_whitespace() {
                        let _ = sh(&format!("kill -9 {pid}"));
                    }
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
    found
}

/// A running [`Topology::capture_uplink`].
pub struct LinkCapture {
    dump: Killed,
    path: PathBuf,
}

impl LinkCapture {
    /// Waits `settle` for the last packets, stops tcpdump and returns what it recorded.
    ///
    /// SIGTERM, not SIGKILL: tcpdump then writes out what it holds before it exits.
    pub fn finish(mut self, settle: Duration) -> Vec<u8> {
        std::thread::sleep(settle);
        if let Ok(pid) = libc::pid_t::try_from(self.dump.0.id()) {
            // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let exited = wait_for(|| matches!(self.dump.0.try_wait(), Ok(Some(_))));
            if !exited {
                eprintln!("tcpdump did not stop on SIGTERM; killing it");
            }
        }
        let path = self.path.clone();
        drop(self);
        std::fs::read(path).unwrap_or_default()
    }
}

/// Whether `needle` occurs in a packet capture (or any bytes).
pub fn contains(captured: &[u8], needle: &str) -> bool {
    captured
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 50 ms for up to 5 s.
pub fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        f()
    })
}

/// Writes a fresh root CA (`root-cert.pem`, `root-key.pem`) into `dir`.
pub fn write_ca(dir: &Path) -> anyhow::Result<()> {
    let (cert, key) = weft_core::identity::generate_root("test", Duration::from_secs(3600))?;
    std::fs::write(dir.join("root-cert.pem"), cert)?;
    std::fs::write(dir.join("root-key.pem"), key)?;
    Ok(())
}

impl Topology {
    /// `python3 -m http.server` on `ip:8080` in `pod`, once it serves; `/` answers
    /// `hello from <pod>`. Its access log (client addresses) is `<dir>/<pod>.log`.
    pub fn http_server(&self, dir: &Path, pod: &str, ip: &str) -> anyhow::Result<Killed> {
        let out = dir.join(format!("{pod}.out"));
        let www = dir.join(format!("www-{pod}"));
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), format!("hello from {pod}\n"))?;
        let server = Killed(
            self.exec(
                pod,
                &format!(
                    "exec python3 -u -m http.server 8080 --bind {ip} --directory {}",
                    www.display()
                ),
            )
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(dir.join(format!("{pod}.log")))?)
            .spawn()?,
        );
        if !wait_for(|| std::fs::read_to_string(&out).is_ok_and(|o| o.contains("Serving HTTP"))) {
            bail!("http server in {pod} did not start");
        }
        Ok(server)
    }

    /// weftd for `node` in its namespace with `<dir>/mesh.yaml`, once ready. Its log is
    /// `<dir>/<node>.log`.
    pub fn start_weftd(&self, dir: &Path, node: &str, extra: &str) -> anyhow::Result<Killed> {
        let log = dir.join(format!("{node}.log"));
        let cmd = format!(
            "exec {} run --mesh {} --node {node} {extra}",
            crate::weftd_bin().display(),
            dir.join("mesh.yaml").display()
        );
        let w = Killed(
            self.exec(node, &cmd)
                .stderr(std::fs::File::create(&log)?)
                .spawn()?,
        );
        let ready = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            self.exec(node, "curl -sf http://127.0.0.1:15021/healthz/ready")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !ready {
            bail!(
                "{node} not ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(w)
    }

    /// `bin` (a weft-waypoint) named `waypoint` in `default`, as a process of `pod` with
    /// `<dir>/mesh.yaml`, once ready; its log is `<dir>/waypoint.log`. The mesh file must say
    /// `mode: none` for the pod: a waypoint is never captured.
    pub fn start_waypoint(
        &self,
        dir: &Path,
        pod: &str,
        bin: &Path,
        extra: &str,
    ) -> anyhow::Result<Killed> {
        let log = dir.join("waypoint.log");
        let cmd = format!(
            "{} --mesh {} --name waypoint --namespace default {extra}",
            bin.display(),
            dir.join("mesh.yaml").display()
        );
        let w = Killed(
            self.pod_command(pod, &cmd)
                .stderr(std::fs::File::create(&log)?)
                .spawn()?,
        );
        let ready = wait_for(|| {
            self.exec(pod, "curl -sf http://127.0.0.1:15021/healthz/ready")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !ready {
            bail!("the waypoint did not become ready:\n{}", read(&log));
        }
        Ok(w)
    }

    /// A GET of `path` on the node's own address (admin, metrics), from inside its namespace.
    pub fn node_get(&self, node: &str, url: &str) -> String {
        self.exec(node, &format!("curl -s {url}"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    pub fn metrics(&self, node: &str) -> String {
        self.node_get(node, "http://127.0.0.1:15020/metrics")
    }

    /// The HTTP status a pod process gets from `url` ("000": no answer within 5 s), sending
    /// any extra curl arguments.
    pub fn curl_status(&self, pod: &str, url: &str, extra: &str) -> String {
        self.pod_exec(
            pod,
            &format!("curl -s -o /dev/null -w %{{http_code}} --max-time 5 {extra} {url}"),
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    }
}

/// The file at `path`, or "" when it cannot be read (not written yet).
pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Writes `<dir>/mesh.yaml` atomically, with a fresh CA: `nodes` and `workloads` are YAML list
/// items, `rest` further top-level sections.
pub fn write_mesh(dir: &Path, nodes: &str, workloads: &str, rest: &str) -> anyhow::Result<()> {
    if !dir.join("root-cert.pem").exists() {
        write_ca(dir)?;
    }
    let text = format!(
        "ca: {{certFile: root-cert.pem, keyFile: root-key.pem}}\nnodes:\n{nodes}workloads:\n{workloads}{rest}"
    );
    let tmp = dir.join("mesh.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join("mesh.yaml"))?;
    Ok(())
}

/// True when some `weft_tcp_connections_opened_total` series of `metrics` has every label.
pub fn opened(metrics: &str, labels: &[&str]) -> bool {
    metrics.lines().any(|l| {
        l.starts_with("weft_tcp_connections_opened_total") && labels.iter().all(|w| l.contains(w))
    })
}

/// How many connections a [`Topology::line_echo_server`] saw from `who`.
pub fn connections_from(server_output: &str, who: &str) -> usize {
    let want = format!("from {who}");
    server_output.lines().filter(|l| *l == want).count()
}

/// A server that echoes lines and prints `from <peer ip>` per connection.
const LINE_ECHO: &str = "import socket, sys, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(64); print('listening', flush=True)
def serve(c, a):
    print('from', a[0], flush=True)
    f = c.makefile('rwb', 0)
    for line in f:
        f.write(line)
while True:
    c, a = l.accept(); threading.Thread(target=serve, args=(c, a), daemon=True).start()
";

/// A client holding one connection, sending a line per `send`; gives up after 5 s silence.
const LINE_CLIENT: &str = "import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); s.settimeout(5)
f = s.makefile('rwb', 0)
for line in sys.stdin:
    f.write(line.encode()); print(f.readline().decode().strip(), flush=True)
";

/// A long-lived connection from a pod process, see [`Topology::line_client`].
pub struct LineClient {
    _child: Killed,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl LineClient {
    /// Sends `line` and returns the echoed line, or None when the connection failed.
    pub fn send(&mut self, line: &str) -> Option<String> {
        use std::io::Write;
        writeln!(self.stdin, "{line}").ok()?;
        self.lines.next()?.ok().filter(|l| !l.is_empty())
    }
}

impl Topology {
    /// Node entry for a mesh file: eBPF capture of the pods in `cgroup`, pins under this
    /// topology's bpffs, classifier also on `uplinks` (a YAML list body).
    pub fn ebpf_node(&self, name: &str, cgroup: &Path, uplinks: &str) -> String {
        format!(
            "  - {{name: {name}, capture: ebpf, ebpf: {{cgroup: \"{}\", redirectAddress: \"{}\", interfaces: [{uplinks}], pinPath: \"{}\"}}, listen: {{outbound: \"0.0.0.0:15001\"}}}}\n",
            cgroup.display(),
            self.gateway,
            self.pin_path(name).display()
        )
    }

    /// Where node `name` pins its capture state.
    pub fn pin_path(&self, node: &str) -> PathBuf {
        self.bpffs.join(node)
    }

    /// Workload entry for pod `pod` (service account and `app` label = its name).
    pub fn pod_entry(&self, pod: &str, ip: &str, node: &str, extra: &str) -> String {
        format!(
            "  - {{name: {pod}, serviceAccount: {pod}, ips: [{ip}], node: {node}, netns: \"{}\", labels: {{app: {pod}}}{extra}}}\n",
            self.ns_path(pod).display()
        )
    }

    /// [`LINE_ECHO`] on `ip:port` in `pod`, once listening. Returns it and its output file.
    pub fn line_echo_server(
        &self,
        dir: &Path,
        pod: &str,
        ip: &str,
        port: u16,
    ) -> anyhow::Result<(Killed, PathBuf)> {
        let script = dir.join("line_echo.py");
        std::fs::write(&script, LINE_ECHO)?;
        let out = dir.join(format!("{pod}-{port}.out"));
        let server = Killed(
            self.exec(
                pod,
                &format!("exec python3 -u {} {ip} {port}", script.display()),
            )
            .stdout(std::fs::File::create(&out)?)
            .spawn()?,
        );
        if !wait_for(|| read(&out).contains("listening")) {
            bail!("line echo server in {pod} did not start");
        }
        Ok((server, out))
    }

    /// A pod process holding one connection to `ip:port` (in the capture cgroup).
    pub fn line_client(&self, pod: &str, ip: &str, port: u16) -> anyhow::Result<LineClient> {
        let mut child = self
            .pod_command(pod, &format!("python3 -u -c \"{LINE_CLIENT}\" {ip} {port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(LineClient {
            _child: Killed(child),
            stdin,
            lines: std::io::BufRead::lines(std::io::BufReader::new(stdout)),
        })
    }

    /// One connection from a pod process: send `tag`, return the echo ("" on failure).
    pub fn line_once(&self, pod: &str, ip: &str, port: u16, tag: &str) -> String {
        let py = format!(
            "import socket; s=socket.create_connection(('{ip}',{port}),5); s.settimeout(5); s.sendall(b'{tag}\\n'); print(s.recv(100).decode().strip())"
        );
        self.pod_exec(pod, &format!("python3 -c \"{py}\""))
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}
