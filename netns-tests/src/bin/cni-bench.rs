//! `cni-bench`: ADD and DEL latency of the `weft` CNI plugin beside Debian's `bridge` +
//! `host-local` (the plugins flannel delegates to), measured the same way in the same run.
//!
//! One Weft node in a namespace lab; N pods (default 100) attached one after the other by the
//! libcni-like driver (`netns_tests::cni`), each a fresh namespace made before timing starts.
//! Weft and bridge alternate pod by pod so drift on a busy machine hits both alike; the time is
//! the driver's wall time per call: fork+exec of the plugin inside the node's namespace, its
//! work, its exit. The exec floor (the weft plugin answering VERSION, no agent involved) is
//! printed too. Prints a table; asserts nothing (timings belong here, not in tests).
//!
//! With `--switch` the Weft node runs in switch mode (`pod_ports = "switch"`): each ADD also opens
//! the pod's AF_PACKET port and waits until every worker has it. The agent's resident memory
//! before and after the ADDs gives the memory per pod.
//!
//! Run as root, after `cargo build --release --workspace --bins`:
//! `./target/release/cni-bench [--pods 100] [--switch]`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use control::tooling::lab::{Lab, NodeKind};
use netns_tests::cni::{weft_only, Attachment, Driver};
use serde_json::json;

fn usage() -> ! {
    eprintln!(
        "usage: cni-bench [--pods N] [--switch]\n\nMeasures CNI ADD and DEL latency (p50, p99 over N sequential pods, default 100) of the\nweft plugin and of Debian's bridge + host-local, alternating pod by pod, in a namespace lab.\nNeeds root, weftd and weft built beside this binary, and /usr/lib/cni (containernetworking-plugins)."
    );
    std::process::exit(2)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    // Nearest rank.
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
    let mut pods = 100usize;
    let mut switch = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--switch" => switch = true,
            "--pods" => {
                pods = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0 && *n <= 250)
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    if !control::sys::is_root() {
        eprintln!("cni-bench: needs root (network namespaces, veths)");
        std::process::exit(1);
    }
    let dir: PathBuf = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.to_path_buf()))
        .unwrap_or_else(|| usage());
    let weftd = dir.join("weftd");
    for bin in [&weftd, &dir.join("weft")] {
        if !bin.exists() {
            eprintln!(
                "cni-bench: {} is missing; run `cargo build --release --workspace --bins`",
                bin.display()
            );
            std::process::exit(1);
        }
    }
    let cni_path = vec![dir.clone(), PathBuf::from(netns_tests::SYSTEM_CNI_DIR)];
    for p in ["bridge", "host-local"] {
        if !PathBuf::from(netns_tests::SYSTEM_CNI_DIR).join(p).is_file() {
            eprintln!(
                "cni-bench: /usr/lib/cni/{p} is missing; install containernetworking-plugins"
            );
            std::process::exit(1);
        }
    }

    let mut lab = Lab::new(&weftd).expect("lab");
    lab.workers = 1;
    lab.switch = switch;
    lab.add_node(1, NodeKind::Weft).expect("node");
    lab.start().expect("agent starts");
    let node = &lab.nodes[0];
    let driver = Driver::new(node.ns.path(), cni_path);
    let weft = weft_only(&node.cni_socket, "1.0.0");
    // What flannel's CNI plugin hands to bridge (flannel/pkg/cni: delegate config), on a subnet of
    // its own so the two never meet.
    let bridge = json!({
        "cniVersion": "1.0.0",
        "name": "cbr",
        "plugins": [{
            "type": "bridge",
            "bridge": "cbr0",
            "mtu": 1450,
            "hairpinMode": true,
            "ipMasq": false,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.88.0.0/24"}]],
                "dataDir": lab.dir().join("host-local").display().to_string()
            }
        }]
    });

    let make = |tag: &str| -> Vec<_> {
        (0..pods)
            .map(|i| lab.empty_pod_ns(&format!("{tag}{i}")).expect("pod ns"))
            .collect()
    };
    let (weft_ns, bridge_ns) = (make("w"), make("b"));
    let atts = |nss: &[control::netns::NetNs], tag: &str| -> Vec<Attachment> {
        nss.iter()
            .enumerate()
            .map(|(i, ns)| Attachment::new(&format!("{tag}{i:04}"), ns.path()))
            .collect()
    };
    let (weft_att, bridge_att) = (atts(&weft_ns, "weft"), atts(&bridge_ns, "cbr"));

    // Warm both paths once (page cache, first bridge creation) outside the samples.
    let warm_ns = lab.empty_pod_ns("warm").expect("ns");
    for list in [&weft, &bridge] {
        let att = Attachment::new("warm", warm_ns.path());
        let r = driver.add(list, &att).unwrap_or_else(|e| panic!("{e}"));
        driver
            .del(list, &att, Some(&r))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    let floor: Vec<Duration> = (0..pods)
        .map(|_| {
            driver
                .exec_raw("weft", &[("CNI_COMMAND", "VERSION".into())], b"")
                .elapsed
        })
        .collect();

    let agent_pid = lab.nodes[0].agent.as_ref().map(std::process::Child::id);
    let rss_kib = || -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent_pid?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let rss_before = rss_kib();
    let (mut w_add, mut b_add, mut w_del, mut b_del) = (vec![], vec![], vec![], vec![]);
    let mut w_res = Vec::new();
    let mut b_res = Vec::new();
    let timed = |f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        f();
        t.elapsed()
    };
    for i in 0..pods {
        let mut r = None;
        w_add.push(timed(&mut || {
            r = Some(
                driver
                    .add(&weft, &weft_att[i])
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        }));
        w_res.push(r.take().expect("result"));
        b_add.push(timed(&mut || {
            r = Some(
                driver
                    .add(&bridge, &bridge_att[i])
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        }));
        b_res.push(r.take().expect("result"));
    }
    let rss_after = rss_kib();
    for i in 0..pods {
        w_del.push(timed(&mut || {
            driver
                .del(&weft, &weft_att[i], Some(&w_res[i]))
                .unwrap_or_else(|e| panic!("{e}"))
        }));
        b_del.push(timed(&mut || {
            driver
                .del(&bridge, &bridge_att[i], Some(&b_res[i]))
                .unwrap_or_else(|e| panic!("{e}"))
        }));
    }

    println!(
        "CNI latency, {pods} sequential pods each, alternating weft ({}) and bridge pod by pod (ms)\n",
        if switch { "switch mode" } else { "bridge mode" }
    );
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        println!(
            "weftd resident memory: {b} KiB before, {a} KiB with {pods} pods: {:.1} KiB per pod\n",
            a.saturating_sub(b) as f64 / pods as f64
        );
    }
    println!("| plugin | ADD p50 | ADD p99 | DEL p50 | DEL p99 | ADD p50 vs bridge+host-local |");
    println!("|---|---|---|---|---|---|");
    let base = percentile(&b_add, 50.0).as_secs_f64();
    for (name, add, del) in [
        ("weft (shim + weftd)", &w_add, &w_del),
        ("bridge + host-local", &b_add, &b_del),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {:.2}x |",
            ms(percentile(add, 50.0)),
            ms(percentile(add, 99.0)),
            ms(percentile(del, 50.0)),
            ms(percentile(del, 99.0)),
            percentile(add, 50.0).as_secs_f64() / base
        );
    }
    // weftd logs its own time per verb ("CNI ok command=ADD ... us=N"): the share spent in
    // the agent, as opposed to exec, the shim and the socket.
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    for verb in ["ADD", "DEL"] {
        let agent: Vec<Duration> = log
            .lines()
            .filter(|l| l.contains("CNI ok") && l.contains(&format!("command={verb}")))
            .filter(|l| l.contains("container=\"weft"))
            .filter_map(|l| {
                l.split("us=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .map(Duration::from_micros)
            .collect();
        if !agent.is_empty() {
            println!(
                "weftd's own {verb} time (from its log, {} samples): p50 {} ms, p99 {} ms",
                agent.len(),
                ms(percentile(&agent, 50.0)),
                ms(percentile(&agent, 99.0))
            );
        }
    }
    println!(
        "exec floor (weft VERSION, no agent): p50 {} ms, p99 {} ms",
        ms(percentile(&floor, 50.0)),
        ms(percentile(&floor, 99.0))
    );
    drop(warm_ns);
}
