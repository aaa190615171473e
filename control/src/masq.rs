//! Egress masquerade: pod traffic leaving the cluster network leaves with the node's address
//! (flannel's `--ip-masq`, Calico's `natOutgoing`).
//!
//! The rules are flannel's, in chains of Weft's own so they never mix with kube-proxy's or
//! Docker's:
//!
//! | match | action | why |
//! |---|---|---|
//! | mark `0x4000/0x4000` | return | kube-proxy marked it and masquerades it itself |
//! | pod subnet → cluster | return | pod↔pod across nodes is never translated |
//! | cluster → pod subnet | return | remote pods reach ours with their own address |
//! | not cluster → pod subnet | return | traffic from outside to a pod is not translated |
//! | cluster → not multicast | masquerade (fully random) | a pod reaching outside |
//! | not cluster → cluster | masquerade (fully random) | the host reaching a remote pod |
//!
//! plus a forward chain accepting traffic from and to the cluster network, for hosts whose
//! `FORWARD` policy is `DROP` (Docker sets it so).
//!
//! Two backends, chosen by `[network] masq_backend` (default `auto`):
//!
//! - **iptables** (`auto` picks it when `iptables` and `iptables-restore` are installed): chains
//!   `nat WEFT-POSTRTG` and `filter WEFT-FWD`, jumped to from `POSTROUTING` and `FORWARD`, written
//!   in one `iptables-restore --noflush` (a chain named in its input is flushed and refilled in
//!   one commit, so an apply is atomic and idempotent). Following the host's `iptables` — legacy or
//!   nf_tables — puts Weft's rules in the tables kube-proxy and Docker use: an `ACCEPT` in a
//!   separate nftables base chain cannot undo a `DROP` policy in iptables' `FORWARD` chain.
//! - **nftables** (`auto` picks it when only `nft` is installed): one table `ip weft` with base
//!   chains `postrouting` (nat, srcnat) and `forward` (filter), replaced in one `nft -f`
//!   transaction.
//!
//! A reconciler thread lists the rules every [`RECONCILE`] and compares the listing with the one
//! taken right after the first apply; on a difference (someone flushed the chain, deleted the jump,
//! dropped the table) it applies again and counts a repair. The rules stay when the agent stops,
//! as flannel's do, so a restart does not interrupt egress; `ip_masq = false` removes them at
//! start.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::metrics::Metrics;

/// How often the reconciler compares the host's rules with Weft's.
pub const RECONCILE: Duration = Duration::from_secs(2);

/// kube-proxy's masquerade mark (`--masquerade-bit 14`): packets it already masquerades.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// The iptables nat chain.
pub const NAT_CHAIN: &str = "WEFT-POSTRTG";
/// The iptables filter chain.
pub const FWD_CHAIN: &str = "WEFT-FWD";
/// The nftables table (family `ip`).
pub const NFT_TABLE: &str = "weft";
/// The comment on every iptables rule.
pub const COMMENT: &str = "weft masq";

/// Where the tools are looked for when `PATH` is unset (a systemd unit and a container image
/// both set one with the `sbin` directories in it).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `[network] masq_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// iptables when installed, else nftables.
    #[default]
    Auto,
    /// `iptables` and `iptables-restore`.
    Iptables,
    /// `nft`.
    Nftables,
}

impl BackendChoice {
    /// Parses the config value.
    pub fn parse(s: &str) -> Option<BackendChoice> {
        match s {
            "auto" => Some(BackendChoice::Auto),
            "iptables" => Some(BackendChoice::Iptables),
            "nftables" => Some(BackendChoice::Nftables),
            _ => None,
        }
    }

    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Iptables => "iptables",
            BackendChoice::Nftables => "nftables",
        }
    }
}

/// The tool that writes the rules, with the paths found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// iptables (legacy or nf_tables, whichever the host's `iptables` is).
    Iptables {
        /// `iptables`.
        iptables: PathBuf,
        /// `iptables-restore`.
        restore: PathBuf,
    },
    /// nftables.
    Nftables {
        /// `nft`.
        nft: PathBuf,
    },
}

impl Backend {
    /// `iptables` or `nftables`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Iptables { .. } => "iptables",
            Backend::Nftables { .. } => "nftables",
        }
    }
}

/// Why the rules could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// No usable tool for the chosen backend.
    #[error("network.ip_masq needs {wanted}, not found in PATH; install it (Debian: apt-get install {package}) or set [network] ip_masq = false")]
    Missing {
        /// The tools looked for.
        wanted: &'static str,
        /// The Debian package that has them.
        package: &'static str,
    },
    /// A tool ran and failed.
    #[error("masquerade ({backend}): `{command}` failed: {message}")]
    Failed {
        /// `iptables` or `nftables`.
        backend: &'static str,
        /// The command line.
        command: String,
        /// Its stderr, or the spawn error.
        message: String,
    },
}

/// What the rules are about: the cluster network and this node's pod subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The cluster network (flannel's `Network`).
    pub cluster: Ipv4Net,
    /// This node's pod subnet.
    pub subnet: Ipv4Net,
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the tools for `choice`; `auto` prefers iptables (see the module docs).
pub fn detect(choice: BackendChoice) -> Result<Backend, MasqError> {
    let iptables = || match (find_tool("iptables"), find_tool("iptables-restore")) {
        (Some(iptables), Some(restore)) => Some(Backend::Iptables { iptables, restore }),
        _ => None,
    };
    let nft = || find_tool("nft").map(|nft| Backend::Nftables { nft });
    match choice {
        BackendChoice::Iptables => iptables().ok_or(MasqError::Missing {
            wanted: "iptables and iptables-restore",
            package: "iptables",
        }),
        BackendChoice::Nftables => nft().ok_or(MasqError::Missing {
            wanted: "nft",
            package: "nftables",
        }),
        BackendChoice::Auto => iptables().or_else(nft).ok_or(MasqError::Missing {
            wanted: "iptables (with iptables-restore) or nft",
            package: "iptables",
        }),
    }
}

/// The `iptables-restore --noflush` input that (re)writes both chains.
pub fn iptables_restore_input(r: &Rules) -> String {
    let (c, s) = (r.cluster, r.subnet);
    let mut out = String::new();
    out.push_str("*nat\n");
    let _ = writeln!(out, ":{NAT_CHAIN} - [0:0]");
    let nat_rules = [
        (format!("-m mark --mark {KUBE_PROXY_MARK}"), "RETURN"),
        (format!("-s {s} -d {c}"), "RETURN"),
        (format!("-s {c} -d {s}"), "RETURN"),
        (format!("! -s {c} -d {s}"), "RETURN"),
        (
            format!("-s {c} ! -d 224.0.0.0/4"),
            "MASQUERADE --random-fully",
        ),
        (format!("! -s {c} -d {c}"), "MASQUERADE --random-fully"),
    ];
    for (m, target) in &nat_rules {
        let _ = writeln!(
            out,
            "-A {NAT_CHAIN} {m} -m comment --comment \"{COMMENT}\" -j {target}"
        );
    }
    out.push_str("COMMIT\n*filter\n");
    let _ = writeln!(out, ":{FWD_CHAIN} - [0:0]");
    for m in [format!("-s {c}"), format!("-d {c}")] {
        let _ = writeln!(
            out,
            "-A {FWD_CHAIN} {m} -m comment --comment \"{COMMENT}\" -j ACCEPT"
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// The jumps into Weft's chains: (table, built-in chain, rule arguments after the chain).
fn iptables_jumps() -> [(&'static str, &'static str, [&'static str; 6]); 2] {
    [
        (
            "nat",
            "POSTROUTING",
            ["-m", "comment", "--comment", COMMENT, "-j", NAT_CHAIN],
        ),
        (
            "filter",
            "FORWARD",
            ["-m", "comment", "--comment", COMMENT, "-j", FWD_CHAIN],
        ),
    ]
}

/// The `nft -f -` input that replaces table `ip weft` in one transaction.
pub fn nft_input(r: &Rules) -> String {
    let (c, s) = (r.cluster, r.subnet);
    format!(
        "add table ip {NFT_TABLE}\n\
         delete table ip {NFT_TABLE}\n\
         table ip {NFT_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & 0x00004000 == 0x00004000 return\n\
         \t\tip saddr {s} ip daddr {c} return\n\
         \t\tip saddr {c} ip daddr {s} return\n\
         \t\tip saddr != {c} ip daddr {s} return\n\
         \t\tip saddr {c} ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t\tip saddr != {c} ip daddr {c} masquerade fully-random\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {c} accept\n\
         \t\tip daddr {c} accept\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `cmd`, feeding `stdin`; the stdout on success.
fn run(backend: &'static str, cmd: &mut Command, stdin: Option<&str>) -> Result<String, MasqError> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let fail = |message: String| MasqError::Failed {
        backend,
        command: line.clone(),
        message,
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| fail(format!("writing its input: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(fail(if err.is_empty() {
            out.status.to_string()
        } else {
            err
        }))
    }
}

fn iptables_cmd(iptables: &Path, table: &str) -> Command {
    let mut c = Command::new(iptables);
    c.args(["-w", "5", "-t", table]);
    c
}

/// Whether built-in chain `chain` of `table` has the jump `rule` (`iptables -C`).
fn jump_present(iptables: &Path, table: &str, chain: &str, rule: &[&str]) -> bool {
    let mut c = iptables_cmd(iptables, table);
    c.arg("-C").arg(chain).args(rule);
    run("iptables", &mut c, None).is_ok()
}

/// Writes the rules; idempotent. On a failure the chains written so far are removed again.
pub fn apply(backend: &Backend, r: &Rules) -> Result<(), MasqError> {
    match backend {
        Backend::Iptables { iptables, restore } => {
            let mut c = Command::new(restore);
            c.args(["-w", "5", "--noflush"]);
            run("iptables", &mut c, Some(&iptables_restore_input(r)))?;
            for (table, chain, rule) in iptables_jumps() {
                if !jump_present(iptables, table, chain, &rule) {
                    if let Err(e) = run(
                        "iptables",
                        iptables_cmd(iptables, table)
                            .args(["-I", chain, "1"])
                            .args(rule),
                        None,
                    ) {
                        remove(backend);
                        return Err(e);
                    }
                }
            }
            Ok(())
        }
        Backend::Nftables { nft } => {
            let mut c = Command::new(nft);
            c.args(["-f", "-"]);
            run("nftables", &mut c, Some(&nft_input(r))).map(drop)
        }
    }
}

/// What the host holds of Weft's rules now, in a form to compare with an earlier listing; a
/// missing chain, table or jump shows as a line saying so.
pub fn listing(backend: &Backend) -> String {
    let mut out = String::new();
    match backend {
        Backend::Iptables { iptables, .. } => {
            for (table, chain, rule) in iptables_jumps() {
                let own = rule[5];
                match run(
                    "iptables",
                    iptables_cmd(iptables, table).args(["-S", own]),
                    None,
                ) {
                    Ok(s) => out.push_str(&s),
                    Err(_) => {
                        let _ = writeln!(out, "missing chain {table} {own}");
                    }
                }
                let jump = jump_present(iptables, table, chain, &rule);
                let _ = writeln!(out, "jump {table} {chain} -> {own}: {jump}");
            }
        }
        Backend::Nftables { nft } => {
            match run(
                "nftables",
                Command::new(nft).args(["list", "table", "ip", NFT_TABLE]),
                None,
            ) {
                Ok(s) => out.push_str(&s),
                Err(_) => out.push_str("missing table ip weft\n"),
            }
        }
    }
    out
}

/// Removes Weft's rules from `backend`; what is not there is ignored.
pub fn remove(backend: &Backend) {
    match backend {
        Backend::Iptables { iptables, .. } => {
            for (table, chain, rule) in iptables_jumps() {
                // Every copy of the jump (an older run may have left more than one).
                for _ in 0..16 {
                    if run(
                        "iptables",
                        iptables_cmd(iptables, table)
                            .arg("-D")
                            .arg(chain)
                            .args(rule),
                        None,
                    )
                    .is_err()
                    {
                        break;
                    }
                }
                let own = rule[5];
                let _ = run(
                    "iptables",
                    iptables_cmd(iptables, table).args(["-F", own]),
                    None,
                );
                let _ = run(
                    "iptables",
                    iptables_cmd(iptables, table).args(["-X", own]),
                    None,
                );
            }
        }
        Backend::Nftables { nft } => {
            let _ = run(
                "nftables",
                Command::new(nft).args(["delete", "table", "ip", NFT_TABLE]),
                None,
            );
        }
    }
}

/// Removes what an earlier run with masquerade on may have left, with every tool installed
/// (`ip_masq = false` at start).
pub fn remove_leftovers() {
    for choice in [BackendChoice::Iptables, BackendChoice::Nftables] {
        if let Ok(b) = detect(choice) {
            remove(&b);
        }
    }
}

/// The running reconciler; dropping it (or [`Masq::stop`]) ends the thread, the rules stay.
#[derive(Debug)]
pub struct Masq {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    backend: Backend,
}

impl Masq {
    /// Applies the rules and starts reconciling them until stopped.
    pub fn start(backend: Backend, rules: Rules, metrics: Arc<Metrics>) -> Result<Masq, MasqError> {
        let stop = Arc::new(AtomicBool::new(false));
        apply(&backend, &rules)?;
        // The rules never change while the agent runs, so this listing is the target for good
        // (taking a new one after each repair would race with whoever changes the rules then).
        let want = listing(&backend);
        metrics.set_masq_enabled(true);
        tracing::info!(
            backend = backend.name(),
            cluster = %rules.cluster,
            subnet = %rules.subnet,
            "egress masquerade on: pod traffic leaving the cluster network leaves with the node's address"
        );
        let name = backend.name();
        let thread = {
            let backend = backend.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("weft-masq".into())
                .spawn(move || {
                    let mut next = Instant::now() + RECONCILE;
                    while !stop.load(Ordering::Relaxed) {
                        // Short sleeps, so a stop is seen within 100 ms.
                        std::thread::sleep(Duration::from_millis(100));
                        if Instant::now() < next {
                            continue;
                        }
                        next = Instant::now() + RECONCILE;
                        let have = listing(&backend);
                        if have == want {
                            continue;
                        }
                        tracing::warn!(
                            backend = backend.name(),
                            "masquerade rules changed on the host; re-applying"
                        );
                        match apply(&backend, &rules) {
                            Ok(()) => metrics.masq_repaired(),
                            Err(e) => tracing::error!("masquerade repair failed: {e}"),
                        }
                    }
                })
                .map_err(|e| MasqError::Failed {
                    backend: name,
                    command: "spawn weft-masq".into(),
                    message: e.to_string(),
                })?
        };
        Ok(Masq {
            stop,
            thread: Some(thread),
            backend,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Ends the reconciler (the rules stay).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Masq {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            cluster: "10.244.0.0/16".parse().expect("valid"),
            subnet: "10.244.1.0/24".parse().expect("valid"),
        }
    }

    #[test]
    fn iptables_rules_are_flannels() {
        let want = "*nat\n\
            :WEFT-POSTRTG - [0:0]\n\
            -A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"weft masq\" -j RETURN\n\
            -A WEFT-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment \"weft masq\" -j RETURN\n\
            -A WEFT-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment \"weft masq\" -j RETURN\n\
            -A WEFT-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment \"weft masq\" -j RETURN\n\
            -A WEFT-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"weft masq\" -j MASQUERADE --random-fully\n\
            -A WEFT-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"weft masq\" -j MASQUERADE --random-fully\n\
            COMMIT\n\
            *filter\n\
            :WEFT-FWD - [0:0]\n\
            -A WEFT-FWD -s 10.244.0.0/16 -m comment --comment \"weft masq\" -j ACCEPT\n\
            -A WEFT-FWD -d 10.244.0.0/16 -m comment --comment \"weft masq\" -j ACCEPT\n\
            COMMIT\n";
        assert_eq!(iptables_restore_input(&rules()), want);
    }

    #[test]
    fn nft_input_replaces_the_table_in_one_transaction() {
        let s = nft_input(&rules());
        assert!(s.starts_with("add table ip weft\ndelete table ip weft\ntable ip weft {\n"));
        assert!(s.contains("ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n"));
        assert!(
            s.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n")
        );
        assert!(s.contains("type nat hook postrouting priority srcnat; policy accept;"));
    }

    #[test]
    fn backend_choice_round_trips() {
        for c in [
            BackendChoice::Auto,
            BackendChoice::Iptables,
            BackendChoice::Nftables,
        ] {
            assert_eq!(BackendChoice::parse(c.name()), Some(c));
        }
        assert_eq!(BackendChoice::parse("ipfw"), None);
    }
}
