//! The agent's Prometheus metrics (OpenMetrics text, `GET /metrics` on the health server).
//!
//! Control-plane values (peers, table sizes, datastore reconnects, watch lag, lease renewals) are
//! kept in atomics the control loop updates; dataplane counters (packets, bytes, drops by reason)
//! are read from the workers' merged counters at scrape time, so the hot path pays nothing for
//! them.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `weft_peers` | gauge | remote nodes programmed |
//! | `weft_fib_routes`, `weft_neighbors`, `weft_fdb_entries` | gauge | sizes of the published tables |
//! | `weft_table_publishes_total` | counter | snapshots published to the workers |
//! | `weft_datastore_reconnects_total` | counter | datastore connections or watches re-established after a failure |
//! | `weft_watch_lag_seconds` | histogram | from a datastore change arriving to its tables being published |
//! | `weft_lease_renewals_total` | counter | own subnet lease renewals |
//! | `weft_ready` | gauge | 1 once lease held, tables programmed and subnet.env written |
//! | `weft_packets_total{direction}`, `weft_bytes_total{direction}` | counter | `rx_local`, `rx_underlay`, `tx_local`, `tx_underlay` |
//! | `weft_drops_total{reason}` | counter | dropped packets by reason (every reason, zeros included) |
//! | `weft_peers_refused_total{reason}` | counter | peers not programmed: `not_adjacent` (host-gw, `Never` or `CrossSubnet` direct routing to a public IP off our underlay subnet), counted when first refused |
//! | `weft_direct_routes` | gauge | kernel routes `<subnet> via <public IP>` installed for directly routed peers |
//! | `weft_masq_enabled` | gauge | 1 while Weft's egress masquerade rules are applied (`[network] ip_masq`) |
//! | `weft_masq_repairs_total` | counter | times the masquerade rules were found changed or missing on the host and re-applied |
//! | `weft_gso_fallbacks_total` | counter | times a worker's UDP GSO was refused by the kernel and turned off |
//! | `weft_gathered_total{path}` | counter | super-frames moved with no userspace copy of their payload: `send` (a TSO super-frame from the TUN sent as gathered UDP segments), `tun_write` (a merged UDP GRO datagram written to the TUN as one gathered super-frame) |
//! | `weft_offload_enabled{offload}` | gauge | offloads in use since start-up, 1 or 0: `tun_tso4` (TUN super-frames), `tun_uso4` (TUN UDP super-frames), `udp_gso` (UDP_SEGMENT trains), `udp_gro` (merged VXLAN receives); 0 when turned off in the config, refused by the kernel, or not used by the backend |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dataplane::drop::DropReason;
use dataplane::io::worker::WorkerShared;
use dataplane::snapshot::Tables;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The control plane's metrics and readiness flags, shared by the control loop and the health
/// server.
#[derive(Debug)]
pub struct Metrics {
    peers: Gauge,
    fib_routes: Gauge,
    neighbors: Gauge,
    fdb_entries: Gauge,
    publishes: Counter,
    reconnects: Counter,
    renewals: Counter,
    watch_lag: Histogram,
    ready: Gauge,
    refused: Family<Vec<(String, String)>, Counter>,
    direct_routes: Gauge,
    masq_enabled: Gauge,
    masq_repairs: Counter,
    offloads: Family<Vec<(String, String)>, Gauge>,
    /// Readiness parts.
    pub lease_held: AtomicBool,
    /// The tables hold what the datastore said (first list applied).
    pub tables_programmed: AtomicBool,
    /// subnet.env is written.
    pub subnet_env_written: AtomicBool,
    /// The datastore answers: true from the first successful request, false while the etcd watch
    /// or the Node watcher is broken and reconnecting. Not part of readiness (the last tables
    /// stay in force), but `weftctl status` reports a node that cannot see changes as unhealthy.
    pub datastore_connected: AtomicBool,
    workers: OnceLock<Arc<WorkerShared>>,
    policy: OnceLock<PolicyCollector>,
}

/// Where `/metrics` reads the NetworkPolicy figures: per-rule admitted flows and conntrack's
/// events, `None` without policy (the agent passes its table inputs' `policy_figures`).
pub type PolicySource = Arc<
    dyn Fn() -> Option<(
            std::collections::BTreeMap<String, u64>,
            dataplane::policy::conntrack::ConntrackStats,
        )> + Send
        + Sync,
>;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, nothing ready.
    pub fn new() -> Self {
        Metrics {
            peers: Gauge::default(),
            fib_routes: Gauge::default(),
            neighbors: Gauge::default(),
            fdb_entries: Gauge::default(),
            publishes: Counter::default(),
            reconnects: Counter::default(),
            renewals: Counter::default(),
            // 100 µs .. ~3 s.
            watch_lag: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            ready: Gauge::default(),
            refused: {
                let f = Family::default();
                // Listed at 0 from the start, so a dashboard sees the series before a refusal.
                let _ = f.get_or_create(&vec![("reason".to_string(), "not_adjacent".to_string())]);
                f
            },
            direct_routes: Gauge::default(),
            masq_enabled: Gauge::default(),
            masq_repairs: Counter::default(),
            offloads: Family::default(),
            lease_held: AtomicBool::new(false),
            tables_programmed: AtomicBool::new(false),
            subnet_env_written: AtomicBool::new(false),
            datastore_connected: AtomicBool::new(false),
            workers: OnceLock::new(),
            policy: OnceLock::new(),
        }
    }

    /// Attaches the workers whose counters `/metrics` reports.
    pub fn attach_workers(&self, shared: Arc<WorkerShared>) {
        let _ = self.workers.set(shared);
    }

    /// Attaches where `/metrics` reads the NetworkPolicy figures.
    pub fn attach_policy(&self, source: PolicySource) {
        let _ = self.policy.set(PolicyCollector(source));
    }

    /// Records the published tables.
    pub fn set_tables(&self, peers: usize, tables: &Tables) {
        self.peers.set(peers as i64);
        self.fib_routes.set(tables.fib.len() as i64);
        self.neighbors.set(tables.neigh.len() as i64);
        self.fdb_entries.set(tables.fdb.len() as i64);
        self.publishes.inc();
    }

    /// Records a peer newly refused for `reason` (e.g. `not_adjacent`).
    pub fn peer_refused(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// Peers refused for `reason` so far.
    pub fn peers_refused(&self, reason: &str) -> u64 {
        self.refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .get()
    }

    /// Records how many kernel routes for directly routed peers are installed.
    pub fn set_direct_routes(&self, n: usize) {
        self.direct_routes.set(n as i64);
    }

    /// Records whether the masquerade rules are applied.
    pub fn set_masq_enabled(&self, on: bool) {
        self.masq_enabled.set(i64::from(on));
    }

    /// Whether the masquerade rules are applied.
    pub fn masq_enabled(&self) -> bool {
        self.masq_enabled.get() != 0
    }

    /// Records one re-application of masquerade rules someone changed.
    pub fn masq_repaired(&self) {
        self.masq_repairs.inc();
    }

    /// Masquerade repairs so far.
    pub fn masq_repairs(&self) -> u64 {
        self.masq_repairs.get()
    }

    /// Records whether offload `name` (`tun_tso4`, `tun_uso4`, `udp_gso`, `udp_gro`) is in use.
    pub fn set_offload(&self, name: &str, on: bool) {
        self.offloads
            .get_or_create(&vec![("offload".to_string(), name.to_string())])
            .set(i64::from(on));
    }

    /// Remote nodes in the published tables.
    pub fn peers(&self) -> usize {
        usize::try_from(self.peers.get()).unwrap_or(0)
    }

    /// Records one datastore reconnection.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Datastore reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }

    /// Records one lease renewal.
    pub fn renewed(&self) {
        self.renewals.inc();
    }

    /// Lease renewals so far.
    pub fn renewals(&self) -> u64 {
        self.renewals.get()
    }

    /// Records the delay from a change arriving to its tables being published.
    pub fn observe_watch_lag(&self, lag: Duration) {
        self.watch_lag.observe(lag.as_secs_f64());
    }

    /// Ready: lease held, tables programmed and subnet.env written.
    pub fn is_ready(&self) -> bool {
        let r = self.lease_held.load(Ordering::Relaxed)
            && self.tables_programmed.load(Ordering::Relaxed)
            && self.subnet_env_written.load(Ordering::Relaxed);
        self.ready.set(i64::from(r));
        r
    }

    /// What is still missing for readiness, for `/readyz`'s body.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.lease_held.load(Ordering::Relaxed) {
            v.push("subnet lease not held");
        }
        if !self.tables_programmed.load(Ordering::Relaxed) {
            v.push("tables not programmed from the datastore");
        }
        if !self.subnet_env_written.load(Ordering::Relaxed) {
            v.push("subnet.env not written");
        }
        v
    }

    /// Renders every metric as OpenMetrics text.
    pub fn render(self: &Arc<Self>) -> String {
        self.is_ready();
        let mut reg = Registry::with_prefix("weft");
        reg.register("peers", "Remote nodes programmed", self.peers.clone());
        reg.register(
            "fib_routes",
            "Routes in the published FIB",
            self.fib_routes.clone(),
        );
        reg.register(
            "neighbors",
            "Entries in the published neighbour table",
            self.neighbors.clone(),
        );
        reg.register(
            "fdb_entries",
            "Entries in the published FDB",
            self.fdb_entries.clone(),
        );
        reg.register(
            "table_publishes",
            "Table snapshots published to the workers",
            self.publishes.clone(),
        );
        reg.register(
            "datastore_reconnects",
            "Datastore connections or watches re-established after a failure",
            self.reconnects.clone(),
        );
        reg.register(
            "lease_renewals",
            "Renewals of this node's subnet lease",
            self.renewals.clone(),
        );
        reg.register(
            "watch_lag_seconds",
            "Delay from a datastore change arriving to its tables being published",
            self.watch_lag.clone(),
        );
        reg.register(
            "ready",
            "1 once the lease is held, tables are programmed and subnet.env is written",
            self.ready.clone(),
        );
        reg.register(
            "peers_refused",
            "Peers not programmed, by reason (not_adjacent: direct routing to a public IP off this node's underlay subnet)",
            self.refused.clone(),
        );
        reg.register(
            "direct_routes",
            "Kernel routes installed for directly routed peers (host-gw, CrossSubnet)",
            self.direct_routes.clone(),
        );
        reg.register(
            "masq_enabled",
            "1 while the egress masquerade rules are applied ([network] ip_masq)",
            self.masq_enabled.clone(),
        );
        reg.register(
            "masq_repairs",
            "Masquerade rules found changed or missing on the host and re-applied",
            self.masq_repairs.clone(),
        );
        reg.register(
            "offload_enabled",
            "Offloads in use since start-up (tun_tso4, tun_uso4, udp_gso, udp_gro): 0 when off in the config, refused by the kernel or not used by the backend",
            self.offloads.clone(),
        );
        if let Some(w) = self.workers.get() {
            reg.register_collector(Box::new(WorkerCollector(w.clone())));
        }
        if let Some(p) = self.policy.get() {
            reg.register_collector(Box::new(p.clone()));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::warn!("cannot render metrics: {e}");
        }
        out
    }
}

/// Encodes the counter family `name` with one sample per `(value, count)`, each labelled
/// `label="value"`.
fn counter_family<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let probe = ConstCounter::new(0u64);
    let mut m = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
    for (value, n) in samples {
        ConstCounter::new(n).encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// Reads the NetworkPolicy rule counters and the connection table's figures at scrape time.
#[derive(Clone)]
struct PolicyCollector(PolicySource);

impl std::fmt::Debug for PolicyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyCollector")
    }
}

impl Collector for PolicyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some((rules, ct)) = (self.0)() else {
            return Ok(());
        };
        counter_family(
            &mut encoder,
            "policy_rule_flows",
            "New flows each NetworkPolicy rule admitted (rule: <namespace>/<policy> <direction>[<index>], or node)",
            "rule",
            rules.iter().map(|(r, n)| (r.as_str(), *n)),
        )?;
        counter_family(
            &mut encoder,
            "conntrack",
            "Connection table events: flows admitted, live entries evicted for room, flows refused for lack of room",
            "event",
            [
                ("inserted", ct.inserted),
                ("evicted", ct.evicted),
                ("refused", ct.refused),
            ],
        )?;
        Ok(())
    }
}

/// Reads the workers' merged counters at scrape time.
#[derive(Debug)]
struct WorkerCollector(Arc<WorkerShared>);

impl Collector for WorkerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = self.0.counters();
        let dirs = [
            ("rx_local", c.rx_local),
            ("rx_underlay", c.rx_underlay),
            ("tx_local", c.tx_local),
            ("tx_underlay", c.tx_underlay),
        ];
        counter_family(
            &mut encoder,
            "packets",
            "Packets by direction",
            "direction",
            dirs.map(|(d, t)| (d, t.packets)),
        )?;
        counter_family(
            &mut encoder,
            "bytes",
            "Bytes by direction",
            "direction",
            dirs.map(|(d, t)| (d, t.bytes)),
        )?;
        counter_family(
            &mut encoder,
            "drops",
            "Dropped packets by reason",
            "reason",
            DropReason::ALL.iter().map(|r| (r.label(), c.drops(*r))),
        )?;
        {
            let counter = ConstCounter::new(c.gso_fallbacks);
            let m = encoder.encode_descriptor(
                "gso_fallbacks",
                "Times the kernel refused a worker's UDP GSO train and GSO was turned off for it",
                None,
                counter.metric_type(),
            )?;
            counter.encode(m)?;
        }
        counter_family(
            &mut encoder,
            "gathered",
            "Super-frames moved with no userspace copy of their payload, by path",
            "path",
            [("send", c.gathered_sends), ("tun_write", c.gathered_writes)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_control_metrics_and_readiness() {
        let m = Arc::new(Metrics::new());
        m.reconnected();
        m.observe_watch_lag(Duration::from_millis(3));
        m.set_offload("udp_gso", true);
        m.set_offload("udp_gro", false);
        let text = m.render();
        for needle in [
            "weft_peers 0",
            "weft_offload_enabled{offload=\"udp_gso\"} 1",
            "weft_offload_enabled{offload=\"udp_gro\"} 0",
            "weft_datastore_reconnects_total 1",
            "weft_watch_lag_seconds_count 1",
            "weft_ready 0",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        assert_eq!(m.not_ready_reasons().len(), 3);
        m.lease_held.store(true, Ordering::Relaxed);
        m.tables_programmed.store(true, Ordering::Relaxed);
        m.subnet_env_written.store(true, Ordering::Relaxed);
        assert!(m.is_ready());
        assert!(m.render().contains("weft_ready 1"));
    }
}
