//! `weftctl`: asks a running `weftd` how its node is, over the agent's control socket.
//!
//! `weftctl status` is the one-screen health check (exit code 0 healthy, 1 not, for scripts and
//! monitoring); `weftctl show` prints the FIB, neighbour and FDB tables the way `ip route`,
//! `ip neigh` and `bridge fdb` print the kernel's (the same output as `weftd show`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use control::ctl::{request_show, request_status};

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
