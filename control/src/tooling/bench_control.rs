//! `weftd bench-control`: the control plane's benchmarks (issue 4), printed, never asserted.
//!
//! 1. A real etcd (in a lab's underlay namespace) holding `leases` flannel leases; one `weftd run`
//!    agent on the etcd datastore in a lab node. Start-up time is from spawning the process to
//!    `/readyz` answering 200 (lease held, every peer programmed, subnet.env written), polled every
//!    5 ms; the FIB size is checked over the control socket. Resident memory is the agent's
//!    `VmRSS` (and peak `VmHWM`) from /proc once it is ready.
//! 2. Lease change to FIB updated: `changes` changes (a new lease put, then deleted, in turn)
//!    against the same etcd, each timed from just before the put/delete request to the moment a
//!    watching node's published FIB has (or no longer has) the route. The watching node is the
//!    agent's own control loop (`etcd::watch_loop` + `PeerSync`) run in this process, so the FIB
//!    can be polled without a process boundary; the real agent watches the same changes, and its
//!    `weft_watch_lag_seconds` (change received to tables published) is printed beside.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::datastore::etcd;
use crate::datastore::flannel::{self, NetworkConfig};
use crate::datastore::{reconcile, OwnNode, PeerSync};
use crate::etcd::{PutOptions, Txn, TxnOp};
use crate::metrics::Metrics;
use crate::tooling::lab::{Lab, NodeKind};
use anyhow::{bail, Context};
use dataplane::snapshot::SnapshotCell;
use dataplane::wire::EthernetAddress;
use ipnet::Ipv4Net;

/// The bench's network: room for far more than 5,000 /24s.
const NETWORK_CONFIG: &str =
    r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

/// The subnet of seeded lease `i`: 10.1.0.0/24 upwards (the agent picks from 10.0.1.0/24).
fn seeded_subnet(i: usize) -> Ipv4Net {
    let a = 1 + i / 256;
    Ipv4Net::new(Ipv4Addr::new(10, a as u8, (i % 256) as u8, 0), 24).expect("valid")
}

fn seeded_value(i: usize) -> String {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i as u32);
    let mac = EthernetAddress([0x0e, 0xbe, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    flannel::vxlan_lease_value(ip, 1, mac)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn endpoint_port(endpoint: &str) -> anyhow::Result<u16> {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("port of {endpoint}"))
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs the benchmarks and prints the figures.
pub fn run(leases: usize, changes: usize) -> anyhow::Result<()> {
    if !crate::sys::is_root() {
        bail!("bench-control needs root (network namespaces, TUN, veths)");
    }
    if leases > 60_000 {
        bail!("--leases {leases}: at most 60000 fit the bench network 10.0.0.0/8 as laid out");
    }
    let weftd = std::env::current_exe().context("path of weftd")?;
    let mut lab = Lab::new(&weftd).context("lab")?;
    lab.start_etcd(86_400, 3_600).context("etcd in the lab")?;
    let prefix = flannel::DEFAULT_PREFIX.to_string();
    let etcd_srv = lab.etcd().context("etcd")?;
    let endpoint = etcd_srv.endpoint();
    etcd_srv.put(&flannel::config_key(&prefix), NETWORK_CONFIG, None)?;

    // Seed the leases, 100 puts per transaction, all on one 24 h etcd lease.
    let seed_start = Instant::now();
    {
        let prefix = prefix.clone();
        etcd_srv.block(move |mut c| async move {
            let id = c.lease_grant(86_400).await?.id;
            for chunk in (0..leases).collect::<Vec<_>>().chunks(100) {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|&i| {
                        TxnOp::put(
                            flannel::lease_key(&prefix, seeded_subnet(i)),
                            seeded_value(i),
                            Some(PutOptions::new().with_lease(id)),
                        )
                    })
                    .collect();
                c.txn(Txn::new().and_then(ops)).await?;
            }
            Ok(())
        })?;
    }
    println!(
        "seeded {leases} leases into etcd in {:.2} s",
        seed_start.elapsed().as_secs_f64()
    );

    // 1. A real agent: start to ready, FIB size, memory.
    let idx = lab.add_node(1, NodeKind::Weft)?;
    // A fresh veth and bridge port drop the very first packets for a moment; a TCP SYN lost then
    // costs the 1 s initial retransmission timeout, which would be the lab's start-up, not the
    // agent's. A real node's underlay is up long before its agent starts: wait for ours too.
    let etcd_addr =
        std::net::SocketAddr::from((crate::tooling::lab::ETCD_IP, endpoint_port(&endpoint)?));
    let warm = Instant::now();
    while !lab.nodes[idx]
        .ns
        .run(move || {
            std::net::TcpStream::connect_timeout(&etcd_addr, Duration::from_millis(200)).is_ok()
        })
        .unwrap_or(false)
    {
        if warm.elapsed() > Duration::from_secs(10) {
            bail!("node-1 cannot reach etcd at {etcd_addr} over the lab underlay");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    lab.launch_agent(idx)?;
    let ready = loop {
        if let Ok((200, _)) = lab.http_get(idx, "/readyz") {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(&lab.nodes[idx].log).unwrap_or_default();
            bail!("agent not ready after 60 s; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    lab.wait_agent(idx, Duration::from_secs(10))?;
    let show = crate::ctl::request_show(&lab.nodes[idx].ctl_socket)?;
    let pid = lab.nodes[idx]
        .agent
        .as_ref()
        .map(std::process::Child::id)
        .context("agent pid")?;
    let rss = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    println!(
        "weftd start to ready (lease held, {} peers programmed, subnet.env written): {:.0} ms (target <= 2000 ms)",
        show.routes.len().saturating_sub(1),
        ready.as_secs_f64() * 1e3
    );
    if show.routes.len() != leases + 1 {
        bail!(
            "the agent programmed {} routes, expected {} (own subnet + every lease)",
            show.routes.len(),
            leases + 1
        );
    }
    println!(
        "weftd resident memory with {leases} peers: VmRSS {:.1} MiB, peak VmHWM {:.1} MiB (target <= 50 MB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    // 2. Lease change -> FIB updated on a watching node.
    let endpoint_cfg = {
        let mut c = crate::config::Config::from_toml_str(
            "[node]\nname = \"bench-watcher\"\n[datastore]\ntype = \"etcd\"\n",
        )?;
        c.datastore.etcd.endpoints = vec![endpoint];
        c.datastore.etcd
    };
    let lat = lab
        .etcd()
        .context("etcd")?
        .in_ns(move || change_latency(&endpoint_cfg, &prefix, changes))??;
    let mut sorted = lat.clone();
    sorted.sort();
    println!(
        "lease change to FIB updated on a watching node, {} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 100 ms)",
        sorted.len(),
        percentile(&sorted, 0.5).as_secs_f64() * 1e3,
        percentile(&sorted, 0.99).as_secs_f64() * 1e3,
        sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    if let Ok((200, m)) = lab.http_get(idx, "/metrics") {
        let get = |name: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        if let (Some(sum), Some(count)) = (
            get("weft_watch_lag_seconds_sum "),
            get("weft_watch_lag_seconds_count "),
        ) {
            println!(
                "the agent's own watch lag (change received to tables published): {} publications, mean {:.2} ms",
                count,
                if count > 0.0 { sum / count * 1e3 } else { 0.0 }
            );
        }
    }
    Ok(())
}

/// Runs a watching node's control loop in this process and times `changes` lease changes.
fn change_latency(
    cfg: &crate::config::EtcdSection,
    prefix: &str,
    changes: usize,
) -> anyhow::Result<Vec<Duration>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let own = OwnNode {
        subnet: "10.0.1.0/24".parse()?,
        public_ip: Ipv4Addr::new(172, 31, 0, 1),
        vtep_mac: EthernetAddress([0x0e, 0xbe, 0xff, 0, 0, 1]),
        vni: 1,
        vxlan_port: 8472,
        underlay_mtu: 1500,
        tun_mtu: 1450,
        backend: crate::config::BackendKind::Vxlan,
        encapsulation: crate::config::Encapsulation::Always,
        underlay: "192.168.0.0/16".parse().expect("net"),
    };
    let cell = Arc::new(SnapshotCell::new(reconcile(&own, &[]).snapshot()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (cfg, prefix, cell, stop) =
            (cfg.clone(), prefix.to_string(), cell.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut c = etcd::connect(&cfg).await?;
                let (entries, rev) = etcd::list_leases(&mut c, &prefix).await?;
                let metrics = Arc::new(Metrics::new());
                let mut sync = PeerSync::new(own, cell, metrics.clone());
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
                anyhow::Ok(())
            })
        })
    };
    let seeded = {
        let t = Instant::now();
        loop {
            let n = cell.load().fib.len();
            if n > 1 {
                break n;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("the watching node never listed the leases");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let net = NetworkConfig::parse(NETWORK_CONFIG)?;
    let value = seeded_value(99_999);
    let result = rt.block_on(async {
        let mut c = etcd::connect(cfg).await?;
        let mut lat = Vec::with_capacity(changes);
        for i in 0..changes {
            // 10.250.x.0/24: outside the seeded range, inside the network.
            let subnet = Ipv4Net::new(Ipv4Addr::new(10, 250, ((i / 2) % 256) as u8, 0), 24)?;
            debug_assert!(net.network.contains(&subnet));
            let key = flannel::lease_key(prefix, subnet);
            let probe = Ipv4Addr::from(u32::from(subnet.network()) + 7);
            let adding = i % 2 == 0;
            let t = Instant::now();
            if adding {
                c.put(key.as_str(), value.as_str(), None).await?;
            } else {
                c.delete(key.as_str(), None).await?;
            }
            loop {
                let present = cell
                    .load()
                    .fib
                    .lookup(probe)
                    .is_some_and(|r| r.prefix == subnet);
                if present == adding {
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    bail!("change {i} ({key}) not applied within 10 s");
                }
                // The runtime has nothing else to do here; a blocking 100 µs nap is finer than
                // tokio's 1 ms timer.
                std::thread::sleep(Duration::from_micros(100));
            }
            lat.push(t.elapsed());
        }
        anyhow::Ok(lat)
    });
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    println!("watching node listed {} routes before the changes", seeded);
    result
}
