//! Packet captures inside a namespace, decoded by an independent decoder: `tshark` (Wireshark's
//! dissectors, not Weft's wire code) captures on an interface with a capture filter into a file,
//! and decodes it afterwards into [`Packet`] records: the outer IPv4 header and, for IP-in-IP and
//! VXLAN, the inner one.
//!
//! ```no_run
//! # use netns_tests::capture::Capture;
//! # fn f(ns: &control::netns::NetNs, dir: &std::path::Path) {
//! let cap = Capture::start(ns, "ul0", "ip proto 4 or udp port 8472", &dir.join("ul0.pcapng"))
//!     .expect("tshark");
//! // ... traffic ...
//! let packets = cap.stop().expect("decode");
//! # }
//! ```

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use control::netns::{spawn_in_netns, NetNs};

/// The decoder and capturer; `.ci/run` installs it (Debian package `tshark`).
pub const TSHARK: &str = "tshark";

/// Bytes kept of each frame: enough for the outer and inner headers of either tunnel.
const SNAPLEN: &str = "256";

/// How long `tshark` may take to start capturing.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One IPv4 header as the decoder read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number (1 ICMP, 4 IP-in-IP, 6 TCP, 17 UDP).
    pub protocol: u8,
}

/// How a captured packet was encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// A plain IPv4 packet (its IP header is the only one, or ICMP quoting another).
    None,
    /// IPv4 directly inside IPv4 (protocol 4, RFC 2003).
    Ipip,
    /// VXLAN over UDP 8472, with this VNI.
    Vxlan {
        /// The VXLAN network identifier.
        vni: u32,
    },
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Frame number in the capture (1-based).
    pub number: u64,
    /// The outermost IPv4 header.
    pub outer: IpHeader,
    /// The outer UDP destination port, when the outer protocol is UDP.
    pub udp_dst: Option<u16>,
    /// Tunnel, if any.
    pub encap: Encap,
    /// The tunnelled IPv4 header ([`Encap::Ipip`] and [`Encap::Vxlan`] only).
    pub inner: Option<IpHeader>,
    /// tshark's protocol chain, e.g. `eth:ethertype:ip:ip:icmp:data`.
    pub protocols: String,
}

impl Packet {
    /// The header of the packet the pods exchanged: the inner one of a tunnel, else the outer.
    pub fn pod_header(&self) -> IpHeader {
        self.inner.unwrap_or(self.outer)
    }
}

/// A running capture. Dropping it kills `tshark`; [`Capture::stop`] ends it cleanly and decodes.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    what: String,
    stderr: mpsc::Receiver<String>,
}

impl Capture {
    /// Starts `tshark` on `iface` inside `ns` with capture (BPF) filter `filter`, writing to
    /// `file`, and returns once the capture is running: after dumpcap has opened the interface
    /// and the file, so traffic sent afterwards is captured.
    pub fn start(ns: &NetNs, iface: &str, filter: &str, file: &Path) -> std::io::Result<Capture> {
        let what = format!("tshark on {iface} in {}", ns.name());
        let mut cmd = Command::new(TSHARK);
        cmd.args(["-n", "-i", iface, "-s", SNAPLEN, "-f", filter, "-w"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_in_netns(&mut cmd, ns).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{what}: cannot run {TSHARK} ({e}); install Debian's tshark (.ci/run does)"
                ),
            )
        })?;
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            // Drains tshark's stderr for its whole life (a full pipe would stall it).
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut cap = Capture {
            child: Some(child),
            file: file.to_path_buf(),
            what,
            stderr: rx,
        };
        cap.wait_started()?;
        Ok(cap)
    }

    /// Waits for tshark 4's "Capture started." (dumpcap reports it once the interface and the
    /// file are open). "Capturing on ..." alone comes too early: packets sent right after it are
    /// sometimes missed. An older tshark without the message gets a second after "Capturing on".
    fn wait_started(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        let mut capturing_since: Option<Instant> = None;
        loop {
            match self.stderr.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if line.contains("Capture started") {
                        return Ok(());
                    }
                    if line.contains("Capturing on") {
                        capturing_since = Some(Instant::now());
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    return Err(std::io::Error::other(format!(
                        "{}: exited before capturing ({status:?}): {}",
                        self.what,
                        seen.join(" | ")
                    )));
                }
            }
            if capturing_since.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{}: not capturing after {START_TIMEOUT:?}: {}",
                    self.what,
                    seen.join(" | ")
                )));
            }
        }
    }

    /// Stops the capture (SIGINT, so tshark writes out what it holds) and decodes the file.
    pub fn stop(mut self) -> std::io::Result<Vec<Packet>> {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                control::sys::kill(pid, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(std::io::Error::other(format!(
                        "{}: did not stop within 10 s of SIGINT",
                        self.what
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        decode(&self.file)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Decodes a capture file with tshark: IPv4 frames only, UDP 8472 as VXLAN (tshark's default
/// VXLAN port is 4789).
pub fn decode(file: &Path) -> std::io::Result<Vec<Packet>> {
    let out = Command::new(TSHARK)
        .arg("-n")
        .arg("-r")
        .arg(file)
        .args(["-d", "udp.port==8472,vxlan", "-Y", "ip", "-T", "fields"])
        .args([
            "-E",
            "separator=/t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ])
        .args([
            "-e",
            "frame.number",
            "-e",
            "frame.protocols",
            "-e",
            "ip.src",
        ])
        .args([
            "-e",
            "ip.dst",
            "-e",
            "ip.proto",
            "-e",
            "udp.dstport",
            "-e",
            "vxlan.vni",
        ])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "tshark -r {}: {}: {}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            parse_line(l).ok_or_else(|| {
                std::io::Error::other(format!("tshark -r {}: cannot read {l:?}", file.display()))
            })
        })
        .collect()
}

/// One line of the `-T fields` output of [`decode`].
fn parse_line(line: &str) -> Option<Packet> {
    let f: Vec<&str> = line.split('\t').collect();
    let list = |i: usize| -> Vec<&str> {
        f.get(i)
            .map(|s| s.split(',').filter(|x| !x.is_empty()).collect())
            .unwrap_or_default()
    };
    let number = f.first()?.parse().ok()?;
    let protocols = f.get(1)?.to_string();
    let (src, dst, proto) = (list(2), list(3), list(4));
    let header = |k: usize| -> Option<IpHeader> {
        Some(IpHeader {
            src: src.get(k)?.parse().ok()?,
            dst: dst.get(k)?.parse().ok()?,
            protocol: proto.get(k)?.parse().ok()?,
        })
    };
    let outer = header(0)?;
    // The chain after the outer IP header says whether a second IP header is a tunnelled packet
    // or, say, the datagram an ICMP error quotes.
    let after = protocols.split_once(":ip:").map_or("", |(_, rest)| rest);
    let vni = list(6).first().and_then(|v| v.parse().ok());
    let encap = if after.starts_with("ip") && outer.protocol == 4 {
        Encap::Ipip
    } else if after.starts_with("udp:vxlan") {
        Encap::Vxlan { vni: vni? }
    } else {
        Encap::None
    };
    let inner = match encap {
        Encap::None => None,
        Encap::Ipip | Encap::Vxlan { .. } => header(1),
    };
    let udp_dst = if outer.protocol == 17 {
        list(5).first().and_then(|p| p.parse().ok())
    } else {
        None
    };
    Some(Packet {
        number,
        outer,
        udp_dst,
        encap,
        inner,
        protocols,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ipip_vxlan_plain_and_icmp_error_lines() {
        let ipip = parse_line(
            "3\teth:ethertype:ip:ip:icmp:data\t192.168.77.1,10.244.1.2\t192.168.78.3,10.244.3.2\t4,1\t\t",
        )
        .expect("ipip");
        assert_eq!(ipip.encap, Encap::Ipip);
        assert_eq!(ipip.outer.protocol, 4);
        let inner = ipip.inner.expect("inner");
        assert_eq!(inner.src, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(inner.dst, Ipv4Addr::new(10, 244, 3, 2));
        assert_eq!(inner.protocol, 1);

        let vx = parse_line(
            "7\teth:ethertype:ip:udp:vxlan:eth:ethertype:ip:tcp\t192.168.77.1,10.244.1.2\t192.168.77.2,10.244.2.2\t17,6\t8472\t1",
        )
        .expect("vxlan");
        assert_eq!(vx.encap, Encap::Vxlan { vni: 1 });
        assert_eq!(vx.udp_dst, Some(8472));
        assert_eq!(vx.pod_header().protocol, 6);

        let plain =
            parse_line("9\teth:ethertype:ip:tcp\t10.244.1.2\t10.244.2.2\t6\t\t").expect("plain");
        assert_eq!(plain.encap, Encap::None);
        assert_eq!(plain.inner, None);
        assert_eq!(plain.pod_header(), plain.outer);

        let err = parse_line(
            "11\teth:ethertype:ip:icmp:ip:udp\t192.168.77.2,192.168.77.1\t192.168.77.1,192.168.77.2\t1,17\t,5000\t",
        )
        .expect("icmp error");
        assert_eq!(err.encap, Encap::None);
        assert_eq!(err.udp_dst, None);
    }
}
