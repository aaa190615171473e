//! `weftd bench`: the benchmark harness. Builds the two-node topology
//! (pod ↔ bridge ↔ node ↔ veth underlay ↔ node ↔ bridge ↔ pod) once per variant — kernel VXLAN in
//! flannel's layout, kernel routing (host-gw), Weft VXLAN — and measures them in turn, round after
//! round, so slow drifts of a shared 2-core machine hit every variant alike. Reports medians and
//! each figure's ratio to kernel VXLAN.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::netns::spawn_in_netns;
use crate::tooling::lab::{Lab, NodeKind, PingResult, Underlay};
use anyhow::{bail, Context};

use crate::tooling::demo::CANCELLED;

/// One dataplane under test.
struct Variant {
    key: &'static str,
    name: String,
    /// Run with the `--baseline` binary rather than this one.
    baseline: bool,
    kind: NodeKind,
    lab: Lab,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    gbps: Vec<f64>,
    gbps4: Vec<f64>,
    udp_kpps: Vec<f64>,
    rtt_us: Vec<f64>,
    cpu_s_per_gb: Vec<f64>,
}

/// One dataplane the harness can measure.
#[derive(Debug, Clone, Copy)]
struct VariantSpec {
    /// Its name for `--variants`.
    key: &'static str,
    /// Its name in the table.
    name: &'static str,
    kind: NodeKind,
    /// The Weft agents' `[backend]` body.
    backend: &'static str,
    /// Weft agents in switch mode (`pod_ports = "switch"`).
    switch: bool,
    /// Both pods on node-1: the same-node path (a kernel bridge, or Weft's switch).
    same_node: bool,
    /// NetworkPolicy on (switch mode): both pods isolated both ways by [`POLICY_RULES`] rules
    /// each, the last of which admits the measured traffic.
    policy: bool,
}

/// Rules per direction of the policy variant's NetworkPolicy (issue 20's benchmark).
pub const POLICY_RULES: usize = 1000;

/// The policy variant's manifests: namespace `lab`, one NetworkPolicy selecting every pod in
/// it, `POLICY_RULES - 1` ingress and egress rules that match nothing measured (a /32 of
/// 172.16/12 and a port each), then one admitting the cluster network.
pub fn policy_manifests() -> String {
    let mut rules_in = String::new();
    let mut rules_out = String::new();
    for k in 0..POLICY_RULES - 1 {
        let ip = std::net::Ipv4Addr::from(0xac10_0000u32 + k as u32);
        let port = 10_000 + k;
        rules_in += &format!("  - from: [{{ipBlock: {{cidr: {ip}/32}}}}]\n    ports: [{{protocol: TCP, port: {port}}}]\n");
        rules_out += &format!("  - to: [{{ipBlock: {{cidr: {ip}/32}}}}]\n    ports: [{{protocol: TCP, port: {port}}}]\n");
    }
    let net = crate::tooling::lab::NETWORK;
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: lab}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: lab, name: bench}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n{rules_in}  - from: [{{ipBlock: {{cidr: {net}}}}}]\n  egress:\n{rules_out}  - to: [{{ipBlock: {{cidr: {net}}}}}]\n"
    )
}

/// The variants, in the order every round measures them. The first is the reference of every
/// ratio and is always measured.
const VARIANTS: [VariantSpec; 9] = [
    VariantSpec {
        key: "kernel-vxlan",
        name: "kernel VXLAN (flannel.1)",
        kind: NodeKind::KernelVxlan,
        backend: "",
        switch: false,
        same_node: false,
        policy: false,
    },
    VariantSpec {
        key: "kernel-host-gw",
        name: "kernel routing (host-gw)",
        kind: NodeKind::KernelHostGw,
        backend: "",
        switch: false,
        same_node: false,
        policy: false,
    },
    VariantSpec {
        key: "weft-vxlan",
        name: "Weft VXLAN",
        kind: NodeKind::Weft,
        backend: "type = \"vxlan\"\n",
        switch: false,
        same_node: false,
        policy: false,
    },
    VariantSpec {
        key: "weft-vxlan-switch",
        name: "Weft VXLAN, switch mode",
        kind: NodeKind::Weft,
        backend: "type = \"vxlan\"\n",
        switch: true,
        same_node: false,
        policy: false,
    },
    VariantSpec {
        key: "weft-vxlan-switch-policy",
        name: "Weft VXLAN, switch, 1000-rule policy",
        kind: NodeKind::Weft,
        backend: "type = \"vxlan\"\n",
        switch: true,
        same_node: false,
        policy: true,
    },
    VariantSpec {
        key: "weft-ipip",
        name: "Weft IP-in-IP",
        kind: NodeKind::Weft,
        backend: "type = \"ipip\"\n",
        switch: false,
        same_node: false,
        policy: false,
    },
    VariantSpec {
        key: "weft-host-gw",
        name: "Weft host-gw",
        kind: NodeKind::Weft,
        backend: "type = \"host-gw\"\n",
        switch: false,
        same_node: false,
        policy: false,
    },
    VariantSpec {
        key: "same-node-bridge",
        name: "same node: kernel bridge",
        kind: NodeKind::Weft,
        backend: "type = \"vxlan\"\n",
        switch: false,
        same_node: true,
        policy: false,
    },
    VariantSpec {
        key: "same-node-switch",
        name: "same node: Weft switch",
        kind: NodeKind::Weft,
        backend: "type = \"vxlan\"\n",
        switch: true,
        same_node: true,
        policy: false,
    },
];

/// The variants a run measures: the reference and those `only` names (all when it is empty).
/// An unknown key is an error that lists the known ones.
fn select_variants(only: &[String]) -> anyhow::Result<Vec<VariantSpec>> {
    if let Some(bad) = only.iter().find(|k| !VARIANTS.iter().any(|v| v.key == *k)) {
        let known: Vec<&str> = VARIANTS.iter().map(|v| v.key).collect();
        bail!(
            "--variants: unknown variant {bad:?}; known: {}",
            known.join(", ")
        );
    }
    Ok(VARIANTS
        .iter()
        .enumerate()
        .filter(|(i, v)| *i == 0 || only.is_empty() || only.iter().any(|k| k == v.key))
        .map(|(_, v)| *v)
        .collect())
}

/// Streams of the multi-stream TCP run.
const STREAMS: usize = 4;
/// Datagram size of the UDP run (payload bytes, as iperf3 `-l`).
const UDP_LEN: usize = 1400;

/// How throughput is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// iperf3 from Debian's package, when installed.
    Iperf3,
    /// Weft's own sender and receiver.
    Builtin,
}

/// The Weft agents' dataplane settings in a harness run.
#[derive(Debug, Clone, Copy)]
pub struct WeftKnobs {
    /// Workers per agent (0: one per core).
    pub workers: usize,
    /// `[dataplane] busy_poll_us`.
    pub busy_poll_us: u32,
    /// `[dataplane] gso`.
    pub gso: bool,
    /// `[dataplane] gro`.
    pub gro: bool,
    /// `[dataplane] offload`.
    pub tun_offload: bool,
}

impl WeftKnobs {
    /// The `[dataplane]` lines these settings add to an agent's config.
    fn dataplane_lines(&self) -> String {
        format!(
            "busy_poll_us = {}\ngso = {}\ngro = {}\noffload = {}\n",
            self.busy_poll_us, self.gso, self.gro, self.tun_offload
        )
    }
}

/// What every variant's lab is built with.
#[derive(Debug, Clone, Copy, Default)]
pub struct LabKnobs {
    /// Use the built-in TCP generator even when iperf3 is installed.
    pub builtin: bool,
    /// How the underlay carries large packets ([`Underlay::Ideal`]: whole; `Segmenting`: as NICs).
    pub underlay: Underlay,
    /// Hold a PM QoS CPU wakeup latency request of this many µs for the whole run (system-wide:
    /// every variant, the kernel's included, runs under it).
    pub cpu_wakeup_latency_us: Option<u32>,
}

/// Runs the harness: `rounds` rounds of `seconds` of TCP plus `pings` pings per variant.
pub fn run(
    rounds: usize,
    seconds: u64,
    pings: usize,
    lab_knobs: LabKnobs,
    knobs: &WeftKnobs,
    only: &[String],
    baseline: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let selected = select_variants(only)?;
    if let Some(b) = baseline {
        if !b.is_file() {
            bail!("--baseline {}: no such weftd binary", b.display());
        }
    }
    if !crate::sys::is_root() {
        bail!("weftd bench needs root (network namespaces, veths, TUN); run it with sudo");
    }
    crate::tooling::demo::watch_ctrl_c();
    let LabKnobs {
        builtin,
        underlay,
        cpu_wakeup_latency_us,
    } = lab_knobs;
    let cpu_latency = cpu_wakeup_latency_us
        .map(crate::cpu_latency::CpuLatencyRequest::request)
        .transpose()
        .with_context(|| {
            format!(
                "--cpu-wakeup-latency-us: cannot hold a request on {}",
                crate::cpu_latency::DEVICE
            )
        })?;
    if underlay == Underlay::Segmenting && !which("ethtool") {
        bail!("--underlay segmenting needs ethtool to set the underlay's offloads; install it (apt-get install ethtool)");
    }
    let generator = if !builtin && which("iperf3") {
        Generator::Iperf3
    } else {
        Generator::Builtin
    };
    let weftd = std::env::current_exe().context("cannot find the weftd binary itself")?;
    let started = Instant::now();
    eprintln!(
        "weftd bench: {rounds} rounds x {} variants, {seconds} s single-stream TCP ({}) and {pings} pings each, underlay {}",
        selected.len(),
        match generator {
            Generator::Iperf3 => "iperf3",
            Generator::Builtin => "built-in generator; install iperf3 to use it",
        },
        underlay.describe()
    );
    let wakeups = match &cpu_latency {
        Some(r) => format!(
            "CPU wakeup latency held at {} µs for the whole run (PM QoS, system-wide: every variant)",
            r.us()
        ),
        None => "no CPU wakeup latency request (the machine's idle states)".to_string(),
    };
    eprintln!("{wakeups}");
    let mut variants = Vec::new();
    // With --baseline, every Weft variant also runs with that binary, right after this one's, in
    // every round: old and new alternate under the same host noise.
    let runs = selected.into_iter().flat_map(|spec| {
        let twice = baseline.is_some() && spec.kind == NodeKind::Weft;
        std::iter::once((spec, false)).chain(twice.then_some((spec, true)))
    });
    for (
        VariantSpec {
            key,
            name,
            kind,
            backend,
            switch,
            same_node,
            policy,
        },
        is_baseline,
    ) in runs
    {
        let name = if is_baseline {
            format!("{name} (baseline)")
        } else {
            name.to_string()
        };
        eprintln!("[setup] {name} ...");
        let binary = match baseline {
            Some(b) if is_baseline => b.to_path_buf(),
            _ => weftd.clone(),
        };
        let mut lab = Lab::new(&binary)?;
        lab.underlay_kind = underlay;
        lab.workers = knobs.workers;
        lab.dataplane_extra = knobs.dataplane_lines();
        lab.backend = backend.to_string();
        lab.switch = switch;
        if policy {
            let dir = lab.dir().join("policies");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("bench.yaml"), policy_manifests())?;
            lab.config_extra = format!("[policy]\ndir = \"{}\"\n", dir.display());
        }
        lab.add_node(1, kind)?;
        lab.add_node(2, kind)?;
        lab.start()?;
        let src = lab.add_pod(0, 2)?;
        let dst = if same_node {
            lab.add_pod(0, 3)?
        } else {
            lab.add_pod(1, 2)?
        };
        // Warm up ARP on both bridges and the path.
        for _ in 0..3 {
            if lab
                .pod(src)
                .context("pod")?
                .ping(dst, 56, false, Duration::from_secs(1))
                .is_reply()
            {
                break;
            }
        }
        variants.push(Variant {
            key,
            name,
            baseline: is_baseline,
            kind,
            lab,
            src,
            dst,
            gbps: Vec::new(),
            gbps4: Vec::new(),
            udp_kpps: Vec::new(),
            rtt_us: Vec::new(),
            cpu_s_per_gb: Vec::new(),
        });
    }
    for round in 1..=rounds {
        for v in variants.iter_mut() {
            if CANCELLED.load(Ordering::Relaxed) {
                bail!("interrupted; removed the harness's namespaces and agents");
            }
            let cpu_before = agent_cpu_seconds(&v.lab);
            let (bytes, gbps) = match generator {
                Generator::Iperf3 => iperf3(&v.lab, v.src, v.dst, seconds, &[])?,
                Generator::Builtin => {
                    let t = v.lab.tcp_throughput(
                        v.src,
                        v.dst,
                        5201,
                        Duration::from_secs(seconds),
                        &CANCELLED,
                    )?;
                    (t.bytes, t.gbps())
                }
            };
            let cpu = agent_cpu_seconds(&v.lab) - cpu_before;
            if v.kind == NodeKind::Weft && bytes > 0 {
                v.cpu_s_per_gb.push(cpu / (bytes as f64 / 1e9));
            }
            v.gbps.push(gbps);
            if generator == Generator::Iperf3 {
                let streams = STREAMS.to_string();
                let (_, g4) = iperf3(&v.lab, v.src, v.dst, seconds, &["-P", &streams])?;
                v.gbps4.push(g4);
                let len = UDP_LEN.to_string();
                // The received bit rate over iperf3's own measured interval, in datagrams.
                let (_, gbps_udp) = iperf3(
                    &v.lab,
                    v.src,
                    v.dst,
                    seconds,
                    &["-u", "-b", "0", "-l", &len],
                )?;
                v.udp_kpps.push(gbps_udp * 1e9 / 8.0 / UDP_LEN as f64 / 1e3);
            }
            let pod = v.lab.pod(v.src).context("pod")?;
            let mut lost = 0;
            for _ in 0..pings {
                match pod.ping(v.dst, 56, false, Duration::from_secs(1)) {
                    PingResult::Reply(rtt) => v.rtt_us.push(rtt.as_secs_f64() * 1e6),
                    _ => lost += 1,
                }
            }
            eprintln!(
                "[round {round}/{rounds}] {:<26} {:>6.2} Gbit/s  {STREAMS} streams {:>6.2} Gbit/s  UDP {:>5.0} kpps  rtt p50 {:>5.0} µs{}",
                v.name,
                gbps,
                v.gbps4.last().copied().unwrap_or(f64::NAN),
                v.udp_kpps.last().copied().unwrap_or(f64::NAN),
                median(&v.rtt_us[v.rtt_us.len().saturating_sub(pings - lost)..]),
                if lost > 0 {
                    format!("  ({lost} pings lost)")
                } else {
                    String::new()
                }
            );
        }
    }
    println!();
    println!("Underlay: {}.", underlay.describe());
    println!("Wakeups: {wakeups}.");
    println!(
        "Medians of {rounds} rounds; ratios to kernel VXLAN. TCP: iperf3 single stream and {STREAMS} streams; UDP: {UDP_LEN}-byte datagrams at full rate, received packets/s; CPU: Weft agents' user+system seconds per GB over the single-stream run."
    );
    println!();
    println!(
        "| variant | TCP 1 stream Gbit/s | ratio | TCP {STREAMS} streams Gbit/s | ratio | UDP {UDP_LEN} B kpps | ratio | RTT p50 µs | RTT p99 µs | p50 vs kernel VXLAN | Weft CPU s/GB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let base_gbps = median(&variants[0].gbps);
    let base_gbps4 = median(&variants[0].gbps4);
    let base_kpps = median(&variants[0].udp_kpps);
    let base_p50 = median(&variants[0].rtt_us);
    for v in &variants {
        let p50 = median(&v.rtt_us);
        println!(
            "| {} | {:.2} | {:.2}x | {:.2} | {:.2}x | {:.0} | {:.2}x | {:.0} | {:.0} | {:+.0} µs | {} |",
            v.name,
            median(&v.gbps),
            median(&v.gbps) / base_gbps,
            median(&v.gbps4),
            median(&v.gbps4) / base_gbps4,
            median(&v.udp_kpps),
            median(&v.udp_kpps) / base_kpps,
            p50,
            percentile(&v.rtt_us, 0.99),
            p50 - base_p50,
            if v.cpu_s_per_gb.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}", median(&v.cpu_s_per_gb))
            }
        );
    }
    // The pairs the switch is judged by, when both were measured.
    let by_key = |k: &str| variants.iter().find(|v| v.key == k && !v.baseline);
    for b in variants.iter().filter(|v| v.baseline) {
        if let Some(a) = by_key(b.key) {
            println!(
                "\n{}, this binary / baseline: TCP 1 stream {:.2}x, {STREAMS} streams {:.2}x, RTT p50 {:+.0} µs, CPU per GB {:.2}x",
                a.name,
                median(&a.gbps) / median(&b.gbps),
                median(&a.gbps4) / median(&b.gbps4),
                median(&a.rtt_us) - median(&b.rtt_us),
                median(&a.cpu_s_per_gb) / median(&b.cpu_s_per_gb),
            );
        }
    }
    for (what, a, b) in [
        (
            "cross-node, Weft switch mode / bridge mode",
            "weft-vxlan-switch",
            "weft-vxlan",
        ),
        (
            "same node, Weft switch / kernel bridge",
            "same-node-switch",
            "same-node-bridge",
        ),
    ] {
        if let (Some(a), Some(b)) = (by_key(a), by_key(b)) {
            println!(
                "\n{what}: TCP 1 stream {:.2}x, {STREAMS} streams {:.2}x, RTT p50 {:+.0} µs",
                median(&a.gbps) / median(&b.gbps),
                median(&a.gbps4) / median(&b.gbps4),
                median(&a.rtt_us) - median(&b.rtt_us),
            );
        }
    }
    eprintln!(
        "\nharness took {:.0} s; removing namespaces and agents ...",
        started.elapsed().as_secs_f64()
    );
    drop(variants);
    Ok(())
}

/// CPU seconds (user + system) used so far by the lab's running agents, from `/proc/<pid>/stat`.
fn agent_cpu_seconds(lab: &Lab) -> f64 {
    lab.nodes
        .iter()
        .filter_map(|n| n.agent.as_ref())
        .filter_map(|c| std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may contain spaces) start at ") ".
            let rest = stat.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat(5): 12 and 13 after the name.
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            // USER_HZ, the unit of /proc tick counts, is 100 on every Linux ABI.
            Some(ticks as f64 / 100.0)
        })
        .sum()
}

/// One iperf3 run from pod `src` to pod `dst` with `extra` client arguments (`-P 4`, `-u ...`):
/// (bytes received, Gbit/s received).
fn iperf3(
    lab: &Lab,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<(u64, f64)> {
    let server_ns = &lab.pod(dst).context("pod")?.ns;
    let mut server = spawn_in_netns(
        Command::new("iperf3")
            .args(["-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        server_ns,
    )
    .context("start iperf3 -s in the receiving pod")?;
    std::thread::sleep(Duration::from_millis(300));
    let client_ns = &lab.pod(src).context("pod")?.ns;
    let out = spawn_in_netns(
        Command::new("iperf3")
            .args([
                "-c",
                &dst.to_string(),
                "-p",
                "5201",
                "-t",
                &seconds.to_string(),
                "-J",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        client_ns,
    )
    .context("start iperf3 -c in the sending pod")?
    .wait_with_output()
    .context("iperf3 client")?;
    let _ = server.kill();
    let _ = server.wait();
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 -J output is not JSON")?;
    let recv = &json["end"]["sum_received"];
    let bps = recv["bits_per_second"]
        .as_f64()
        .context("iperf3: no end.sum_received")?;
    let bytes = recv["bytes"].as_u64().unwrap_or(0);
    Ok((bytes, bps / 1e9))
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn median(xs: &[f64]) -> f64 {
    percentile(xs, 0.5)
}

fn percentile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() - 1) as f64 * q).round() as usize;
    v[idx.min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_variants_manifests_compile_to_its_rule_count() {
        let m = crate::policy::Manifests::from_str(
            &policy_manifests(),
            std::path::Path::new("bench.yaml"),
        )
        .expect("the manifests load");
        let pod = k8s_openapi::api::core::v1::Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                namespace: Some("lab".into()),
                name: Some("lab-0-2".into()),
                ..Default::default()
            },
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                pod_ip: Some("10.244.1.2".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ip: std::net::Ipv4Addr = "10.244.1.2".parse().expect("ip");
        let set =
            crate::policy::compile(&m.policies, &[pod], &m.namespaces, &[ip]).expect("compiles");
        let p = set.pod(ip).expect("the pod is isolated");
        for d in [
            dataplane::policy::Direction::Ingress,
            dataplane::policy::Direction::Egress,
        ] {
            assert_eq!(p.table(d).map(|t| t.rules().len()), Some(POLICY_RULES));
        }
    }

    #[test]
    fn variants_keep_the_reference_and_refuse_unknown_keys() {
        let all = select_variants(&[]).expect("all");
        assert_eq!(all.len(), VARIANTS.len());
        let two = select_variants(&["weft-ipip".to_string()]).expect("one key");
        let names: Vec<&str> = two.iter().map(|v| v.name).collect();
        assert_eq!(names, ["kernel VXLAN (flannel.1)", "Weft IP-in-IP"]);
        let err = select_variants(&["weft-vxlna".to_string()]).expect_err("misspelt");
        let msg = err.to_string();
        assert!(
            msg.contains("\"weft-vxlna\"") && msg.contains("weft-vxlan"),
            "{msg}"
        );
    }
}
