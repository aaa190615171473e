//! `weftd demo`: a three-node Weft cluster in network namespaces on this machine.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::tooling::lab::{Lab, NodeKind, PingResult, LAB_NAMESPACE};
use anyhow::{bail, Context};

pub static CANCELLED: AtomicBool = AtomicBool::new(false);

fn check_cancel() -> anyhow::Result<()> {
    if CANCELLED.load(Ordering::Relaxed) {
        bail!("interrupted; removed the demo's namespaces and agents");
    }
    Ok(())
}

/// Prints a progress line and times the step.
struct Step {
    start: Instant,
}

impl Step {
    fn begin(n: usize, of: usize, what: &str) -> Step {
        eprintln!("[{n}/{of}] {what} ...");
        Step {
            start: Instant::now(),
        }
    }

    fn done(self, detail: &str) {
        eprintln!(
            "      ok ({:.1} s){}{detail}",
            self.start.elapsed().as_secs_f64(),
            if detail.is_empty() { "" } else { ": " }
        );
    }
}

/// Runs the demo; removes everything on return, error or Ctrl-C.
pub fn run(seconds: u64, keep: bool) -> anyhow::Result<()> {
    if !crate::sys::is_root() {
        bail!("weftd demo needs root (it creates network namespaces, veths and TUN devices); run it with sudo");
    }
    watch_ctrl_c();
    let weftd = std::env::current_exe().context("cannot find the weftd binary itself")?;
    const STEPS: usize = 7;

    let step = Step::begin(
        1,
        STEPS,
        "building the underlay and 3 nodes in network namespaces",
    );
    let mut lab = Lab::new(&weftd)?;
    // Pods are ports of Weft's own switch (AF_PACKET on their veths), attached through each
    // agent's CNI server.
    lab.switch = true;
    // NetworkPolicy from a manifest directory every agent watches (step 6 writes it).
    let policies = lab.dir().join("policies");
    std::fs::create_dir_all(&policies)
        .with_context(|| format!("cannot create {}", policies.display()))?;
    lab.config_extra = format!("[policy]\ndir = \"{}\"\n", policies.display());
    for i in 1..=3 {
        lab.add_node(i, NodeKind::Weft)?;
    }
    step.done("underlay 192.168.77.0/24 on bridge ul0; node-1..3 at .1 .. .3, pod subnets 10.244.{1,2,3}.0/24");
    check_cancel()?;

    let step = Step::begin(
        2,
        STEPS,
        "starting weftd on every node (static datastore: each config lists the other nodes)",
    );
    lab.start()?;
    step.done(&format!("configs and logs in {}", lab.dir().display()));
    check_cancel()?;

    let step = Step::begin(
        3,
        STEPS,
        "creating one pod per node, attached by a CNI ADD as a port of Weft's switch",
    );
    let mut pods = Vec::new();
    for idx in 0..3 {
        pods.push(lab.add_pod(idx, 2)?);
    }
    step.done(
        &pods
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    check_cancel()?;

    let step = Step::begin(
        4,
        STEPS,
        "pinging pod to pod across nodes (every ordered pair)",
    );
    let mut lines = Vec::new();
    for &src in &pods {
        for &dst in &pods {
            if src == dst {
                continue;
            }
            check_cancel()?;
            let pod = lab.pod(src).context("pod vanished")?;
            // The first packet may race the neighbour resolution on the bridge: allow a retry.
            let mut result = pod.ping(dst, 56, false, Duration::from_secs(1));
            if !result.is_reply() {
                result = pod.ping(dst, 56, false, Duration::from_secs(2));
            }
            match result {
                PingResult::Reply(rtt) => lines.push(format!(
                    "      {src} -> {dst}: reply in {:.0} µs",
                    rtt.as_secs_f64() * 1e6
                )),
                other => bail!(
                    "ping {src} -> {dst} failed: {other:?}; see the agent logs in {}",
                    lab.dir().display()
                ),
            }
        }
    }
    step.done("");
    for l in lines {
        eprintln!("{l}");
    }

    let step = Step::begin(
        5,
        STEPS,
        &format!("TCP throughput, {seconds} s each way, built-in sender and receiver"),
    );
    let ab = tcp_throughput(&lab, pods[0], pods[1], Duration::from_secs(seconds))?;
    let ba = tcp_throughput(&lab, pods[1], pods[0], Duration::from_secs(seconds))?;
    step.done("");
    eprintln!("      {} -> {}: {:.2} Gbit/s", pods[0], pods[1], ab);
    eprintln!("      {} -> {}: {:.2} Gbit/s", pods[1], pods[0], ba);

    let step = Step::begin(
        6,
        STEPS,
        "NetworkPolicy in the switch: pod 3 takes TCP 5201 from pod 1 only (a manifest in the watched directory)",
    );
    let lines = network_policy(&lab, &pods, &policies)?;
    step.done("");
    for l in lines {
        eprintln!("{l}");
    }

    let step = Step::begin(7, STEPS, "each node's tables and counters (weftd show)");
    step.done("");
    for n in &lab.nodes {
        let reply = crate::ctl::request_show(&n.ctl_socket)?;
        println!("===== {} =====", n.name);
        print!("{}", reply.render());
    }

    if keep {
        eprintln!("--keep: leaving the cluster up; namespaces are listed by `ip netns`; Ctrl-C removes everything");
        while !CANCELLED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!("removing namespaces and agents ...");
    drop(lab);
    eprintln!("done");
    Ok(())
}

/// Labels the pods (client, other, server), writes a NetworkPolicy letting only the client reach
/// the server's TCP 5201 into `dir`, waits until every agent compiled it, and shows it at work:
/// what pod 1 and pod 2 get from pod 3, and why (as `weftctl policy` says it).
fn network_policy(
    lab: &Lab,
    pods: &[Ipv4Addr],
    dir: &std::path::Path,
) -> anyhow::Result<Vec<String>> {
    use crate::policy::explain::PolicyQuery;
    let (client, other, server) = (pods[0], pods[1], pods[2]);
    let listener = lab.pod(server).context("pod 3")?.listen(5201)?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let _ = std::io::Write::write_all(&mut c, b"ok");
        }
    });
    let query = |node: usize, src: Ipv4Addr| {
        crate::ctl::request_policy(
            &lab.nodes[node].ctl_socket,
            &PolicyQuery {
                src,
                dst: server,
                protocol: "tcp".into(),
                port: 5201,
            },
        )
    };
    let before = (0..lab.nodes.len())
        .map(|n| query(n, client).map(|r| r.generation))
        .collect::<Result<Vec<_>, _>>()?;
    let mut yaml = String::new();
    for (idx, (ip, role)) in pods.iter().zip(["client", "other", "server"]).enumerate() {
        yaml += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: {LAB_NAMESPACE}, name: {}, labels: {{role: {role}}}}}\nstatus: {{podIP: {ip}}}\n---\n",
            Lab::pod_id(idx, 2)
        );
    }
    yaml += &format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: {LAB_NAMESPACE}, name: server-from-client}}\nspec:\n  podSelector: {{matchLabels: {{role: server}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]\n    ports: [{{protocol: TCP, port: 5201}}]\n"
    );
    let tmp = dir.join(".demo.yaml.tmp");
    std::fs::write(&tmp, &yaml).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("demo.yaml"))?;
    // Every agent re-reads the directory within half a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (n, b) in before.iter().enumerate() {
        while query(n, client)?.generation <= *b {
            check_cancel()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not load the policy within 5 s; see its log in {}",
                    lab.nodes[n].name,
                    lab.dir().display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut lines = Vec::new();
    for (src, want) in [(client, true), (other, false)] {
        let pod = lab.pod(src).context("pod")?;
        let to = std::net::SocketAddrV4::new(server, 5201);
        // The workers take the new snapshot at their next batch: a moment to agree.
        let deadline = Instant::now() + Duration::from_secs(2);
        let got = loop {
            check_cancel()?;
            let got = pod.connect(to, Duration::from_millis(300)).is_ok();
            if got == want || Instant::now() > deadline {
                break got;
            }
        };
        if got != want {
            bail!(
                "{src} -> {server}:5201 {}, but the policy {} it; see the agent logs in {}",
                if got { "connected" } else { "was blocked" },
                if want { "allows" } else { "denies" },
                lab.dir().display()
            );
        }
        // Node 3 decides for its pod's ingress.
        let why = query(2, src)?;
        lines.push(format!(
            "      {src} -> {server} TCP 5201: {} ({})",
            if got { "connects" } else { "blocked" },
            why.ingress
        ));
    }
    Ok(lines)
}

/// Sends for `duration` from pod `src` to pod `dst` over TCP; returns Gbit/s as the receiver saw it.
fn tcp_throughput(
    lab: &Lab,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    duration: Duration,
) -> anyhow::Result<f64> {
    let t = lab.tcp_throughput(src, dst, 5201, duration, &CANCELLED);
    // An interrupted transfer fails in whatever way it was cut; say it was interrupted.
    check_cancel()?;
    Ok(t?.gbps())
}

/// Sets `CANCELLED` on SIGINT or SIGTERM instead of dying, so the lab's `Drop` cleans up.
pub fn watch_ctrl_c() {
    let _ = std::thread::Builder::new()
        .name("weft-demo-signals".into())
        .spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
                eprintln!("interrupted: cleaning up ...");
                CANCELLED.store(true, Ordering::Relaxed);
            });
        });
}
