//! The routing half of inbound capture, through rtnetlink (no `ip` commands): a policy rule
//! sends packets the classifier marked to a table whose only route makes every address local,
//! so they reach weftd's transparent listeners instead of being forwarded to the pod.
//! Installing and removing are both idempotent; `weftd capture uninstall` removes them.

use std::net::Ipv4Addr;

use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{Handle, RouteMessageBuilder};

/// Routing table of the capture rule (`ip rule fwmark 0x100/0xfff lookup 100`).
pub const TABLE: u32 = 100;
/// Priority of our rule: before the main table (32766), after the local one (0).
const RULE_PRIORITY: u32 = 1000;
/// The mask keeps weftd's own SO_MARK (0x539 has bit 0x100 set) out of the rule.
const MARK_MASK: u32 = 0xfff;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        source: rtnetlink::Error,
    },
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

pub struct Routing {
    handle: Handle,
    mark: u32,
    table: u32,
}

impl Routing {
    /// Must run inside the tokio runtime; the connection task lives as long as the handle.
    pub fn new(mark: u32, table: u32) -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Routing {
            handle,
            mark,
            table,
        })
    }

    fn local_route(&self) -> rtnetlink::packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(1) // lo
            .table_id(self.table)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .build()
    }

    fn rule(&self) -> rtnetlink::RuleAddRequest<Ipv4Addr> {
        let mut rule = self
            .handle
            .rule()
            .add()
            .v4()
            .fw_mark(self.mark)
            .table_id(self.table)
            // rtnetlink leaves the action unset, which the kernel takes as "do nothing".
            .action(RuleAction::ToTable)
            .priority(RULE_PRIORITY);
        rule.message_mut()
            .attributes
            .push(RuleAttribute::FwMask(MARK_MASK));
        rule
    }

    /// `ip rule add fwmark MARK/0xfff lookup TABLE` + `ip route add local 0/0 dev lo table TABLE`.
    pub async fn install(&self) -> Result<(), NetlinkError> {
        match self.rule().execute().await {
            Err(e) if !exists(&e) => return Err(request("adding the capture ip rule")(e)),
            _ => {}
        }
        self.handle
            .route()
            .add(self.local_route())
            .replace()
            .execute()
            .await
            .map_err(request("adding the capture local route"))
    }

    /// Removes the rule and the route. Returns what was there to remove.
    pub async fn uninstall(&self) -> Result<Vec<&'static str>, NetlinkError> {
        let mut removed = Vec::new();
        let rule = self.rule().message_mut().clone();
        match self.handle.rule().del(rule).execute().await {
            Ok(()) => removed.push("ip rule"),
            Err(e) if absent(&e) => {}
            Err(e) => return Err(request("removing the capture ip rule")(e)),
        }
        match self.handle.route().del(self.local_route()).execute().await {
            Ok(()) => removed.push("local route table"),
            Err(e) if absent(&e) => {}
            Err(e) => return Err(request("removing the capture local route")(e)),
        }
        Ok(removed)
    }
}

fn absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.raw_code() == -libc::ENOENT || m.raw_code() == -libc::ESRCH)
}
