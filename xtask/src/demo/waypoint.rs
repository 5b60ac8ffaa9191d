//! The demo's second act: a waypoint in front of the service `web`. Its routes split the
//! traffic 90/10 between the versions, pin v2 for requests with `x-version: v2`, and retry a
//! 503 (which web-4 answers to every other request, so the client never sees it); a policy
//! attached to the service refuses DELETE.

use std::path::Path;

use anyhow::bail;
use weft_tests::netns::{Killed, Topology, read, wait_for};

/// The bound service.
pub const VIP: &str = "10.60.100.1";

/// `services:` entries besides `web-v1`: the bound service, v2, and the waypoint's own.
pub const SERVICES: &str = "  - {name: web, vips: [10.60.100.1], ports: [{port: 80, targetPort: 8080}], selector: {app: web}, waypoint: waypoint}
  - {name: web-v2, vips: [10.60.100.3], ports: [{port: 80, targetPort: 8080, appProtocol: http}], selector: {version: v2}}
  - {name: waypoint, vips: [10.60.100.4], ports: [{port: 15008}], selector: {app: waypoint}}
";

/// More `policies:` entries, then the `routes:`.
pub const POLICIES_AND_ROUTES: &str = "  - name: web-no-delete
    namespace: default
    targetRefs: [{kind: Service, name: web}]
    action: DENY
    rules: [{to: [{operation: {methods: [DELETE]}}]}]
routes:
  - name: web
    namespace: default
    parentRefs: [{kind: Service, name: web, port: 80}]
    rules:
      - matches: [{headers: [{name: x-version, value: v2}]}]
        backendRefs: [{name: web-v2, port: 80}]
        retry: {codes: [503], attempts: 2, backoff: 10ms}
      - backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
        retry: {codes: [503], attempts: 2, backoff: 10ms}
";

/// An HTTP server that answers 503 to every other request: the flaky endpoint.
const FLAKY: &str = "import http.server, sys, threading
lock = threading.Lock(); n = [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        with lock:
            n[0] += 1; fail = n[0] % 2 == 0
        body = b'flaky\\n' if fail else ('hello from %s\\n' % sys.argv[3]).encode()
        self.send_response(503 if fail else 200)
        self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
s = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print('Serving HTTP', flush=True); s.serve_forever()
";

pub fn flaky_server(t: &Topology, dir: &Path, pod: &str, ip: &str) -> anyhow::Result<Killed> {
    let script = dir.join("flaky.py");
    std::fs::write(&script, FLAKY)?;
    let out = dir.join(format!("{pod}.out"));
    let server = Killed(
        t.exec(
            pod,
            &format!("exec python3 -u {} {ip} 8080 {pod}", script.display()),
        )
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(dir.join(format!("{pod}.log")))?)
        .spawn()?,
    );
    if !wait_for(|| read(&out).contains("Serving HTTP")) {
        bail!("the flaky server in {pod} did not start");
    }
    Ok(server)
}

/// weft-waypoint in its pod (never captured: the mesh file says `mode: none`), once ready.
pub fn start(t: &Topology, dir: &Path) -> anyhow::Result<Killed> {
    t.start_waypoint(dir, "waypoint", &weft_tests::waypoint_bin(), "")
}

pub fn act(t: &Topology, dir: &Path) -> anyhow::Result<()> {
    let curl = |args: &str| -> anyhow::Result<String> {
        let out = t.pod_exec("client", &format!("curl -s --max-time 30 {args}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    println!("\n== the waypoint: client calls http://{VIP}/ 100 times (one kept connection)");
    let replies = curl(&format!("'http://{VIP}/?n=[1-100]'"))?;
    let count = |who: &str| replies.matches(&format!("hello from {who}")).count();
    let (v1, v3, v4) = (
        count("web-1") + count("web-2"),
        count("web-3"),
        count("web-4"),
    );
    let flaky_seen = replies.matches("flaky").count();
    println!(
        "v1 (web-1, web-2): {v1}   v2 (web-3, web-4): {}   503s the client saw: {flaky_seen}",
        v3 + v4
    );
    if v1 + v3 + v4 != 100 || flaky_seen != 0 {
        bail!(
            "expected 100 answers and no failure, got {v1} + {v3} + {v4}, {flaky_seen} failed; waypoint log:\n{}",
            read(dir.join("waypoint.log"))
        );
    }
    println!("\n== x-version: v2 pins v2; web-4 fails every other request, the retry hides it");
    let pinned = curl(&format!("-H 'x-version: v2' 'http://{VIP}/?n=[1-10]'"))?;
    let failed = read(dir.join("web-4.log")).matches("\" 503 ").count();
    println!(
        "10 requests -> web-3: {}, web-4: {}; web-4 answered 503 {failed} times in all, the client saw {}",
        pinned.matches("hello from web-3").count(),
        pinned.matches("hello from web-4").count(),
        pinned.matches("flaky").count()
    );
    println!("\n== DELETE is refused by the policy attached to the service");
    let status = t.curl_status("client", &format!("http://{VIP}/item"), "-X DELETE");
    println!("curl -X DELETE http://{VIP}/item -> {status}");
    if status != "403" {
        bail!("DELETE got {status}, not 403");
    }
    println!("\n== request metrics at the waypoint");
    let metrics = t
        .exec("waypoint", "curl -s http://127.0.0.1:15021/metrics")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("weft_requests_total"))
    {
        println!("waypoint: {line}");
    }
    Ok(())
}
