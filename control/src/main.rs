//! `weftd`, the Weft node agent.
//!
//! `weftd run` plumbs the node and runs the userspace VXLAN dataplane; `weftd demo` builds a
//! three-node cluster in network namespaces on this machine and shows it carrying traffic;
//! `weftd show` prints a running agent's tables and counters.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use control::config::{Config, Overrides};
use control::tooling::lab::Underlay;
use control::tooling::{bench_control, demo, harness};

/// Weft: a userspace pod-network dataplane, wire-compatible with flannel's VXLAN backend.
#[derive(Debug, Parser)]
#[command(name = "weftd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent: get this node's subnet and its peers from the datastore (the config
    /// file, etcd or Kubernetes, in flannel's formats), create the TUN device `weft.<vni>` and
    /// bridge `weft0`, carry pod traffic in VXLAN (UDP 8472), keep the peers current, write
    /// subnet.env, serve the `weft` CNI plugin on /run/weft/cni.sock (`[cni]`) and /healthz, /readyz
    /// and /metrics, until SIGTERM or Ctrl-C.
    ///
    /// Needs root (CAP_NET_ADMIN and CAP_NET_RAW) and /dev/net/tun. An invalid config exits
    /// with code 2 and names the field. See deploy/weftd.example.toml for every option; the
    /// flags below override the file.
    Run {
        /// The TOML configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Print the effective configuration (defaults filled in) and exit.
        #[arg(long)]
        print_config: bool,
        /// Datastore: static (the file's `[[peers]]`), etcd or kubernetes (datastore.type).
        #[arg(long, value_name = "TYPE")]
        datastore: Option<String>,
        /// etcd client URLs, comma-separated (datastore.etcd.endpoints).
        #[arg(long, value_name = "URLS", value_delimiter = ',')]
        etcd_endpoints: Option<Vec<String>>,
        /// etcd key prefix, flannel's --etcd-prefix (datastore.etcd.prefix).
        #[arg(long, value_name = "PREFIX")]
        etcd_prefix: Option<String>,
        /// Where to write flannel's subnet.env (datastore.subnet_file).
        #[arg(long, value_name = "FILE")]
        subnet_file: Option<PathBuf>,
        /// kubeconfig for the Kubernetes datastore (datastore.kubernetes.kubeconfig).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Health and metrics address, or "off" (health.listen).
        #[arg(long, value_name = "ADDR:PORT")]
        health_listen: Option<String>,
        /// This node's name (node.name); in a DaemonSet, NODE_NAME from the downward API's
        /// spec.nodeName, as flannel's.
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node_name: Option<String>,
        /// Masquerade pod traffic leaving the cluster network, true or false (network.ip_masq,
        /// default true; flannel's --ip-masq).
        #[arg(long, value_name = "BOOL")]
        ip_masq: Option<bool>,
    },
    /// Install the `weft` CNI plugin into the runtime's plugin directory and the network
    /// configuration list into its config directory, as the DaemonSet's init container does.
    ///
    /// Each file is written to a temporary file beside it and renamed into place (a runtime
    /// never sees half a file; replacing a running plugin is safe); a file already identical is
    /// left alone, so running it again changes nothing. The conflist is checked as a CNI network
    /// configuration list first, and the plugin goes in before the conflist. Config files that
    /// sort before ours in the config directory are reported: the runtime would use them
    /// instead.
    InstallCni {
        /// The plugin binary to install [default: `weft` beside this weftd].
        #[arg(long, value_name = "FILE")]
        plugin: Option<PathBuf>,
        /// The conflist to install as 10-weft.conflist [default: the built-in copy of
        /// deploy/10-weft.conflist, for switch mode: weft (which takes the bandwidth capability)
        /// + portmap, socket /run/weft/cni.sock].
        #[arg(long, value_name = "FILE")]
        conflist: Option<PathBuf>,
        /// Install the built-in list for bridge mode (`pod_ports = "bridge"`) instead:
        /// deploy/10-weft-bridge.conflist, weft + portmap + the bandwidth plugin.
        #[arg(long, conflicts_with = "conflist")]
        bridge: bool,
        /// The runtime's CNI plugin directory.
        #[arg(long, value_name = "DIR", default_value = control::install_cni::DEFAULT_BIN_DIR)]
        bin_dir: PathBuf,
        /// The runtime's CNI network configuration directory.
        #[arg(long, value_name = "DIR", default_value = control::install_cni::DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
    },
    /// Build a 3-node cluster in network namespaces on this machine, run an agent per node, ping
    /// and move TCP pod to pod across nodes, print each node's tables and counters, and remove
    /// everything again (also on Ctrl-C). Needs root; no external services.
    Demo {
        /// Seconds of TCP throughput test per direction.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Leave the namespaces and agents running at the end (remove them with Ctrl-C).
        #[arg(long)]
        keep: bool,
    },
    /// Benchmark harness: kernel VXLAN (flannel layout), kernel routing (host-gw), Weft VXLAN,
    /// Weft IP-in-IP and Weft host-gw on the same two-node namespace topology, measured in
    /// alternation: single-stream and
    /// 4-stream TCP and 1400-byte UDP packets/s (iperf3; without it, single-stream TCP from the
    /// built-in generator), ping RTT p50/p99 and Weft's CPU seconds per GB, with ratios to kernel
    /// VXLAN. Needs root; about 4 minutes with the defaults.
    Bench {
        /// Rounds; every round measures every variant once.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per measurement (single-stream TCP, multi-stream TCP, UDP) per variant and
        /// round.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Pings per variant and round.
        #[arg(long, default_value_t = 100)]
        pings: usize,
        /// Use the built-in TCP generator even when iperf3 is installed.
        #[arg(long)]
        builtin: bool,
        /// Worker threads per Weft agent (0 = one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Weft workers keep polling this many microseconds after traffic before sleeping
        /// (`[dataplane] busy_poll_us`; 0 always sleeps).
        #[arg(long, default_value_t = control::config::DEFAULT_BUSY_POLL_US)]
        busy_poll_us: u32,
        /// Hold a PM QoS CPU wakeup latency request of this many microseconds for the whole
        /// run (`/dev/cpu_dma_latency`, as `[dataplane] cpu_wakeup_latency_us` does for an agent;
        /// system-wide, so every variant runs under it, kernel VXLAN included). 0 keeps idle
        /// CPUs polling: a woken worker then runs without the idle-exit delay.
        #[arg(long)]
        cpu_wakeup_latency_us: Option<u32>,
        /// Weft without UDP GSO trains on send (`[dataplane] gso = false`).
        #[arg(long)]
        no_gso: bool,
        /// Weft without UDP GRO on receive (`[dataplane] gro = false`).
        #[arg(long)]
        no_gro: bool,
        /// Weft without TUN offloads: one packet per TUN read and write (`[dataplane] offload =
        /// false`).
        #[arg(long)]
        no_tun_offload: bool,
        /// How the lab's underlay carries large packets: `ideal` passes 64 KiB GSO packets whole
        /// between nodes (the kernel's cheapest case); `segmenting` behaves like NICs and a
        /// switch, with MTU frames between nodes and GRO on receive (needs ethtool).
        #[arg(long, value_enum, default_value_t = Underlay::Ideal)]
        underlay: Underlay,
        /// Measure only these variants beside the kernel VXLAN reference (comma-separated:
        /// kernel-host-gw, weft-vxlan, weft-vxlan-switch,
        /// weft-vxlan-switch-policy (1000 NetworkPolicy rules per direction), weft-ipip, weft-host-gw,
        /// same-node-bridge, same-node-switch); all when not given.
        #[arg(long, value_name = "LIST", value_delimiter = ',')]
        variants: Vec<String>,
        /// Also run every Weft variant with this other weftd binary (an older build, say),
        /// alternating with this one round by round, and print this binary / baseline ratios.
        #[arg(long, value_name = "WEFTD")]
        baseline: Option<PathBuf>,
    },
    /// Control-plane benchmarks: a real etcd holding `--leases` flannel leases and a `weftd run`
    /// agent on it in a lab namespace (start to ready, resident memory), then `--changes` lease
    /// changes timed until a watching node's FIB has them (p50/p99). Prints figures; needs root;
    /// about 30 s with the defaults.
    BenchControl {
        /// Leases in etcd (peers of the agent).
        #[arg(long, default_value_t = 5000)]
        leases: usize,
        /// Lease changes to time (puts and deletes in turn).
        #[arg(long, default_value_t = 200)]
        changes: usize,
    },
    /// Print a running agent's FIB, neighbour and FDB tables (as `ip route`, `ip neigh` and
    /// `bridge fdb` print them) and its counters, read over the agent's control socket.
    Show {
        /// The agent's control socket.
        #[arg(long, default_value = control::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Human-readable, like iproute2.
    Text,
    /// JSON, for scripts.
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            print_config,
            datastore,
            etcd_endpoints,
            etcd_prefix,
            subnet_file,
            kubeconfig,
            health_listen,
            node_name,
            ip_masq,
        } => {
            let overrides = Overrides {
                datastore,
                etcd_endpoints,
                etcd_prefix,
                subnet_file,
                health_listen,
                kubeconfig,
                node_name,
                ip_masq,
            };
            let cfg = match Config::load_with(&config, &overrides) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("weftd: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            if print_config {
                print!("{}", cfg.to_toml_string());
                return ExitCode::SUCCESS;
            }
            report(run(&cfg))
        }
        Command::InstallCni {
            plugin,
            conflist,
            bridge,
            bin_dir,
            conf_dir,
        } => report(install_cni(control::install_cni::InstallPlan {
            plugin: plugin.unwrap_or_else(control::install_cni::default_plugin),
            conflist,
            bridge,
            bin_dir,
            conf_dir,
        })),
        Command::Demo { seconds, keep } => report(demo::run(seconds, keep)),
        Command::Bench {
            rounds,
            seconds,
            pings,
            builtin,
            workers,
            busy_poll_us,
            cpu_wakeup_latency_us,
            no_gso,
            no_gro,
            no_tun_offload,
            underlay,
            variants,
            baseline,
        } => report(harness::run(
            rounds,
            seconds,
            pings,
            harness::LabKnobs {
                builtin,
                underlay,
                cpu_wakeup_latency_us,
            },
            &harness::WeftKnobs {
                workers,
                busy_poll_us,
                gso: !no_gso,
                gro: !no_gro,
                tun_offload: !no_tun_offload,
            },
            &variants,
            baseline.as_deref(),
        )),
        Command::BenchControl { leases, changes } => report(bench_control::run(leases, changes)),
        Command::Show { socket, output } => match control::ctl::request_show(&socket) {
            Ok(reply) => {
                match output {
                    Output::Text => print!("{}", reply.render()),
                    Output::Json => match serde_json::to_string_pretty(&reply) {
                        Ok(s) => println!("{s}"),
                        Err(e) => return report(Err(e.into())),
                    },
                }
                ExitCode::SUCCESS
            }
            Err(e) => report(Err(e.into())),
        },
    }
}

fn install_cni(plan: control::install_cni::InstallPlan) -> anyhow::Result<()> {
    use control::install_cni::Outcome;
    let r = control::install_cni::install(&plan)?;
    for (path, outcome) in [&r.plugin, &r.conflist] {
        let what = match outcome {
            Outcome::Installed => "installed",
            Outcome::Unchanged => "unchanged",
        };
        println!("{what} {}", path.display());
    }
    for p in &r.shadowing {
        eprintln!(
            "weftd: warning: {} sorts before {} and the runtime uses the first config file it \
             finds: remove it (a previous CNI's config?) or pods will not use weft",
            p.display(),
            r.conflist.0.display()
        );
    }
    Ok(())
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT. Signals are watched from the start, so they also end
/// start-up waits (for etcd, the network config, the Node's podCIDR).
fn run(cfg: &Config) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = {
        let _guard = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let watcher = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("weft-signals".into())
            .spawn(move || {
                let (mut term, mut int) = signals;
                rt.block_on(async {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                    }
                });
                stop.store(true, Ordering::Relaxed);
            })?
    };
    let agent = match control::agent::Agent::start_with_stop(cfg, stop.clone()) {
        Ok(agent) => agent,
        // SIGTERM while waiting for the datastore: a clean stop, nothing was plumbed yet.
        Err(e) if stop.load(Ordering::Relaxed) => {
            tracing::info!("stopped during start-up ({e})");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let _ = watcher.join();
    agent.stop();
    tracing::info!("stopped");
    Ok(())
}
