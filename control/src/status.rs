//! The node's health on one screen: what `weftctl status` prints and the rule that decides its
//! exit code.
//!
//! A node is **healthy** when it holds its subnet lease, its tables hold what the datastore says,
//! subnet.env is written (the three parts of `/readyz`) and the datastore answers now. The last
//! one is not part of readiness, because the last tables stay in force while etcd or the API
//! server is away and pods keep talking; but such a node misses every change until it is back, so
//! a script asking "is this node all right?" gets a no. Every reason is listed in `problems`.
//!
//! [`Health`] is the agent's side (the flags and counters it keeps); [`status_of`] is the pure
//! function from them and a [`ShowReply`] to the [`StatusReply`] the control socket sends.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::show::{CountersView, NodeView, ShowReply};

/// The datastore as the agent sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatastoreView {
    /// `static`, `etcd` or `kubernetes`.
    pub kind: String,
    /// Where it is: the etcd endpoints and prefix, the kubeconfig (or in-cluster), the file.
    pub endpoint: String,
    /// It answered the last request, and the watch is up.
    pub connected: bool,
    /// Connections or watches re-established after a failure since start.
    pub reconnects: u64,
}

/// This node's subnet lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseView {
    /// Held now (etcd: renewed in time and not taken; Kubernetes: the podCIDR; static: always).
    pub held: bool,
    /// The subnet.
    pub subnet: String,
    /// Renewals since start (etcd).
    pub renewals: u64,
}

/// flannel's subnet.env.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubnetEnvView {
    /// Where it is written (`datastore.subnet_file`).
    pub path: String,
    /// Written since the agent started.
    pub written: bool,
}

/// Sizes of the published tables.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TableSizes {
    /// FIB routes.
    pub routes: usize,
    /// Neighbour entries.
    pub neighbors: usize,
    /// FDB entries.
    pub fdb: usize,
}

/// The answer to `{"cmd":"status"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReply {
    /// Healthy: ready and the datastore answers. `weftctl status` exits 0 exactly then.
    pub healthy: bool,
    /// What is wrong, one line each; empty when healthy.
    pub problems: Vec<String>,
    /// Node facts (name, addresses, VNI, port, TUN and its MTU, underlay MTU, workers).
    pub node: NodeView,
    /// The encapsulation: `vxlan` (and, later, `ipip`, `host-gw`).
    pub backend: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// The datastore.
    pub datastore: DatastoreView,
    /// The lease.
    pub lease: LeaseView,
    /// The tables hold what the datastore said (first listing applied).
    pub tables_programmed: bool,
    /// subnet.env and whether it is written.
    pub subnet_env: SubnetEnvView,
    /// Remote nodes programmed.
    pub peers: usize,
    /// Table sizes.
    pub tables: TableSizes,
    /// Traffic and drops by reason.
    pub counters: CountersView,
    /// `net.ipv4.ip_forward` in the agent's namespace: `true` on, `false` off, `null` unreadable.
    #[serde(default)]
    pub ip_forward: Option<bool>,
    /// Egress masquerade.
    #[serde(default)]
    pub masq: MasqView,
    /// NetworkPolicy; `None` on a node without a policy source.
    #[serde(default)]
    pub policy: Option<PolicyView>,
}

/// NetworkPolicy in a status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    /// Where the policies come from (`kubernetes`, `dir /etc/weft/policies`).
    pub source: String,
    /// The generation of the set in force (every recompile raises it).
    pub generation: u64,
    /// NetworkPolicies in force.
    pub policies: usize,
    /// This node's pods some policy isolates.
    pub isolated_pods: usize,
}

/// Egress masquerade in a status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasqView {
    /// The rules are applied (`[network] ip_masq`).
    pub enabled: bool,
    /// `iptables` or `nftables`; empty when off.
    pub backend: String,
    /// Times the rules were found changed on the host and re-applied.
    pub repairs: u64,
}

/// The agent's control-plane state that is not in a [`ShowReply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `backend`.
    pub backend: String,
    /// `uptime_secs`.
    pub uptime_secs: u64,
    /// The datastore.
    pub datastore: DatastoreView,
    /// Lease held.
    pub lease_held: bool,
    /// Renewals.
    pub renewals: u64,
    /// Tables programmed.
    pub tables_programmed: bool,
    /// subnet.env path.
    pub subnet_file: String,
    /// subnet.env written.
    pub subnet_env_written: bool,
    /// Peers programmed.
    pub peers: usize,
    /// `net.ipv4.ip_forward` read now; `None` when it cannot be read.
    pub ip_forward: Option<bool>,
    /// Egress masquerade.
    pub masq: MasqView,
    /// NetworkPolicy.
    pub policy: Option<PolicyView>,
}

/// Builds the status from the tables view and the control plane's state, deciding health.
pub fn status_of(show: ShowReply, h: Health) -> StatusReply {
    let mut problems = Vec::new();
    if !h.lease_held {
        problems.push(format!(
            "subnet lease not held (subnet {}); see the agent's log",
            show.node.subnet
        ));
    }
    if !h.tables_programmed {
        problems.push("tables not yet programmed from the datastore".to_string());
    }
    if !h.subnet_env_written {
        problems.push(format!("{} not written", h.subnet_file));
    }
    if !h.datastore.connected {
        problems.push(format!(
            "datastore {} ({}) not answering; the last tables stay in force, changes are missed",
            h.datastore.kind, h.datastore.endpoint
        ));
    }
    match h.ip_forward {
        Some(true) => {}
        Some(false) => problems.push(
            "net.ipv4.ip_forward is 0 (turned off after start-up?): pods cannot reach other nodes; `sysctl -w net.ipv4.ip_forward=1`".to_string(),
        ),
        None => problems.push("net.ipv4.ip_forward cannot be read".to_string()),
    }
    let tables = TableSizes {
        routes: show.routes.len(),
        neighbors: show.neighbors.len(),
        fdb: show.fdb.len(),
    };
    StatusReply {
        healthy: problems.is_empty(),
        problems,
        lease: LeaseView {
            held: h.lease_held,
            subnet: show.node.subnet.clone(),
            renewals: h.renewals,
        },
        node: show.node,
        backend: h.backend,
        uptime_secs: h.uptime_secs,
        datastore: h.datastore,
        tables_programmed: h.tables_programmed,
        subnet_env: SubnetEnvView {
            path: h.subnet_file,
            written: h.subnet_env_written,
        },
        peers: h.peers,
        tables,
        counters: show.counters,
        ip_forward: h.ip_forward,
        masq: h.masq,
        policy: h.policy,
    }
}

/// The status of an agent that cannot be asked (not running, wrong socket).
pub fn unreachable(problem: String) -> serde_json::Value {
    serde_json::json!({ "healthy": false, "problems": [problem] })
}

fn yes_no(b: bool, yes: &'static str, no: &'static str) -> &'static str {
    if b {
        yes
    } else {
        no
    }
}

impl StatusReply {
    /// One screen for an operator.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let n = &self.node;
        let _ = writeln!(
            s,
            "weft on {}: {}",
            n.name,
            yes_no(self.healthy, "HEALTHY", "UNHEALTHY")
        );
        for p in &self.problems {
            let _ = writeln!(s, "  problem: {p}");
        }
        let up = self.uptime_secs;
        let _ = writeln!(
            s,
            "agent      up {}h{:02}m{:02}s, {} workers",
            up / 3600,
            up / 60 % 60,
            up % 60,
            n.workers
        );
        let d = &self.datastore;
        let _ = writeln!(
            s,
            "datastore  {} {}: {}, {} reconnects",
            d.kind,
            d.endpoint,
            yes_no(d.connected, "connected", "NOT CONNECTED"),
            d.reconnects
        );
        let _ = writeln!(
            s,
            "lease      {} {} in {}, {} renewals; tables {}; {} {}",
            self.lease.subnet,
            yes_no(self.lease.held, "held", "NOT HELD"),
            n.network,
            self.lease.renewals,
            yes_no(self.tables_programmed, "programmed", "NOT PROGRAMMED"),
            self.subnet_env.path,
            yes_no(self.subnet_env.written, "written", "NOT WRITTEN"),
        );
        let _ = writeln!(
            s,
            "backend    {} vni {} port {} vtep {}, public ip {}",
            self.backend, n.vni, n.port, n.vtep_mac, n.public_ip
        );
        let _ = writeln!(
            s,
            "mtu        {} {} (underlay {}, overhead {})",
            n.tun,
            n.tun_mtu,
            n.underlay_mtu,
            n.underlay_mtu.saturating_sub(n.tun_mtu)
        );
        let _ = writeln!(
            s,
            "forwarding net.ipv4.ip_forward {}",
            match self.ip_forward {
                Some(true) => "1",
                Some(false) => "0 (NOT FORWARDING)",
                None => "unreadable",
            }
        );
        let _ = writeln!(
            s,
            "masquerade {}",
            if self.masq.enabled {
                format!("on ({}), {} repairs", self.masq.backend, self.masq.repairs)
            } else {
                "off (ip_masq = false)".to_string()
            }
        );
        if let Some(p) = &self.policy {
            let _ = writeln!(
                s,
                "policy     {}: {} NetworkPolicies, {} isolated pods, generation {}",
                p.source, p.policies, p.isolated_pods, p.generation
            );
        }
        let t = &self.tables;
        let _ = writeln!(
            s,
            "peers      {}; tables: {} routes, {} neighbours, {} fdb entries",
            self.peers, t.routes, t.neighbors, t.fdb
        );
        let c = &self.counters;
        let _ = writeln!(
            s,
            "traffic    rx local {} / underlay {} pkts, tx local {} / underlay {} pkts, {} ICMP/ARP replies",
            c.rx_local.packets, c.rx_underlay.packets, c.tx_local.packets, c.tx_underlay.packets, c.replies
        );
        let drops: Vec<String> = c
            .drops
            .iter()
            .filter(|(_, &v)| v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let total: u64 = c.drops.values().sum();
        if drops.is_empty() {
            let _ = writeln!(s, "drops      none");
        } else {
            let _ = writeln!(s, "drops      {total}: {}", drops.join(" "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::show::NodeView;

    fn show() -> ShowReply {
        ShowReply {
            node: NodeView {
                name: "node-a".into(),
                public_ip: "192.168.50.1".parse().expect("ip"),
                subnet: "10.244.1.0/24".into(),
                network: "10.244.0.0/16".into(),
                vtep_mac: "02:00:00:00:00:01".into(),
                vni: 1,
                port: 8472,
                tun: "weft.1".into(),
                tun_mtu: 1450,
                underlay_mtu: 1500,
                workers: 2,
            },
            routes: Vec::new(),
            neighbors: Vec::new(),
            fdb: Vec::new(),
            counters: CountersView::default(),
        }
    }

    fn health() -> Health {
        Health {
            backend: "vxlan".into(),
            uptime_secs: 3725,
            datastore: DatastoreView {
                kind: "etcd".into(),
                endpoint: "http://127.0.0.1:2379 /coreos.com/network".into(),
                connected: true,
                reconnects: 0,
            },
            lease_held: true,
            renewals: 1,
            tables_programmed: true,
            subnet_file: "/run/flannel/subnet.env".into(),
            subnet_env_written: true,
            peers: 2,
            ip_forward: Some(true),
            masq: MasqView {
                enabled: true,
                backend: "iptables".into(),
                repairs: 0,
            },
            policy: Some(PolicyView {
                source: "kubernetes".into(),
                generation: 7,
                policies: 3,
                isolated_pods: 2,
            }),
        }
    }

    #[test]
    fn healthy_when_ready_and_connected() {
        let s = status_of(show(), health());
        assert!(s.healthy, "{:?}", s.problems);
        let text = s.render();
        assert!(text.starts_with("weft on node-a: HEALTHY\n"), "{text}");
        assert!(text.contains("up 1h02m05s"), "{text}");
        assert!(
            text.contains("mtu        weft.1 1450 (underlay 1500, overhead 50)"),
            "{text}"
        );
        assert!(text.contains("drops      none"), "{text}");
        assert!(
            text.contains("masquerade on (iptables), 0 repairs"),
            "{text}"
        );
        assert!(
            text.contains(
                "policy     kubernetes: 3 NetworkPolicies, 2 isolated pods, generation 7"
            ),
            "{text}"
        );
    }

    #[test]
    fn each_missing_part_is_a_problem() {
        let mut h = health();
        h.datastore.connected = false;
        h.lease_held = false;
        h.subnet_env_written = false;
        h.tables_programmed = false;
        h.ip_forward = Some(false);
        let s = status_of(show(), h);
        assert!(!s.healthy);
        assert_eq!(s.problems.len(), 5, "{:?}", s.problems);
        let text = s.render();
        for needle in [
            "UNHEALTHY",
            "NOT CONNECTED",
            "NOT HELD",
            "NOT PROGRAMMED",
            "NOT WRITTEN",
            "NOT FORWARDING",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
        // JSON round trip, as `weftctl status -o json` prints it.
        let json = serde_json::to_string(&s).expect("encode");
        let back: StatusReply = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, s);
    }
}
