//! The etcd v3 datastore in flannel's layout (flannel-io/flannel `pkg/subnet/etcd`).
//!
//! - The network config is read from `<prefix>/config`; while it is missing or invalid the agent
//!   logs why and retries (flannel does the same), it does not exit.
//! - The node's subnet lease is the key `<prefix>/subnets/<net>-<len>` holding flannel's JSON
//!   value, bound to an etcd lease with a TTL. It is acquired as flannel does: reuse the lease
//!   whose `PublicIP` is ours; else the subnet the previous subnet.env recorded, if free; else a
//!   random pick among the first 100 free subnets from `SubnetMin`. A new key is created only in a
//!   transaction `If(Version(key) == 0)`, so two nodes never hold one subnet; a key without an
//!   etcd lease is a reservation and is never taken by another node (nor renewed).
//! - The lease is renewed, re-put on a fresh etcd lease, when less than the renew margin remains;
//!   the renewal is a transaction that succeeds only while the key still holds our value, so a
//!   node never overwrites a subnet someone else took after its lease ran out.
//! - Peers: list `<prefix>/subnets/`, then watch it from the listed revision + 1. After a
//!   compaction the watch is cancelled: re-list and replace the whole set (the sync diffs it).
//!   While etcd is unreachable the watch is re-established with backoff (100 ms .. 5 s) and the
//!   last published tables stay in force, so pods keep talking.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;
use rand::seq::IndexedRandom;

use super::flannel::{self, NetworkConfig};
use super::{Backoff, Lease, PeerSync};
use crate::config::EtcdSection;
use crate::etcd::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use crate::metrics::Metrics;

/// How many free subnets the random pick chooses among (flannel's limit).
const PICK_AMONG: usize = 100;
/// Transaction attempts before acquisition gives up (others kept winning the race).
const ACQUIRE_ATTEMPTS: usize = 10;

/// etcd datastore errors.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A TLS file could not be read.
    #[error("datastore.etcd.{field}: cannot read {path}: {source}")]
    TlsFile {
        /// Which setting.
        field: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An etcd request failed (unreachable, timed out, refused).
    #[error("etcd {op}: {source}")]
    Request {
        /// What was being done.
        op: &'static str,
        /// The client error.
        source: crate::etcd::Error,
    },
    /// The network config at `<prefix>/config` is absent.
    #[error("no network config at {key}; write flannel's JSON there, e.g. etcdctl put {key} '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'")]
    NoConfig {
        /// The key.
        key: String,
    },
    /// The network config is invalid.
    #[error("{key}: {source}")]
    BadConfig {
        /// The key.
        key: String,
        /// What is wrong.
        source: flannel::FormatError,
    },
    /// Every subnet between SubnetMin and SubnetMax is leased or reserved.
    #[error("out of subnets: all {total} subnets /{len} from {min} to {max} in {network} are leased or reserved; widen Network, lower SubnetLen or remove stale leases")]
    OutOfSubnets {
        /// The network.
        network: Ipv4Net,
        /// Subnet length.
        len: u8,
        /// SubnetMin.
        min: Ipv4Addr,
        /// SubnetMax.
        max: Ipv4Addr,
        /// How many subnets the range holds.
        total: usize,
    },
    /// Other nodes won every creation race.
    #[error("could not acquire a subnet lease after {0} attempts: other nodes kept taking the picked subnets")]
    Contention(usize),
    /// Our lease key now holds another node's value.
    #[error(
        "our subnet {subnet} was taken by another node (PublicIP {other}) after our lease expired"
    )]
    Lost {
        /// Our former subnet.
        subnet: Ipv4Net,
        /// Who holds it now.
        other: String,
    },
    /// Stopped while waiting.
    #[error("stopped")]
    Stopped,
}

fn req(op: &'static str) -> impl FnOnce(crate::etcd::Error) -> EtcdError {
    move |source| EtcdError::Request { op, source }
}

/// Connects to the endpoints with the TLS and user settings of `cfg`. tonic connects lazily, so
/// this succeeds while etcd is down; requests then fail until it is up.
pub async fn connect(cfg: &EtcdSection) -> Result<Client, EtcdError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        opts = opts.with_user(user.clone(), password.clone());
    }
    let tls_wanted = cfg.ca_file.is_some()
        || cfg.cert_file.is_some()
        || cfg.endpoints.iter().any(|e| e.starts_with("https://"));
    if tls_wanted {
        let read = |field: &'static str, p: &std::path::Path| {
            std::fs::read(p).map_err(|source| EtcdError::TlsFile {
                field,
                path: p.display().to_string(),
                source,
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read("ca_file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            tls = tls.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    let mut last = None;
    // With several endpoints and user auth, connect itself talks to etcd; retry briefly.
    for _ in 0..3 {
        match Client::connect(&cfg.endpoints, Some(opts.clone())).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(req("connect")(last.expect("three attempts ran")))
}

/// Reads and validates the network config at `<prefix>/config`.
pub async fn read_network_config(
    client: &mut Client,
    prefix: &str,
) -> Result<NetworkConfig, EtcdError> {
    let key = flannel::config_key(prefix);
    let resp = client
        .get(key.as_str(), None)
        .await
        .map_err(req("read network config"))?;
    let kv = resp
        .kvs
        .first()
        .ok_or_else(|| EtcdError::NoConfig { key: key.clone() })?;
    let text = String::from_utf8_lossy(&kv.value);
    NetworkConfig::parse(&text).map_err(|source| EtcdError::BadConfig { key, source })
}

/// Reads the network config, retrying with backoff and one clear log line per distinct problem
/// until it is there and valid, or `stop` is set.
pub async fn wait_network_config(
    client: &mut Client,
    prefix: &str,
    stop: &AtomicBool,
) -> Result<NetworkConfig, EtcdError> {
    let mut backoff = Backoff::new();
    let mut last_msg = String::new();
    loop {
        match read_network_config(client, prefix).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let msg = e.to_string();
                if msg != last_msg {
                    tracing::warn!("waiting for the network config: {msg}; retrying");
                    last_msg = msg;
                }
            }
        }
        sleep_or_stop(backoff.next_delay(), stop).await?;
    }
}

async fn sleep_or_stop(d: Duration, stop: &AtomicBool) -> Result<(), EtcdError> {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return Err(EtcdError::Stopped);
        }
        let s = left.min(step);
        tokio::time::sleep(s).await;
        left -= s;
    }
    if stop.load(Ordering::Relaxed) {
        return Err(EtcdError::Stopped);
    }
    Ok(())
}

/// One key under `<prefix>/subnets/` as listed or watched.
#[derive(Debug, Clone)]
pub struct LeaseEntry {
    /// The key.
    pub key: String,
    /// The parsed lease (`None` when the value is malformed; the subnet still counts as taken).
    pub lease: Option<Lease>,
    /// The subnet the key names.
    pub subnet: Ipv4Net,
    /// The etcd lease id the key is bound to; 0 for a reservation.
    pub etcd_lease: i64,
}

fn entry_of(prefix: &str, key: &str, value: &[u8], etcd_lease: i64) -> Option<LeaseEntry> {
    let subnet = flannel::subnet_of_key(prefix, key)?;
    let lease = match flannel::parse_lease_value(subnet, key, value) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("ignoring malformed lease: {e}");
            None
        }
    };
    Some(LeaseEntry {
        key: key.to_string(),
        lease,
        subnet,
        etcd_lease,
    })
}

/// A key as text (flannel's keys are; others are skipped).
fn key_str(kv: &KeyValue) -> Option<&str> {
    std::str::from_utf8(&kv.key).ok()
}

/// Lists every lease; returns them with the revision the list was taken at.
pub async fn list_leases(
    client: &mut Client,
    prefix: &str,
) -> Result<(Vec<LeaseEntry>, i64), EtcdError> {
    let resp = client
        .get(
            flannel::subnets_prefix(prefix),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(req("list leases"))?;
    let rev = resp.header.map_or(0, |h| h.revision);
    let entries = resp
        .kvs
        .iter()
        .filter_map(|kv| entry_of(prefix, key_str(kv)?, &kv.value, kv.lease))
        .collect();
    Ok((entries, rev))
}

/// What this node publishes in its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnAttrs {
    /// Our underlay address.
    pub public_ip: Ipv4Addr,
    /// Our backend (the network config's `Backend.Type`).
    pub backend: crate::config::BackendKind,
    /// Our VNI.
    pub vni: u32,
    /// Our VTEP MAC.
    pub vtep_mac: EthernetAddress,
}

impl OwnAttrs {
    /// flannel's lease value for us.
    pub fn value(&self) -> String {
        flannel::lease_value(self.backend, self.public_ip, self.vni, self.vtep_mac)
    }
}

/// The lease this node holds.
#[derive(Debug, Clone)]
pub struct Acquired {
    /// The subnet.
    pub subnet: Ipv4Net,
    /// The key.
    pub key: String,
    /// The value we wrote.
    pub value: String,
    /// The etcd lease id; 0 for a reservation (no TTL, never renewed).
    pub etcd_lease: i64,
    /// When the etcd lease runs out (`None` for a reservation).
    pub expiration: Option<SystemTime>,
    /// Every lease listed during acquisition, and the list's revision: the first peer set.
    pub listed: (Vec<LeaseEntry>, i64),
    /// How it was obtained, for the log.
    pub how: &'static str,
}

/// Acquires this node's subnet lease the way flannel does (see the module docs). `previous` is
/// the subnet of an old subnet.env.
pub async fn acquire(
    client: &mut Client,
    prefix: &str,
    net: &NetworkConfig,
    own: &OwnAttrs,
    previous: Option<Ipv4Net>,
    ttl: u64,
) -> Result<Acquired, EtcdError> {
    let value = own.value();
    for _ in 0..ACQUIRE_ATTEMPTS {
        let (entries, rev) = list_leases(client, prefix).await?;
        // 1. Our own lease (same PublicIP), if it still fits the config.
        if let Some(e) = entries.iter().find(|e| {
            e.lease
                .as_ref()
                .is_some_and(|l| l.public_ip == own.public_ip)
                && net.network.contains(&e.subnet)
                && e.subnet.prefix_len() == net.subnet_len
        }) {
            let (etcd_lease, expiration) = if e.etcd_lease == 0 {
                // A reservation made for us: take it as it is, without a TTL.
                client
                    .put(e.key.as_str(), value.as_str(), None)
                    .await
                    .map_err(req("update reserved lease"))?;
                (0, None)
            } else {
                let id = grant(client, ttl).await?;
                client
                    .put(
                        e.key.as_str(),
                        value.as_str(),
                        Some(PutOptions::new().with_lease(id)),
                    )
                    .await
                    .map_err(req("renew own lease"))?;
                (id, Some(SystemTime::now() + Duration::from_secs(ttl)))
            };
            return Ok(Acquired {
                subnet: e.subnet,
                key: e.key.clone(),
                value,
                etcd_lease,
                expiration,
                listed: (entries.clone(), rev),
                how: if etcd_lease == 0 {
                    "reservation for our PublicIP"
                } else {
                    "our existing lease"
                },
            });
        }
        let taken: BTreeSet<Ipv4Net> = entries.iter().map(|e| e.subnet).collect();
        let is_free = |s: &Ipv4Net| !taken.iter().any(|t| t.contains(s) || s.contains(t));
        // 2. The subnet of the previous subnet.env, if still free.
        let mut candidates: Vec<(Ipv4Net, &'static str)> = Vec::new();
        if let Some(p) = previous.filter(|p| net.holds(*p) && is_free(p)) {
            candidates.push((p, "subnet of the previous subnet.env"));
        } else {
            // 3. A random pick among the first free subnets.
            let free: Vec<Ipv4Net> = net.subnets().filter(is_free).take(PICK_AMONG).collect();
            if free.is_empty() {
                return Err(EtcdError::OutOfSubnets {
                    network: net.network,
                    len: net.subnet_len,
                    min: net.subnet_min,
                    max: net.subnet_max,
                    total: net.subnets().count(),
                });
            }
            let pick = *free.choose(&mut rand::rng()).expect("free is not empty");
            candidates.push((pick, "new lease"));
        }
        for (subnet, how) in candidates {
            let key = flannel::lease_key(prefix, subnet);
            let id = grant(client, ttl).await?;
            let txn = Txn::new()
                .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(id)),
                )]);
            let resp = client.txn(txn).await.map_err(req("create lease"))?;
            if resp.succeeded {
                let mut listed = entries.clone();
                listed.push(LeaseEntry {
                    key: key.clone(),
                    lease: flannel::parse_lease_value(subnet, &key, value.as_bytes()).ok(),
                    subnet,
                    etcd_lease: id,
                });
                return Ok(Acquired {
                    subnet,
                    key,
                    value,
                    etcd_lease: id,
                    expiration: Some(SystemTime::now() + Duration::from_secs(ttl)),
                    listed: (listed, rev),
                    how,
                });
            }
            // Someone else created it first: leave no orphan etcd lease behind, and try again.
            let _ = client.lease_revoke(id).await;
            tracing::debug!(%subnet, "subnet taken concurrently; retrying");
        }
    }
    Err(EtcdError::Contention(ACQUIRE_ATTEMPTS))
}

async fn grant(client: &mut Client, ttl: u64) -> Result<i64, EtcdError> {
    let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
    Ok(client
        .lease_grant(ttl)
        .await
        .map_err(req("grant lease"))?
        .id)
}

/// Renews our lease: re-puts our value on a fresh etcd lease, but only while the key still holds
/// our value; re-creates it (only if absent) when it expired or was deleted. Returns the new
/// expiration.
pub async fn renew(
    client: &mut Client,
    acquired: &mut Acquired,
    ttl: u64,
) -> Result<SystemTime, EtcdError> {
    let id = grant(client, ttl).await?;
    let put = TxnOp::put(
        acquired.key.as_str(),
        acquired.value.as_str(),
        Some(PutOptions::new().with_lease(id)),
    );
    let txn = Txn::new()
        .when([Compare::value(
            acquired.key.as_str(),
            CompareOp::Equal,
            acquired.value.as_str(),
        )])
        .and_then([put.clone()]);
    let mut ok = client.txn(txn).await.map_err(req("renew lease"))?.succeeded;
    if !ok {
        let txn = Txn::new()
            .when([Compare::version(acquired.key.as_str(), CompareOp::Equal, 0)])
            .and_then([put]);
        ok = client
            .txn(txn)
            .await
            .map_err(req("re-create lease"))?
            .succeeded;
        if ok {
            tracing::warn!(subnet = %acquired.subnet, "our lease had expired or was deleted; re-created it");
        }
    }
    if !ok {
        let _ = client.lease_revoke(id).await;
        let other = client
            .get(acquired.key.as_str(), None)
            .await
            .ok()
            .and_then(|r| {
                r.kvs
                    .first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            })
            .unwrap_or_default();
        return Err(EtcdError::Lost {
            subnet: acquired.subnet,
            other,
        });
    }
    acquired.etcd_lease = id;
    let exp = SystemTime::now() + Duration::from_secs(ttl);
    acquired.expiration = Some(exp);
    Ok(exp)
}

/// The leases of a listing, for [`PeerSync::replace_all`].
pub fn leases_of(entries: &[LeaseEntry]) -> Vec<Lease> {
    entries.iter().filter_map(|e| e.lease.clone()).collect()
}

/// Keeps the lease renewed until `stop`. Runs beside [`watch_loop`] on the same runtime.
pub async fn renew_loop(
    mut client: Client,
    mut acquired: Acquired,
    ttl: u64,
    margin: u64,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    renew_now: Arc<tokio::sync::Notify>,
) {
    let Some(mut expiration) = acquired.expiration else {
        tracing::info!(subnet = %acquired.subnet, "reserved subnet: no TTL, never renewed");
        return;
    };
    let mut backoff = Backoff::new();
    loop {
        let renew_at = expiration - Duration::from_secs(margin);
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = renew_now.notified() => {}
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match renew(&mut client, &mut acquired, ttl).await {
            Ok(exp) => {
                expiration = exp;
                backoff.reset();
                metrics.renewed();
                metrics.lease_held.store(true, Ordering::Relaxed);
                tracing::info!(subnet = %acquired.subnet, ttl, "lease renewed");
            }
            Err(e) => {
                if matches!(e, EtcdError::Lost { .. }) {
                    metrics.lease_held.store(false, Ordering::Relaxed);
                    tracing::error!("{e}; this node no longer holds a subnet lease");
                    return;
                }
                if SystemTime::now() >= expiration {
                    metrics.lease_held.store(false, Ordering::Relaxed);
                }
                tracing::warn!("lease renewal failed: {e}; retrying");
                // Retry soon, but never spin: renew_at is in the past now.
                let d = backoff.next_delay();
                tokio::time::sleep(d).await;
                expiration = SystemTime::now() + Duration::from_secs(margin);
            }
        }
    }
}

/// A watch of `<prefix>/subnets/` from revision `rev + 1` and keeps `sync` current until `stop`:
/// events are applied in batches (one commit per watch response); a cancelled or compacted watch
/// re-lists and replaces the set; a broken connection reconnects with backoff while the last
/// tables stay published.
#[derive(Debug)]
pub struct Watch {
    /// The client.
    pub client: Client,
    /// The etcd prefix.
    pub prefix: String,
    /// The revision the peers are known at; the watch starts after it.
    pub rev: i64,
    /// Our own lease key (its deletion triggers re-creation).
    pub own_key: String,
    /// Metrics (reconnects).
    pub metrics: Arc<Metrics>,
    /// Ends the loop.
    pub stop: Arc<AtomicBool>,
    /// Wakes [`renew_loop`] when our key vanished.
    pub renew_now: Arc<tokio::sync::Notify>,
}

/// Runs a [`Watch`] until its stop flag is set.
pub async fn watch_loop(w: Watch, sync: &mut PeerSync) {
    let Watch {
        mut client,
        prefix,
        mut rev,
        own_key,
        metrics,
        stop,
        renew_now,
    } = w;
    let subnets = flannel::subnets_prefix(&prefix);
    let mut backoff = Backoff::new();
    let mut need_list = false;
    let mut failed = false;
    while !stop.load(Ordering::Relaxed) {
        if failed && sleep_or_stop(backoff.next_delay(), &stop).await.is_err() {
            return;
        }
        if need_list {
            match list_leases(&mut client, &prefix).await {
                Ok((entries, r)) => {
                    sync.replace_all(leases_of(&entries));
                    sync.commit();
                    rev = r;
                    need_list = false;
                    if !entries.iter().any(|e| e.key == own_key) {
                        renew_now.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}; keeping the last tables and retrying");
                    failed = true;
                    metrics.datastore_connected.store(false, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1)
            .with_progress_notify();
        let mut stream = match client.watch(subnets.as_str(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("etcd watch: {e}; keeping the last tables and retrying");
                failed = true;
                metrics.datastore_connected.store(false, Ordering::Relaxed);
                continue;
            }
        };
        if failed {
            metrics.reconnected();
            tracing::info!(revision = rev, "etcd watch re-established");
        }
        metrics.datastore_connected.store(true, Ordering::Relaxed);
        failed = false;
        backoff.reset();
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) { return; }
                    continue;
                }
            };
            match msg {
                Ok(Some(resp)) => {
                    if resp.compact_revision > 0 || resp.canceled {
                        tracing::warn!(
                            compact_revision = resp.compact_revision,
                            reason = resp.cancel_reason,
                            "etcd watch cancelled (compaction?); re-listing"
                        );
                        need_list = true;
                        break;
                    }
                    let mut changed = false;
                    for ev in &resp.events {
                        let Some(kv) = &ev.kv else { continue };
                        rev = rev.max(kv.mod_revision);
                        let Some(key) = key_str(kv) else { continue };
                        let Some(subnet) = flannel::subnet_of_key(&prefix, key) else {
                            continue;
                        };
                        changed = true;
                        match ev.r#type() {
                            EventType::Put => {
                                match entry_of(&prefix, key, &kv.value, kv.lease)
                                    .and_then(|e| e.lease)
                                {
                                    Some(l) => sync.upsert(l),
                                    None => sync.remove(subnet),
                                }
                            }
                            EventType::Delete => {
                                sync.remove(subnet);
                                if key == own_key {
                                    tracing::warn!(%subnet, "our lease key was deleted; re-creating it");
                                    renew_now.notify_one();
                                }
                            }
                        }
                    }
                    // A progress notification (no events) says every event up to its header
                    // revision was sent; resume from there after a reconnect.
                    if resp.events.is_empty() {
                        if let Some(h) = &resp.header {
                            rev = rev.max(h.revision);
                        }
                    }
                    if changed {
                        sync.commit();
                    }
                }
                Ok(None) => {
                    tracing::warn!("etcd watch ended; reconnecting");
                    failed = true;
                    metrics.datastore_connected.store(false, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        "etcd watch broke: {e}; keeping the last tables and reconnecting"
                    );
                    failed = true;
                    metrics.datastore_connected.store(false, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}
