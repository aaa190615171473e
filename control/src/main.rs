//! `weftd`, the Weft node agent.
//!
//! `weftd run` plumbs the node and runs the userspace VXLAN dataplane; `weftd demo` builds a
//! three-node cluster in network namespaces on this machine and shows it carrying traffic;
//! `weftd show` prints a running agent's tables and counters.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

mod demo;
mod harness;

use clap::{Parser, Subcommand, ValueEnum};
use control::config::Config;

/// Weft: a userspace pod-network dataplane, wire-compatible with flannel's VXLAN backend.
#[derive(Debug, Parser)]
#[command(name = "weftd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent: create the TUN device `weft.<vni>` and bridge `weft0`, program the
    /// peers from the config, serve the `weft` CNI plugin on /run/weft/cni.sock ([cni]), and
    /// carry pod traffic in VXLAN (UDP 8472) until SIGTERM or Ctrl-C.
    ///
    /// Needs root (CAP_NET_ADMIN and CAP_NET_RAW) and /dev/net/tun. An invalid config exits
    /// with code 2 and names the field. See deploy/weftd.example.toml for every option.
    Run {
        /// The TOML configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Print the effective configuration (defaults filled in) and exit.
        #[arg(long)]
        print_config: bool,
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
    /// Benchmark harness: kernel VXLAN (flannel layout), kernel routing (host-gw) and Weft VXLAN
    /// on the same two-node namespace topology, measured in alternation: single-stream TCP
    /// (iperf3 when installed), ping RTT p50/p99 and Weft's CPU seconds per GB, with ratios to
    /// kernel VXLAN. Needs root; about 2 minutes with the defaults.
    Bench {
        /// Rounds; every round measures every variant once.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds of TCP per variant and round.
        #[arg(long, default_value_t = 4)]
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
        } => {
            let cfg = match Config::load(&config) {
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
        Command::Demo { seconds, keep } => report(demo::run(seconds, keep)),
        Command::Bench {
            rounds,
            seconds,
            pings,
            builtin,
            workers,
        } => report(harness::run(rounds, seconds, pings, builtin, workers)),
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

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
fn run(cfg: &Config) -> anyhow::Result<()> {
    let agent = control::agent::Agent::start(cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        anyhow::Ok(())
    })?;
    agent.stop();
    tracing::info!("stopped");
    Ok(())
}
