//! The etcd datastore against a real etcd on loopback (`/usr/bin/etcd`, temporary data dir, free
//! ports): concurrent acquisition with zero duplicate subnets, out-of-subnets as a clear error,
//! reservations never taken, reuse of our own lease and of the previous subnet.env, renewal with
//! a short TTL, and the watch loop following puts, deletes and a compaction.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the test failing

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::datastore::etcd::{self, EtcdError, OwnAttrs};
use control::datastore::flannel::{self, NetworkConfig};
use control::datastore::{reconcile, OwnNode, PeerSync};
use control::metrics::Metrics;
use control::tooling::etcd_server::EtcdServer;
use dataplane::snapshot::SnapshotCell;
use dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn etcd_cfg(server: &EtcdServer) -> control::config::EtcdSection {
    let text = format!(
        "[node]\nname = \"t\"\n[datastore]\ntype = \"etcd\"\n[datastore.etcd]\nendpoints = [\"{}\"]\n",
        server.endpoint()
    );
    control::config::Config::from_toml_str(&text)
        .unwrap()
        .datastore
        .etcd
}

fn attrs(i: u32) -> OwnAttrs {
    OwnAttrs {
        public_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 0, 0)) + i),
        backend: control::config::BackendKind::Vxlan,
        vni: 1,
        vtep_mac: EthernetAddress([2, 0, 0, 0, (i >> 8) as u8, i as u8]),
    }
}

async fn client(server: &EtcdServer) -> control::etcd::Client {
    etcd::connect(&etcd_cfg(server)).await.unwrap()
}

fn start() -> EtcdServer {
    EtcdServer::start_loopback().expect("etcd (Debian package etcd-server) must start")
}

/// `agents` acquirers at once, each on its own thread and connection, against `prefix`.
fn acquire_concurrently(
    server: &EtcdServer,
    prefix: &str,
    net: &NetworkConfig,
    agents: u32,
    first_ip: u32,
) -> Vec<Result<Ipv4Net, EtcdError>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..agents)
            .map(|i| {
                s.spawn(move || {
                    rt().block_on(async {
                        let mut c = client(server).await;
                        etcd::acquire(&mut c, prefix, net, &attrs(first_ip + i), None, 600)
                            .await
                            .map(|a| a.subnet)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_acquisition_never_hands_out_a_subnet_twice() {
    let server = start();
    // 15 subnets /28 in a /24 (the first is skipped): six agents per round collide often.
    let net = NetworkConfig::parse(
        r#"{"Network":"10.9.0.0/24","SubnetLen":28,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let agents = 6;
    for round in 0..100u32 {
        let prefix = format!("/weft-test/round-{round}");
        let results = acquire_concurrently(&server, &prefix, &net, agents, round * 100);
        let subnets: Vec<Ipv4Net> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("round {round}: {e}")))
            .collect();
        let distinct: BTreeSet<_> = subnets.iter().collect();
        assert_eq!(distinct.len(), subnets.len(), "round {round}: {subnets:?}");
        // etcd agrees: one key per agent, each bound to an etcd lease, no orphan values.
        let keys = server.list(&flannel::subnets_prefix(&prefix)).unwrap();
        assert_eq!(keys.len(), agents as usize, "round {round}: {keys:?}");
        assert!(keys.iter().all(|(_, _, lease)| *lease != 0));
        for s in &subnets {
            assert!(net.holds(*s), "{s} outside SubnetMin..SubnetMax");
        }
    }
}

#[test]
fn out_of_subnets_is_a_clear_error_and_reservations_are_never_taken() {
    let server = start();
    let prefix = "/weft-test/full";
    // Three subnets: 10.8.0.64/26, .128/26, .192/26.
    let net =
        NetworkConfig::parse(r#"{"Network":"10.8.0.0/24","Backend":{"Type":"vxlan"}}"#).unwrap();
    assert_eq!(net.subnets().count(), 3);
    // A reservation (no etcd lease) for another node's PublicIP on the first subnet.
    let reserved: Ipv4Net = "10.8.0.64/26".parse().unwrap();
    let owner = attrs(900);
    server
        .put(&flannel::lease_key(prefix, reserved), &owner.value(), None)
        .unwrap();
    let results = acquire_concurrently(&server, prefix, &net, 4, 0);
    let ok: Vec<Ipv4Net> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(ok.len(), 2, "{results:?}");
    assert!(!ok.contains(&reserved), "a reservation was taken: {ok:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        let msg = e.to_string();
        assert!(
            msg.contains("out of subnets") && msg.contains("10.8.0.0/24"),
            "{msg}"
        );
    }
    // The reservation's own node gets it, without a TTL, and it stays a reservation.
    let a = rt().block_on(async {
        let mut c = client(&server).await;
        etcd::acquire(&mut c, prefix, &net, &owner, None, 600)
            .await
            .unwrap()
    });
    assert_eq!(a.subnet, reserved);
    assert_eq!(a.etcd_lease, 0);
    let keys = server.list(&flannel::lease_key(prefix, reserved)).unwrap();
    assert_eq!(keys[0].2, 0, "reservation gained a TTL");
}

#[test]
fn restart_reuses_our_lease_or_the_previous_subnet_env() {
    let server = start();
    let prefix = "/weft-test/reuse";
    let net =
        NetworkConfig::parse(r#"{"Network":"10.7.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    let me = attrs(1);
    rt().block_on(async {
        let mut c = client(&server).await;
        let first = etcd::acquire(&mut c, prefix, &net, &me, None, 600)
            .await
            .unwrap();
        // Same PublicIP: the same subnet, on a fresh etcd lease.
        let again = etcd::acquire(&mut c, prefix, &net, &me, None, 600)
            .await
            .unwrap();
        assert_eq!(again.subnet, first.subnet);
        assert_eq!(again.how, "our existing lease");
        // The value is flannel's, byte for byte.
        let keys = server.list(&again.key).unwrap();
        assert_eq!(
            keys[0].1,
            flannel::vxlan_lease_value(me.public_ip, 1, me.vtep_mac)
        );
        // A node whose lease expired (key gone) gets the subnet of its old subnet.env back.
        server.delete(&again.key).unwrap();
        let previous: Ipv4Net = "10.7.42.0/24".parse().unwrap();
        let other = attrs(2);
        let back = etcd::acquire(&mut c, prefix, &net, &other, Some(previous), 600)
            .await
            .unwrap();
        assert_eq!(back.subnet, previous);
        assert_eq!(back.how, "subnet of the previous subnet.env");
        // ... but not when someone else holds it now.
        let third = attrs(3);
        let elsewhere = etcd::acquire(&mut c, prefix, &net, &third, Some(previous), 600)
            .await
            .unwrap();
        assert_ne!(elsewhere.subnet, previous);
    });
}

#[test]
fn short_ttl_lease_is_renewed_before_it_expires() {
    let server = start();
    let prefix = "/weft-test/renew";
    let net =
        NetworkConfig::parse(r#"{"Network":"10.6.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (ttl, margin) = (3, 2);
    let rt = rt();
    let (subnet, key, first_lease) = rt.block_on(async {
        let mut c = client(&server).await;
        let a = etcd::acquire(&mut c, prefix, &net, &attrs(1), None, ttl)
            .await
            .unwrap();
        let out = (a.subnet, a.key.clone(), a.etcd_lease);
        let notify = Arc::new(tokio::sync::Notify::new());
        let renewer = tokio::spawn(etcd::renew_loop(
            c,
            a,
            ttl,
            margin,
            metrics.clone(),
            stop.clone(),
            notify,
        ));
        // Three TTLs: without renewal the key would be gone after one.
        tokio::time::sleep(Duration::from_secs(3 * ttl)).await;
        renewer.abort();
        out
    });
    let keys = server.list(&key).unwrap();
    assert_eq!(keys.len(), 1, "lease of {subnet} expired despite renewal");
    assert_ne!(keys[0].2, first_lease, "still on the first etcd lease");
    assert!(
        metrics.renewals() >= 3,
        "renewals: {} in {} s with TTL {ttl} s",
        metrics.renewals(),
        3 * ttl
    );
}

fn own_node() -> OwnNode {
    OwnNode {
        subnet: "10.5.1.0/24".parse().unwrap(),
        public_ip: Ipv4Addr::new(192, 168, 0, 1),
        vtep_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        vni: 1,
        vxlan_port: 8472,
        underlay_mtu: 1500,
        tun_mtu: 1450,
        backend: control::config::BackendKind::Vxlan,
        encapsulation: control::config::Encapsulation::Always,
        underlay: "192.168.0.0/16".parse().expect("net"),
    }
}

/// Runs a watch loop for `own` on its own thread from a listing taken at `rev` (or now).
fn spawn_watch(
    endpoint_cfg: control::config::EtcdSection,
    prefix: String,
    start: Option<(Vec<etcd::LeaseEntry>, i64)>,
    cell: Arc<SnapshotCell>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        rt().block_on(async {
            let mut c = etcd::connect(&endpoint_cfg).await.unwrap();
            let (entries, rev) = match start {
                Some(s) => s,
                None => etcd::list_leases(&mut c, &prefix).await.unwrap(),
            };
            let mut sync = PeerSync::new(own_node(), cell, metrics.clone());
            sync.replace_all(etcd::leases_of(&entries));
            sync.commit();
            let w = etcd::Watch {
                client: c,
                prefix,
                rev,
                own_key: String::new(),
                metrics,
                stop,
                renew_now: Arc::new(tokio::sync::Notify::new()),
            };
            etcd::watch_loop(w, &mut sync).await;
        })
    })
}

fn wait_routes(cell: &SnapshotCell, n: usize, what: &str) {
    let t = Instant::now();
    while cell.load().fib.len() != n {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what}: {} routes, want {n}",
            cell.load().fib.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn watch_follows_puts_and_deletes_and_relists_after_compaction() {
    let server = start();
    let prefix = "/weft-test/watch".to_string();
    let key = |i: u8| flannel::lease_key(&prefix, format!("10.5.{i}.0/24").parse().unwrap());
    let value = |i: u32| attrs(i).value();
    server.put(&key(2), &value(2), None).unwrap();
    let own = own_node();
    let cell = Arc::new(SnapshotCell::new(reconcile(&own, &[]).snapshot()));
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_watch(
        etcd_cfg(&server),
        prefix.clone(),
        None,
        cell.clone(),
        metrics.clone(),
        stop.clone(),
    );
    wait_routes(&cell, 2, "initial list");
    server.put(&key(3), &value(3), None).unwrap();
    wait_routes(&cell, 3, "put");
    server.delete(&key(2)).unwrap();
    wait_routes(&cell, 2, "delete");
    // A malformed value is ignored (and removes what was there), never fatal.
    server.put(&key(3), "{not json", None).unwrap();
    wait_routes(&cell, 1, "malformed value");
    server.put(&key(4), &value(4), None).unwrap();
    wait_routes(&cell, 2, "put after a malformed value");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();

    // A watcher whose revision was compacted away: it is cancelled, re-lists and converges on
    // exactly what etcd holds.
    let stale = rt().block_on(async {
        let mut c = client(&server).await;
        etcd::list_leases(&mut c, &prefix).await.unwrap()
    });
    server.delete(&key(4)).unwrap();
    server.put(&key(5), &value(5), None).unwrap();
    server.put(&key(6), &value(6), None).unwrap();
    server.compact().unwrap();
    let cell = Arc::new(SnapshotCell::new(reconcile(&own, &[]).snapshot()));
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_watch(
        etcd_cfg(&server),
        prefix.clone(),
        Some(stale),
        cell.clone(),
        metrics.clone(),
        stop.clone(),
    );
    // Own subnet + 10.5.5.0/24 + 10.5.6.0/24 (10.5.3.0 holds a malformed value, 10.5.4.0 is gone).
    wait_routes(&cell, 3, "re-list after compaction");
    let snap = cell.load();
    let routes: Vec<String> = snap
        .fib
        .routes()
        .iter()
        .map(|r| r.prefix.to_string())
        .collect();
    assert!(
        routes.contains(&"10.5.5.0/24".to_string()) && !routes.contains(&"10.5.4.0/24".to_string()),
        "{routes:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
}

#[test]
fn a_deleted_own_lease_is_recreated_with_the_same_subnet() {
    let server = start();
    let prefix = "/weft-test/recreate".to_string();
    let net =
        NetworkConfig::parse(r#"{"Network":"10.4.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    let me = attrs(7);
    let acquired = rt().block_on(async {
        let mut c = client(&server).await;
        etcd::acquire(&mut c, &prefix, &net, &me, None, 600)
            .await
            .unwrap()
    });
    let key = acquired.key.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    let cfg = etcd_cfg(&server);
    let worker = {
        let (stop, metrics, prefix, key) =
            (stop.clone(), metrics.clone(), prefix.clone(), key.clone());
        std::thread::spawn(move || {
            rt().block_on(async {
                let c = etcd::connect(&cfg).await.unwrap();
                let (_, rev) = etcd::list_leases(&mut c.clone(), &prefix).await.unwrap();
                let notify = Arc::new(tokio::sync::Notify::new());
                let renew = tokio::spawn(etcd::renew_loop(
                    c.clone(),
                    acquired,
                    600,
                    60,
                    metrics.clone(),
                    stop.clone(),
                    notify.clone(),
                ));
                let own = own_node();
                let cell = Arc::new(SnapshotCell::new(reconcile(&own, &[]).snapshot()));
                let mut sync = PeerSync::new(own, cell, metrics.clone());
                let w = etcd::Watch {
                    client: c,
                    prefix,
                    rev,
                    own_key: key,
                    metrics,
                    stop,
                    renew_now: notify,
                };
                etcd::watch_loop(w, &mut sync).await;
                renew.abort();
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    server.delete(&key).unwrap();
    let t = Instant::now();
    loop {
        let keys = server.list(&key).unwrap();
        if let Some((_, value, lease)) = keys.first() {
            assert_eq!(*value, me.value());
            assert_ne!(*lease, 0);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "own lease not re-created"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    worker.join().unwrap();
}
