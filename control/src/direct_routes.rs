//! Kernel routes for the peers reached without encapsulation: host-gw, `encapsulation = "Never"`,
//! and the same-subnet peers under `CrossSubnet` (flannel's `DirectRouting`).
//!
//! These packets never pass through Weft. A plain routed packet needs nothing a userspace
//! dataplane could add (no header to push, no table the kernel lacks), the kernel's IP routing is
//! present on every kernel Weft targets (it is not a module), and it forwards without two copies
//! across the user/kernel boundary: the route `<peer subnet> via <peer public IP> dev <underlay>`
//! is exactly what flannel's host-gw programs, so mixed clusters agree on it too. The routes are
//! more specific than the cluster route into Weft's TUN, so they win; a peer that cannot be routed
//! directly is refused by [`crate::datastore::peer_of`] and its traffic reaches the TUN, where
//! Weft answers ICMP unreachable and counts the drop, instead of leaking onto a default route.
//!
//! The programmer runs on its own thread (netlink here is synchronous; the control loop is async)
//! and is handed the complete wanted set each time it changes, so a burst of changes costs one
//! reconciliation. It adopts what it finds at start: routes into the cluster network through a
//! gateway on the underlay interface are direct peer routes (an earlier run's, or flannel's) and
//! are removed unless wanted. Failed changes are retried every [`RETRY`]. Routes stay in place
//! when the agent stops, so a restart does not interrupt traffic.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::datastore::DirectRouteSink;
use crate::metrics::Metrics;
use crate::netlink::Netlink;

/// How often failed route changes are retried.
pub const RETRY: Duration = Duration::from_secs(5);

/// The running programmer; dropping it ends the thread (the routes stay).
#[derive(Debug)]
pub struct DirectRoutes {
    thread: Option<JoinHandle<()>>,
}

impl DirectRoutes {
    /// Starts programming routes through `underlay_if` for subnets of `cluster`; returns the sink
    /// [`crate::datastore::PeerSync`] sends the wanted sets to. The thread ends when every sender
    /// is gone.
    pub fn start(
        underlay_if: String,
        cluster: Ipv4Net,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(DirectRoutes, DirectRouteSink)> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("weft-routes".into())
            .spawn(move || run(&rx, &underlay_if, cluster, &metrics))?;
        Ok((
            DirectRoutes {
                thread: Some(thread),
            },
            tx,
        ))
    }

    /// Waits for the thread to end (after every sender was dropped).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    rx: &Receiver<Vec<(Ipv4Net, Ipv4Addr)>>,
    underlay_if: &str,
    cluster: Ipv4Net,
    metrics: &Metrics,
) {
    let nl = match Netlink::new() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::error!(
                "direct routes: no netlink socket: {e}; peers routed directly get no route"
            );
            return;
        }
    };
    let mut installed = adopt(&nl, underlay_if, cluster);
    let mut want: Option<Vec<(Ipv4Net, Ipv4Addr)>> = None;
    let mut failing = false;
    loop {
        let timeout = if failing {
            RETRY
        } else {
            Duration::from_secs(3600)
        };
        match rx.recv_timeout(timeout) {
            Ok(w) => want = Some(w),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Only the newest set matters.
        while let Ok(w) = rx.try_recv() {
            want = Some(w);
        }
        let Some(w) = &want else { continue };
        failing = !apply(&nl, underlay_if, &mut installed, w);
        metrics.set_direct_routes(installed.len());
    }
}

/// The direct peer routes already in the kernel: into `cluster`, via a gateway, on `underlay_if`.
fn adopt(nl: &Netlink, underlay_if: &str, cluster: Ipv4Net) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    match nl.routes() {
        Ok(routes) => routes
            .into_iter()
            .filter(|r| cluster.contains(&r.dst) && r.dev.as_deref() == Some(underlay_if))
            .filter_map(|r| Some((r.dst, r.gateway?)))
            .collect(),
        Err(e) => {
            tracing::warn!("direct routes: cannot list routes: {e}; stale ones stay");
            BTreeMap::new()
        }
    }
}

/// Brings the kernel to `want`; returns whether every change went through.
fn apply(
    nl: &Netlink,
    underlay_if: &str,
    installed: &mut BTreeMap<Ipv4Net, Ipv4Addr>,
    want: &[(Ipv4Net, Ipv4Addr)],
) -> bool {
    let mut ok = true;
    let wanted: BTreeMap<Ipv4Net, Ipv4Addr> = want.iter().copied().collect();
    let stale: Vec<Ipv4Net> = installed
        .keys()
        .filter(|dst| !wanted.contains_key(dst))
        .copied()
        .collect();
    for dst in stale {
        match nl.delete_route(dst) {
            Ok(()) => {
                installed.remove(&dst);
                tracing::info!(%dst, "direct route removed");
            }
            Err(e) => {
                tracing::warn!(%dst, "cannot remove direct route: {e}; retrying");
                ok = false;
            }
        }
    }
    for (dst, via) in wanted {
        if installed.get(&dst) == Some(&via) {
            continue;
        }
        match nl.replace_route(dst, underlay_if, Some(via), false) {
            Ok(()) => {
                installed.insert(dst, via);
                tracing::info!(%dst, %via, dev = underlay_if, "direct route installed");
            }
            Err(e) => {
                tracing::warn!(%dst, %via, dev = underlay_if, "cannot install direct route: {e}; retrying");
                ok = false;
            }
        }
    }
    ok
}
