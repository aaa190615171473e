//! The conversation between the plugin and the agent over the agent's CNI socket (a unix stream
//! socket, `/run/weft/cni.sock` by default).
//!
//! One request per connection:
//! 1. the plugin connects and writes the [`Request`] as one line of JSON;
//! 2. the agent writes [`ACK`] as soon as it accepted the connection, before any work, so a plugin
//!    can tell a hung agent from a busy one within [`ACK_TIMEOUT`];
//! 3. the agent writes the [`Reply`] as JSON and closes.
//!
//! The plugin gives the agent [`CONNECT_TIMEOUT`] + [`ACK_TIMEOUT`] (under a second together) to
//! show it is there, then [`REPLY_TIMEOUT`] to do the work; every failure to reach it is CNI
//! error 11 (try again later) with a message that says what to check.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::spec::{code, CniError, Invocation};

/// The agent's first bytes on every connection.
pub const ACK: &[u8] = b"weft-cni/1\n";
/// How long the plugin waits for the socket connection (a unix socket connects at once or fails
/// at once unless the agent's backlog is full).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// How long the plugin waits for [`ACK`] after connecting. The agent's accept thread writes it
/// before anything else, so only a stopped or hung agent (or a machine too loaded to schedule
/// one thread for most of a second) misses it.
pub const ACK_TIMEOUT: Duration = Duration::from_millis(700);
/// How long the plugin waits for the agent's reply once acknowledged.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request the agent reads (a conflist entry with a prevResult is a few KiB).
pub const MAX_REQUEST: u64 = 1 << 20;

/// What the plugin forwards: the environment and the network configuration as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The validated environment.
    pub env: Invocation,
    /// The network configuration from stdin, as parsed JSON.
    pub config: Value,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Success; ADD carries its result JSON (already in the configuration's version), the other
    /// verbs nothing.
    Ok(Option<Value>),
    /// A CNI error.
    Error(CniError),
}

fn unreachable(socket: &Path, what: String) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!("weftd is unreachable at {}: {what}", socket.display()),
    )
    .details(
        "check that weftd runs on this node (systemctl status weftd, or its pod), that [cni] enabled = true in its config, and that the \"socket\" of the CNI network config matches its [cni] socket",
    )
}

/// Sends `request` to the agent at `socket` and returns its reply.
pub fn call(socket: &Path, request: &Request) -> Result<Reply, CniError> {
    let addr = SockAddr::unix(socket)
        .map_err(|e| unreachable(socket, format!("not a usable socket path ({e})")))?;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| unreachable(socket, format!("cannot create a unix socket ({e})")))?;
    sock.connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::NotFound => "the socket file does not exist".to_string(),
            io::ErrorKind::ConnectionRefused => {
                "nothing listens on it (a stale socket of a stopped weftd?)".to_string()
            }
            io::ErrorKind::PermissionDenied => {
                "permission denied (the plugin runs as root under a container runtime)".to_string()
            }
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!(
                "connecting took longer than {} ms (agent overloaded or stopped?)",
                CONNECT_TIMEOUT.as_millis()
            ),
            _ => format!("connect failed: {e}"),
        };
        unreachable(socket, why)
    })?;
    let mut stream: std::os::unix::net::UnixStream = sock.into();
    let io_err = |stage: &str, e: io::Error| {
        let why = if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            format!("no {stage} within the time limit (weftd hung or stopped?)")
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            format!("the connection closed before the {stage} (did weftd crash or restart?)")
        } else {
            format!("{stage}: {e}")
        };
        unreachable(socket, why)
    };
    let mut line = serde_json::to_vec(request)
        .map_err(|e| CniError::new(code::INTERNAL, format!("cannot encode the request: {e}")))?;
    line.push(b'\n');
    stream
        .set_write_timeout(Some(ACK_TIMEOUT))
        .and_then(|()| stream.set_read_timeout(Some(ACK_TIMEOUT)))
        .map_err(|e| io_err("socket setup", e))?;
    stream
        .write_all(&line)
        .map_err(|e| io_err("request write", e))?;
    let mut ack = [0u8; ACK.len()];
    stream
        .read_exact(&mut ack)
        .map_err(|e| io_err("acknowledgement", e))?;
    if ack != ACK {
        return Err(unreachable(
            socket,
            "the socket answered, but not as a weftd CNI socket (is it the control socket?)"
                .to_string(),
        ));
    }
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| io_err("socket setup", e))?;
    let mut body = Vec::new();
    stream
        .read_to_end(&mut body)
        .map_err(|e| io_err("reply", e))?;
    if body.is_empty() {
        return Err(io_err(
            "reply",
            io::Error::from(io::ErrorKind::UnexpectedEof),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        CniError::new(
            code::INTERNAL,
            format!("weftd's reply is not valid JSON: {e}; are the plugin and weftd of the same version?"),
        )
    })
}

/// Agent side: writes [`ACK`], first thing after accepting.
pub fn acknowledge<W: Write>(stream: &mut W) -> io::Result<()> {
    stream.write_all(ACK)?;
    stream.flush()
}

/// Agent side: reads one request line from `stream` (at most [`MAX_REQUEST`] bytes). Decoding
/// errors come back as CNI errors to send as the reply.
pub fn read_request<S: Read>(stream: &mut S) -> io::Result<Result<Request, CniError>> {
    let mut line = Vec::new();
    BufReader::new(Read::by_ref(stream).take(MAX_REQUEST)).read_until(b'\n', &mut line)?;
    Ok(serde_json::from_slice::<Request>(&line).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("weftd could not decode the plugin's request: {e}; are the plugin and weftd of the same version?"),
        )
    }))
}

/// Agent side: writes the reply, in one write (serde_json writes token by token, which on an
/// unbuffered socket is a system call per token).
pub fn send_reply<W: Write>(stream: &mut W, reply: &Reply) -> io::Result<()> {
    let bytes = serde_json::to_vec(reply)?;
    stream.write_all(&bytes)?;
    stream.flush()
}
