//! `weftd capture uninstall`: undo what capture installed, so that the node is as it was
//! before weft. Everything it removes is idempotent to remove; a second run finds nothing.

use std::path::Path;

use anyhow::Context;

use super::bpf::ProgramSettings;
use super::netlink::{Routing, TABLE};
use super::pin;

pub fn run(pin_path: &Path) -> anyhow::Result<()> {
    let removed = pin::uninstall(pin_path)?;
    for name in &removed.links {
        println!("unpinned link {name}");
    }
    for name in &removed.maps {
        println!("unpinned map {name}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let routes = rt.block_on(async {
        let routing = Routing::new(ProgramSettings::default().capture_mark, TABLE)?;
        routing.uninstall().await
    })?;
    for what in &routes {
        println!("removed the capture {what}");
    }
    if removed.links.is_empty() && removed.maps.is_empty() && routes.is_empty() {
        println!(
            "nothing to remove: no capture state at {}",
            pin_path.display()
        );
    } else {
        println!("capture removed; pods' connections go direct");
    }
    Ok(())
}
