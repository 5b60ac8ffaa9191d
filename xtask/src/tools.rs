//! Making sure the external tools a command needs are on the machine: installed with apt-get
//! when running as root, otherwise named exactly.

use std::process::Command;

use anyhow::bail;

fn have(bin: &str) -> bool {
    if bin.starts_with('/') {
        return std::path::Path::new(bin).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {bin} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// `tools` are (binary or absolute file path, Debian package) pairs.
pub fn ensure(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<_> = tools.iter().filter(|(bin, _)| !have(bin)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    if !is_root() {
        bail!(
            "missing tools: {}; install them with: apt-get install -y {}",
            missing
                .iter()
                .map(|(b, _)| *b)
                .collect::<Vec<_>>()
                .join(", "),
            packages.join(" ")
        );
    }
    eprintln!("+ apt-get install -y {}", packages.join(" "));
    let ok = Command::new("sh")
        .args(["-c", &format!("(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}", packages.join(" "))])
        .status()?
        .success();
    let still: Vec<_> = missing
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(b, _)| *b)
        .collect();
    if !ok || !still.is_empty() {
        bail!("could not install {}", still.join(", "));
    }
    Ok(())
}
