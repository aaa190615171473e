//! `weftctl`: asks a running `weftd` how its node is, over the agent's control socket.
//!
//! `weftctl status` is the one-screen health check (exit code 0 healthy, 1 not, for scripts and
//! monitoring); `weftctl show` prints the FIB, neighbour and FDB tables the way `ip route`,
//! `ip neigh` and `bridge fdb` print the kernel's (the same output as `weftd show`);
//! `weftctl policy` explains what NetworkPolicy does with a flow, naming the deciding rule.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use control::ctl::{request_policy, request_show, request_status};

/// Inspect a running Weft agent (weftd) on this node.
#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about, long_about = None)]
struct Cli {
    /// The agent's control socket ([dataplane] control_socket).
    #[arg(long, global = true, default_value = control::config::DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Is this node healthy? Lease and subnet, datastore connection, peers, table sizes, drops by
    /// reason, MTU and backend on one screen.
    ///
    /// Exit code 0 when healthy: the subnet lease is held, the tables are programmed from the
    /// datastore, subnet.env is written and the datastore answers. 1 otherwise, including when
    /// no agent answers on the socket; the problems are listed.
    Status,
    /// The agent's FIB, neighbour and FDB tables (as `ip route`, `ip neigh` and `bridge fdb`
    /// print them) and its counters.
    Show,
    /// What this node's NetworkPolicy does with a new flow, and which policy rule decides it:
    /// egress at the source and ingress at the destination, where each is a pod of this node.
    ///
    /// Example: `weftctl policy 10.244.1.5 10.244.2.7 --protocol tcp --port 80`. Exit code 0
    /// when allowed, 1 when denied or on an error. Without addresses: where the policies come
    /// from, which NetworkPolicies are in force, and the connection table's figures.
    Policy {
        /// The flow's source address.
        #[arg(requires = "dst")]
        src: Option<std::net::Ipv4Addr>,
        /// The flow's destination address.
        dst: Option<std::net::Ipv4Addr>,
        /// tcp, udp, sctp, icmp, or an IP protocol number.
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// The destination port (ignored for protocols without ports).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Human-readable.
    Text,
    /// JSON, for scripts.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Status => status(&cli),
        Command::Show => show(&cli),
        Command::Policy {
            src,
            dst,
            ref protocol,
            port,
        } => policy(
            &cli,
            &control::policy::explain::PolicyQuery {
                src: src.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                dst: dst.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                protocol: protocol.clone(),
                port,
            },
            src.is_some(),
        ),
    }
}

fn print_json(v: &impl serde::Serialize) -> bool {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            true
        }
        Err(e) => {
            eprintln!("weftctl: {e}");
            false
        }
    }
}

fn status(cli: &Cli) -> ExitCode {
    match request_status(&cli.socket) {
        Ok(reply) => {
            let printed = match cli.output {
                Output::Text => {
                    print!("{}", reply.render());
                    true
                }
                Output::Json => print_json(&reply),
            };
            if reply.healthy && printed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            match cli.output {
                Output::Text => println!("weft: UNHEALTHY\n  problem: {e}"),
                Output::Json => {
                    print_json(&control::status::unreachable(e.to_string()));
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn show(cli: &Cli) -> ExitCode {
    match request_show(&cli.socket) {
        Ok(reply) => {
            let printed = match cli.output {
                Output::Text => {
                    print!("{}", reply.render());
                    true
                }
                Output::Json => print_json(&reply),
            };
            if printed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("weftctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn policy(cli: &Cli, q: &control::policy::explain::PolicyQuery, flow: bool) -> ExitCode {
    let reply = match request_policy(&cli.socket, q) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weftctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.output {
        Output::Json => {
            print_json(&reply);
        }
        Output::Text => {
            if let Some(e) = &reply.error {
                eprintln!("weftctl: {e}");
                return ExitCode::FAILURE;
            }
            if reply.enforced {
                let ct = reply.conntrack.clone().unwrap_or_default();
                println!(
                    "policy generation {} from {}: {} NetworkPolicies, {} isolated pods, {} rules; conntrack {} flows admitted, {} evicted, {} refused (capacity {})",
                    reply.generation, reply.source, reply.policies.len(), reply.isolated_pods, reply.rules, ct.inserted, ct.evicted, ct.refused, ct.capacity
                );
            }
            if !flow {
                if !reply.enforced {
                    println!("{}", reply.egress);
                }
                for p in &reply.policies {
                    println!("  {p}");
                }
                return ExitCode::SUCCESS;
            }
            println!(
                "{} -> {} {}/{}: {}",
                q.src,
                q.dst,
                q.protocol.to_ascii_uppercase(),
                q.port,
                if reply.allowed { "ALLOWED" } else { "DENIED" }
            );
            println!("  {}", reply.egress);
            if !reply.ingress.is_empty() {
                println!("  {}", reply.ingress);
            }
        }
    }
    if reply.allowed && reply.error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
