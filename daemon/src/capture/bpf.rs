//! Loading the capture programs into the kernel (aya). The object is the one `build.rs` put in
//! OUT_DIR; settings reach the programs as `const volatile` globals.

use aya::programs::{CgroupSockAddr, CgroupSockopt, SchedClassifier, SkLookup, SockOps};
use std::path::Path;

use aya::{Ebpf, EbpfLoader};

/// The compiled capture programs.
pub static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/capture.bpf.o"));

/// Values the programs are specialised with at load time.
#[derive(Debug, Clone, Copy)]
pub struct ProgramSettings {
    /// SO_MARK of weftd's own sockets: never captured.
    pub weftd_mark: u32,
    /// skb mark that routes a packet to weftd's listeners.
    pub capture_mark: u32,
    pub outbound_port: u16,
    pub hbone_port: u16,
    pub plaintext_port: u16,
}

impl Default for ProgramSettings {
    fn default() -> Self {
        ProgramSettings {
            weftd_mark: 0x539,
            capture_mark: 0x100,
            outbound_port: 15001,
            hbone_port: 15008,
            plaintext_port: 15006,
        }
    }
}

/// The programs of the object, by kind. A program the object lacks is an error: a stale
/// object must not silently capture less.
pub const SOCK_ADDR: &[&str] = &[
    "weft_connect4",
    "weft_connect6",
    "weft_getpeername4",
    "weft_getpeername6",
];
pub const SOCK_OPS: &str = "weft_sockops";
pub const SOCKOPT: &str = "weft_getsockopt";
pub const CLASSIFIER: &str = "weft_ingress";
pub const SK_LOOKUP: &str = "weft_sk_lookup";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("parsing the capture object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("the capture object has no program {0}")]
    Missing(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Creates the maps, or opens the ones pinned in `maps` (pinning new ones there), and loads
/// every program through the verifier, without attaching anything.
pub fn load(settings: &ProgramSettings, maps: &Path) -> Result<Ebpf, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(maps)
        .override_global("weftd_mark", &settings.weftd_mark, true)
        .override_global("capture_mark", &settings.capture_mark, true)
        .override_global("outbound_port", &settings.outbound_port, true)
        .override_global("hbone_port", &settings.hbone_port, true)
        .override_global("plaintext_port", &settings.plaintext_port, true)
        .load(OBJECT)?;
    for &name in SOCK_ADDR {
        load_one::<CgroupSockAddr>(&mut ebpf, name, |p| p.load())?;
    }
    load_one::<SockOps>(&mut ebpf, SOCK_OPS, |p| p.load())?;
    load_one::<CgroupSockopt>(&mut ebpf, SOCKOPT, |p| p.load())?;
    load_one::<SchedClassifier>(&mut ebpf, CLASSIFIER, |p| p.load())?;
    load_one::<SkLookup>(&mut ebpf, SK_LOOKUP, |p| p.load())?;
    Ok(ebpf)
}

fn load_one<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    load: impl FnOnce(&mut T) -> Result<(), aya::programs::ProgramError>,
) -> Result<(), LoadError>
where
    for<'a> &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(LoadError::Missing(name))?;
    let typed: &mut T = program
        .try_into()
        .map_err(|source| LoadError::Program { name, source })?;
    load(typed).map_err(|source| LoadError::Program { name, source })
}

/// Every program name, in load order.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    SOCK_ADDR
        .iter()
        .copied()
        .chain([SOCK_OPS, SOCKOPT, CLASSIFIER, SK_LOOKUP])
}
