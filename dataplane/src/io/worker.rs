//! The worker loop: one thread per core, each with its own TUN queue, VXLAN socket and raw
//! sender, running packets through [`forward`] and carrying out the verdicts.
//!
//! A worker shares nothing on the hot path: it loads the published snapshot once per wakeup (one
//! atomic load), reads the clock once per wakeup, counts into its own
//! [`Counters`], and copies them into its slot of [`WorkerShared::stats`] at most every
//! [`STATS_INTERVAL`] (one uncontended lock per interval, never per packet; habit 11). All
//! buffers are allocated before the loop starts.
//!
//! Per wakeup it drains up to `batch` packets from the TUN queue (one `read(2)` each: a TUN
//! without vnet headers has no batch read) and up to `batch` datagrams from the VXLAN socket (one
//! `recvmmsg(2)`). Each batch's underlay transmits are sent at its end: VXLAN through the
//! [`VxlanSender`], where a flow's run of equal-sized segments becomes one UDP GSO train, the
//! rest through the raw socket, each with one `sendmmsg(2)`; deliveries to the TUN are written at
//! once. A datagram the kernel merged (UDP GRO) is cut into its VXLAN packets in place.
//! `epoll_wait(2)` on the worker's sources (TUN queue, underlay socket, waker, its socket of each
//! pod port) waits at most [`POLL_TIMEOUT_MS`] when all are idle, so a stop request is seen within
//! that time; a source that filled its batch is read again next turn without waiting, beside
//! whatever else the set reports ready then.
//!
//! **Offloads.** On a TUN queue with virtio-net headers ([`TunQueue::vnet_hdr`]) a read brings a
//! TCP super-frame of up to 64 KiB into a buffer of [`WorkerConfig::tun_read_size`]; it is cut
//! into MSS-sized segments ([`Ipv4Segments`]) straight into the per-packet slots at [`HEADROOM`],
//! and each segment goes through [`forward`] and the batch's `sendmmsg(2)` like any packet (when
//! the slots run out mid-frame the batch is sent and the slots reused). A plain packet whose
//! checksum the kernel left partial is completed first. On the way in, the inner TCP segments of
//! one `recvmmsg(2)` batch that belong together are merged by a [`Coalescer`] and written to the
//! TUN as one GSO super-frame (with [`WorkerConfig::coalesce`]); everything else is written singly
//! behind an all-zero header, in the order it arrived. Counters still count inner packets.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;

use super::batch::{RecvBatch, SendReport};
use super::ipip::IpipSocket;
use super::packet::{PacketPort, PLAIN};
use super::raw::RawSender;
use super::tun::TunQueue;
use super::udp::{Datagram, VxlanSender, VxlanSocket};
use super::{clock, sys, Slots};
use crate::drop::{Counters, DropReason};
use crate::forward::{
    forward, ipip_super_frame, plan_super_frame, Action, Encap, Ingress, IpipMerged,
    SuperFramePlan, Verdict, HEADROOM, VXLAN_UDP_PAYLOAD_OFFSET,
};
use crate::offload::{
    complete_checksum, Coalescer, GatherCoalescer, Gso, Ipv4Segments, Push, VnetRepr, MAX_HDR_LEN,
    SUPER_FRAME_BUF, VNET_HDR_LEN,
};
use crate::police::PortLimits;
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::time::{Duration, Instant};
use crate::wire::ipv4::Ipv4Packet;
use crate::PortId;

/// How long an idle worker waits in `epoll_wait(2)` before looking at its stop flag again.
pub const POLL_TIMEOUT_MS: i32 = 100;

/// A worker's epoll tokens: its TUN queue, its underlay socket, its waker, then its pod sockets
/// (`FIRST_POD_TOKEN + i` for the i-th of [`PodPorts::received_by`]).
const TUN_TOKEN: u64 = 0;
const UNDERLAY_TOKEN: u64 = 1;
const WAKER_TOKEN: u64 = 2;
const FIRST_POD_TOKEN: u64 = 3;

/// Which of a worker's sources to read this turn.
#[derive(Debug, Default, Clone)]
struct Ready {
    tun: bool,
    underlay: bool,
    /// One flag per pod socket the worker receives from, in [`PodPorts::received_by`] order.
    pods: Vec<bool>,
    /// Some flag in `pods` is set.
    any_pod: bool,
}

impl Ready {
    /// All clear, for `pods` pod sockets.
    fn reset(&mut self, pods: usize) {
        self.pods.clear();
        self.pods.resize(pods, false);
        self.clear();
    }

    fn clear(&mut self) {
        self.tun = false;
        self.underlay = false;
        if self.any_pod {
            self.pods.fill(false);
        }
        self.any_pod = false;
    }

    fn set(&mut self, token: u64) {
        match token {
            TUN_TOKEN => self.tun = true,
            UNDERLAY_TOKEN => self.underlay = true,
            t => {
                let slot = t
                    .checked_sub(FIRST_POD_TOKEN)
                    .and_then(|i| usize::try_from(i).ok());
                if let Some(i) = slot {
                    self.mark_pod(i);
                }
            }
        }
    }

    /// Sets pod socket `i`'s flag, keeping `any_pod` true to it.
    fn mark_pod(&mut self, i: usize) {
        if let Some(f) = self.pods.get_mut(i) {
            *f = true;
            self.any_pod = true;
        }
    }

    fn any(&self) -> bool {
        self.tun || self.underlay || self.any_pod
    }
}

/// How often at most a worker copies its counters out.
pub const STATS_INTERVAL: Duration = Duration::from_millis(50);

/// Outer IPv4 and UDP header bytes in front of a datagram's payload, which the VXLAN socket does
/// not see; added to `rx_underlay` bytes so they count from the outer IPv4 header like
/// `tx_underlay` (outer IPv4 options, which tunnels do not use, are not counted).
const OUTER_IPV4_UDP_LEN: usize = 20 + 8;

/// A worker's tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Packets read from each source per wakeup, and datagrams per `recvmmsg(2)`.
    pub batch: usize,
    /// Bytes per packet buffer, headroom included: [`HEADROOM`] + the largest packet (a jumbo
    /// 9216 by default, so any sane MTU fits).
    pub slot_size: usize,
    /// Bytes of the buffer one TUN read lands in when the queue has offloads: a virtio-net header
    /// and a 64 KiB super-frame ([`SUPER_FRAME_BUF`]). Unused on a plain queue.
    pub tun_read_size: usize,
    /// Merge decapsulated TCP segments into super-frames for the TUN when the queue has
    /// offloads. Off, each packet is written singly behind an all-zero header. (Whether the
    /// kernel hands us super-frames is chosen when the TUN is created:
    /// [`TunOffload`](super::tun::TunOffload).)
    pub coalesce: bool,
    /// Ask the kernel to merge each flow's VXLAN datagrams (`UDP_GRO`); the receive slots then
    /// hold [`GRO_SLOT_PAYLOAD`] bytes each. Falls back to plain receives where the kernel
    /// refuses it.
    pub gro: bool,
    /// Slots for packets read from the TUN queue (segments of super-frames included): what one
    /// `sendmmsg(2)` can carry at most.
    pub tun_slots: usize,
    /// After a wakeup that moved packets, keep looking (`epoll_wait(2)` with a zero timeout, yielding the CPU
    /// in between) this long before sleeping again: a reply that comes back within it (a ping's,
    /// a request's) is picked up without the scheduler's wakeup latency. Zero: always sleep.
    pub spin: Duration,
}

/// Receive slot payload room with `UDP_GRO`: the largest merged datagram.
pub const GRO_SLOT_PAYLOAD: usize = 65_536;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch: 64,
            slot_size: HEADROOM + 9216,
            tun_read_size: SUPER_FRAME_BUF,
            coalesce: true,
            gro: true,
            tun_slots: 256,
            spin: Duration::from_micros(200),
        }
    }
}

impl WorkerConfig {
    fn validate(&self) -> io::Result<()> {
        if self.batch == 0
            || self.tun_slots == 0
            || self.slot_size <= HEADROOM
            || self.tun_read_size <= VNET_HDR_LEN
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "worker batch and tun_slots must be > 0, slot_size > {HEADROOM} and \
                     tun_read_size > {VNET_HDR_LEN}, got {self:?}"
                ),
            ));
        }
        Ok(())
    }
}

/// The pod ports (switch mode) by port id: what the workers receive from and send to, published
/// like a snapshot. A port with one socket per worker ([`PacketPort::open_steered`]) is received
/// from by every worker, each on its own socket, the kernel steering by flow; a port with one
/// socket is received from by one worker only, [`PodPorts::owner`]. Any worker sends to it.
#[derive(Debug, Clone, Default)]
pub struct PodPorts {
    ports: Vec<Option<PodPort>>,
}

/// One pod port: its socket and its bandwidth limits, if the pod has any.
#[derive(Debug, Clone)]
struct PodPort {
    sock: Arc<PacketPort>,
    limits: Option<Arc<PortLimits>>,
}

impl PodPorts {
    /// No pod ports.
    pub fn new() -> Self {
        PodPorts::default()
    }

    /// The socket of port `id`.
    pub fn get(&self, id: PortId) -> Option<&Arc<PacketPort>> {
        Some(&self.ports.get(usize::from(id.0))?.as_ref()?.sock)
    }

    /// The bandwidth limits of port `id`, when it has any.
    pub fn limits(&self, id: PortId) -> Option<&Arc<PortLimits>> {
        self.ports.get(usize::from(id.0))?.as_ref()?.limits.as_ref()
    }

    /// Sets port `id`'s socket, with no bandwidth limits.
    pub fn insert(&mut self, id: PortId, port: Arc<PacketPort>) {
        self.insert_limited(id, port, None);
    }

    /// Sets port `id`'s socket and its bandwidth limits.
    pub fn insert_limited(
        &mut self,
        id: PortId,
        port: Arc<PacketPort>,
        limits: Option<Arc<PortLimits>>,
    ) {
        let i = usize::from(id.0);
        if self.ports.len() <= i {
            self.ports.resize(i + 1, None);
        }
        self.ports[i] = Some(PodPort { sock: port, limits });
    }

    /// Removes port `id`; its socket closes when the last worker lets go of it.
    pub fn remove(&mut self, id: PortId) -> Option<Arc<PacketPort>> {
        self.ports
            .get_mut(usize::from(id.0))
            .and_then(Option::take)
            .map(|p| p.sock)
    }

    /// The ports, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (PortId, &Arc<PacketPort>)> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((PortId(i as u16), &p.as_ref()?.sock)))
    }

    /// How many ports there are.
    pub fn len(&self) -> usize {
        self.ports.iter().flatten().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The worker (of `workers`) that receives from port `id` when the port has one socket:
    /// spread by id, so one pod's flows stay on one worker.
    pub fn owner(id: PortId, workers: usize) -> usize {
        usize::from(id.0) % workers.max(1)
    }

    /// What worker `worker` of `workers` receives from: every steered port (one socket per
    /// worker) on its own socket, and the single-socket ports it owns ([`PodPorts::owner`]).
    pub fn received_by(&self, worker: usize, workers: usize) -> Vec<PodRx> {
        self.iter()
            .filter_map(|(id, p)| {
                let socket = if workers > 1 && p.receivers() == workers {
                    worker
                } else if PodPorts::owner(id, workers) == worker {
                    0
                } else {
                    return None;
                };
                Some(PodRx {
                    id,
                    port: Arc::clone(p),
                    socket,
                })
            })
            .collect()
    }
}

/// A pod port as one worker receives from it: the port and which of its sockets is the worker's.
#[derive(Debug, Clone)]
pub struct PodRx {
    /// The port.
    pub id: PortId,
    /// Its sockets.
    pub port: Arc<PacketPort>,
    /// Which of them this worker reads.
    pub socket: usize,
}

/// What the workers share with the agent: the snapshot cell, the stop flag, one counter slot
/// per worker, and the pod ports with the means to know every worker has seen a change.
#[derive(Debug)]
pub struct WorkerShared {
    /// Where the control side publishes tables.
    pub cell: Arc<SnapshotCell>,
    /// Set to make every worker return (within [`POLL_TIMEOUT_MS`] plus one batch).
    pub stop: AtomicBool,
    /// Worker `i`'s counters as of its last copy-out, at most [`STATS_INTERVAL`] old while it
    /// runs, exact once it has returned.
    pub stats: Vec<Mutex<Counters>>,
    /// The pod ports (switch mode).
    pods: ArcSwap<PodPorts>,
    /// Bumped by [`WorkerShared::sync`]; each worker copies it into its `acks` slot at the top
    /// of its loop, after loading the pod ports.
    epoch: AtomicU64,
    acks: Vec<AtomicU64>,
    /// One eventfd per worker, in its epoll set, to wake it for [`WorkerShared::sync`].
    wakers: Vec<std::os::fd::OwnedFd>,
}

impl WorkerShared {
    /// Shared state for `workers` workers reading `cell`.
    ///
    /// # Panics
    ///
    /// If the kernel refuses an eventfd (out of file descriptors at start-up).
    pub fn new(cell: Arc<SnapshotCell>, workers: usize) -> Self {
        WorkerShared {
            cell,
            stop: AtomicBool::new(false),
            stats: (0..workers)
                .map(|_| Mutex::new(Counters::default()))
                .collect(),
            pods: ArcSwap::from_pointee(PodPorts::new()),
            epoch: AtomicU64::new(0),
            acks: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            wakers: (0..workers)
                .map(|_| sys::eventfd().expect("eventfd for a worker"))
                .collect(),
        }
    }

    /// How many workers there are: what a pod port is opened for
    /// ([`PacketPort::open_steered`]).
    pub fn workers(&self) -> usize {
        self.acks.len()
    }

    /// Publishes the pod ports; workers pick them up at their next wakeup ([`WorkerShared::sync`]
    /// waits for that).
    pub fn set_pod_ports(&self, ports: PodPorts) {
        self.pods.store(Arc::new(ports));
    }

    /// The pod ports as published.
    pub fn pod_ports(&self) -> Arc<PodPorts> {
        self.pods.load_full()
    }

    /// Wakes every worker and waits until each has passed the top of its loop, so it holds the
    /// pod ports and snapshot published before this call; at most `timeout`. False on timeout
    /// (a worker stuck or gone).
    pub fn sync(&self, timeout: std::time::Duration) -> bool {
        let e = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        for w in &self.wakers {
            sys::eventfd_wake(w.as_fd());
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.acks.iter().all(|a| a.load(Ordering::Acquire) >= e) {
                return true;
            }
            if std::time::Instant::now() > deadline || self.stop_requested() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// Asks every worker to return.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Worker `id`'s last published counters.
    pub fn worker_counters(&self, id: usize) -> Option<Counters> {
        self.stats
            .get(id)
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Every worker's counters, merged.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for m in &self.stats {
            total.merge(&m.lock().unwrap_or_else(PoisonError::into_inner));
        }
        total
    }
}

/// Where a worker receives tunnel traffic from the underlay.
#[derive(Debug)]
pub enum UnderlayRx {
    /// A VXLAN socket (all workers' sockets bound to the same address, `SO_REUSEPORT`).
    Vxlan(VxlanSocket),
    /// An IP-in-IP raw socket taking this worker's share.
    Ipip(IpipSocket),
    /// Nothing: every peer is routed by the kernel (host-gw); the TUN only sees packets to peers
    /// that could not be routed, which are answered with ICMP.
    None,
}

/// One worker's I/O handles.
#[derive(Debug)]
pub struct WorkerIo {
    /// Its TUN queue.
    pub tun: TunQueue,
    /// Its underlay receive socket.
    pub rx: UnderlayRx,
    /// Its VXLAN sender (a pool of UDP sockets, with GSO trains where the kernel has them).
    pub vxlan_tx: VxlanSender,
    /// Its raw sender, for everything not VXLAN (IP-in-IP, routed packets).
    pub raw: RawSender,
}

/// How a worker's sockets are opened.
#[derive(Debug, Clone, Copy)]
pub struct IoOptions {
    /// Receive buffer of the VXLAN socket (0: kernel default).
    pub rcvbuf: usize,
    /// Send buffers (0: kernel default).
    pub sndbuf: usize,
    /// The underlay source address for VXLAN sends (`0.0.0.0`: the route's).
    pub src: Ipv4Addr,
    /// UDP sockets in the VXLAN send pool (source ports per flow).
    pub send_pool: usize,
    /// Send same-flow trains with UDP GSO where the kernel has it.
    pub gso: bool,
}

impl Default for IoOptions {
    fn default() -> Self {
        IoOptions {
            rcvbuf: 4 << 20,
            sndbuf: 4 << 20,
            src: Ipv4Addr::UNSPECIFIED,
            send_pool: 4,
            gso: true,
        }
    }
}

impl WorkerIo {
    /// Opens a worker's sockets around its TUN queue: a VXLAN socket bound to `vxlan_addr` and a
    /// raw sender, with `rcvbuf`/`sndbuf` bytes of socket buffers (0: kernel defaults).
    pub fn open(
        tun: TunQueue,
        vxlan_addr: SocketAddrV4,
        rcvbuf: usize,
        sndbuf: usize,
    ) -> io::Result<WorkerIo> {
        WorkerIo::open_with(
            tun,
            vxlan_addr,
            IoOptions {
                rcvbuf,
                sndbuf,
                ..IoOptions::default()
            },
        )
    }

    /// Like [`WorkerIo::open`], with every option.
    pub fn open_with(
        tun: TunQueue,
        vxlan_addr: SocketAddrV4,
        o: IoOptions,
    ) -> io::Result<WorkerIo> {
        let udp = VxlanSocket::bind(vxlan_addr, o.rcvbuf, o.sndbuf)?;
        WorkerIo::open_rx(tun, UnderlayRx::Vxlan(udp), o)
    }

    /// A worker's handles for IP-in-IP: a protocol-4 raw socket taking the share of worker
    /// `worker` of `workers` ([`IpipSocket::open`]), and the raw sender.
    pub fn open_ipip(
        tun: TunQueue,
        worker: usize,
        workers: usize,
        o: IoOptions,
    ) -> io::Result<WorkerIo> {
        let ipip = IpipSocket::open(o.rcvbuf, worker, workers)?;
        WorkerIo::open_rx(tun, UnderlayRx::Ipip(ipip), o)
    }

    /// Turns `UDP_GRO` on for the VXLAN receive socket and says whether the kernel took it (false
    /// for other underlays). [`run_worker`] with [`WorkerConfig::gro`] asks again when it starts,
    /// which changes nothing once it is on; a caller that probed first passes the result there.
    pub fn enable_gro(&self) -> bool {
        matches!(&self.rx, UnderlayRx::Vxlan(udp) if udp.enable_gro().is_ok())
    }

    /// Steers the VXLAN sockets' reuseport group by flow ([`VxlanSocket::steer`]), once every
    /// worker's socket is bound; nothing to do for other underlays (IP-in-IP sockets carry their
    /// share's filter from the start).
    pub fn steer(&self, workers: usize) -> io::Result<()> {
        match &self.rx {
            UnderlayRx::Vxlan(udp) if workers > 1 => udp.steer(workers),
            _ => Ok(()),
        }
    }

    /// A worker's handles around `tun` and an underlay receive socket already opened.
    pub fn open_rx(tun: TunQueue, rx: UnderlayRx, o: IoOptions) -> io::Result<WorkerIo> {
        Ok(WorkerIo {
            tun,
            rx,
            vxlan_tx: VxlanSender::new(o.src, o.send_pool, o.sndbuf, o.gso)?,
            raw: RawSender::new(o.sndbuf)?,
        })
    }
}

/// Starts one thread per entry of `io`, named `weft-worker-N`, running [`run_worker`] with id N.
///
/// Fails if `shared` has fewer counter slots than workers or a thread cannot be started; in the
/// latter case it requests a stop, so the workers already started return.
pub fn spawn_workers(
    tun_port: PortId,
    io: Vec<WorkerIo>,
    shared: &Arc<WorkerShared>,
    cfg: WorkerConfig,
) -> io::Result<Vec<JoinHandle<io::Result<()>>>> {
    cfg.validate()?;
    if io.len() > shared.stats.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} workers but counters for only {}",
                io.len(),
                shared.stats.len()
            ),
        ));
    }
    let mut handles = Vec::with_capacity(io.len());
    for (id, w) in io.into_iter().enumerate() {
        let mine = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("weft-worker-{id}"))
            .spawn(move || run_worker(id, tun_port, w, mine, cfg));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The caller gets the error, not the handles: tell the started workers to return.
                shared.request_stop();
                return Err(e);
            }
        }
    }
    Ok(handles)
}

/// Runs worker `id` until [`WorkerShared::stop`] is set.
///
/// `tun_port` is the port id of the TUN device in the snapshots: packets read from `tun` enter the
/// core as [`Ingress::Local`]`(tun_port)`, and deliveries to it are written to `tun`. Deliveries
/// to any other port are dropped as [`DropReason::IoError`]: this worker has no handle for them.
///
/// Returns `Ok` when stopped, or the error that made the TUN queue or its epoll set unusable (a
/// deleted device, for one). Its counters are copied out one last time either way.
pub fn run_worker(
    id: usize,
    tun_port: PortId,
    io: WorkerIo,
    shared: Arc<WorkerShared>,
    cfg: WorkerConfig,
) -> io::Result<()> {
    let WorkerIo {
        tun,
        rx: underlay,
        vxlan_tx,
        raw,
    } = io;
    cfg.validate()?;
    if id >= shared.stats.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("worker {id} has no counter slot"),
        ));
    }
    let mut tun_slots = Slots::new(cfg.tun_slots, cfg.slot_size);
    let gro = cfg.gro && matches!(&underlay, UnderlayRx::Vxlan(udp) if udp.enable_gro().is_ok());
    // IP-in-IP arrives merged when the underlay device does GRO (the kernel's ipip GRO is built
    // in): a raw socket hands the whole merged datagram over, so its slots hold 64 KiB too.
    let ipip = matches!(underlay, UnderlayRx::Ipip(_));
    let rx_slot = if gro || ipip {
        HEADROOM + GRO_SLOT_PAYLOAD
    } else {
        cfg.slot_size
    };
    let mut rx = RecvBatch::new(cfg.batch, rx_slot);
    let offload = tun.vnet_hdr();
    let mut frame_buf = if offload {
        vec![0u8; cfg.tun_read_size]
    } else {
        Vec::new()
    };
    let mut w = Worker {
        tun_port,
        tun: &tun,
        raw: &raw,
        vxlan_tx,
        counters: Counters::default(),
        pending: Vec::with_capacity(cfg.tun_slots.max(cfg.batch)),
        pod_pending: Vec::with_capacity(cfg.tun_slots.max(cfg.batch)),
        pods: shared.pod_ports(),
        budgets: Vec::new(),
        now: clock::now(),
        coalescer: (offload && cfg.coalesce).then(|| Coalescer::new(vec![0u8; SUPER_FRAME_BUF])),
        gather: (offload && cfg.coalesce).then(Box::default),
        heads: if offload {
            vec![0u8; GATHER_SEGS * HEAD_STRIDE]
        } else {
            Vec::new()
        },
    };
    // Pod ports this worker receives from, and the epoll set: TUN, underlay, waker, then those
    // ports in order (tokens below). Rebuilt when the epoch moves.
    let workers = shared.acks.len();
    let waker = shared.wakers.get(id).map(AsFd::as_fd);
    let mut mine: Vec<PodRx> = Vec::new();
    let mut set: Option<sys::Epoll> = None;
    let mut pod_rx: Option<RecvBatch> = None;
    let mut seen_epoch = u64::MAX;
    let mut last_publish = clock::now();
    let mut dirty = false;
    // Sources to read this turn: what the wait reported, and what filled its batch last turn
    // (there is probably more: it is read again without waiting for the kernel to say so).
    let mut ready = Ready::default();
    let mut again = Ready::default();
    // Until when to look without sleeping, after the last wakeup that moved packets.
    let mut spin_until = last_publish;
    let result = loop {
        if shared.stop_requested() {
            break Ok(());
        }
        let epoch = shared.epoch.load(Ordering::Acquire);
        if epoch != seen_epoch {
            w.pods = shared.pod_ports();
            mine = w.pods.received_by(id, workers);
            if !mine.is_empty() && pod_rx.is_none() {
                pod_rx = Some(RecvBatch::new(POD_RX_SLOTS, POD_RX_SLOT));
            }
            // With no underlay socket nothing is watched for it; its drain below is skipped.
            let rx_fd = match &underlay {
                UnderlayRx::Vxlan(s) => Some(s.as_fd()),
                UnderlayRx::Ipip(s) => Some(s.as_fd()),
                UnderlayRx::None => None,
            };
            let built = sys::Epoll::new(FIRST_POD_TOKEN as usize + mine.len()).and_then(|e| {
                e.add(tun.as_fd(), TUN_TOKEN)?;
                if let Some(fd) = rx_fd {
                    e.add(fd, UNDERLAY_TOKEN)?;
                }
                if let Some(fd) = waker {
                    e.add(fd, WAKER_TOKEN)?;
                }
                for (token, r) in (FIRST_POD_TOKEN..).zip(&mine) {
                    e.add(r.port.receiver(r.socket), token)?;
                }
                Ok(e)
            });
            match built {
                Ok(e) => set = Some(e),
                Err(e) => break Err(e),
            }
            ready.reset(mine.len());
            again.reset(mine.len());
            seen_epoch = epoch;
            if let Some(a) = shared.acks.get(id) {
                a.store(epoch, Ordering::Release);
            }
        }
        let Some(set) = set.as_mut() else {
            break Err(io::Error::other("worker without an epoll set"));
        };
        let busy = again.any();
        let spinning = !busy && clock::now() < spin_until;
        let timeout = if busy || spinning { 0 } else { POLL_TIMEOUT_MS };
        ready.clone_from(&again);
        match set.wait(timeout) {
            Ok(tokens) => {
                for token in tokens {
                    if token == WAKER_TOKEN {
                        if let Some(wk) = waker {
                            sys::eventfd_clear(wk);
                        }
                    } else {
                        ready.set(token);
                    }
                }
            }
            Err(e) => break Err(e),
        }
        again.clear();
        if spinning && !ready.any() {
            std::thread::yield_now();
            continue;
        }
        let now = clock::now();
        w.now = now;
        let mut moved = false;
        if ready.any() {
            let snap = shared.cell.load();
            if ready.tun {
                let drained = if offload {
                    w.drain_tun_offload(&snap, &mut tun_slots, &mut frame_buf, cfg.batch, now)
                } else {
                    w.drain_tun(&snap, &mut tun_slots, now)
                };
                match drained {
                    Ok(n) => {
                        again.tun = n == cfg.batch;
                        moved |= n > 0;
                    }
                    Err(e) => break Err(e),
                }
            }
            if ready.underlay {
                let n = match &underlay {
                    UnderlayRx::Vxlan(udp) => w.drain_udp(&snap, udp, &mut rx, now),
                    UnderlayRx::Ipip(ipip) => {
                        w.drain_ipip(&snap, ipip, &mut rx, &mut tun_slots, now)
                    }
                    UnderlayRx::None => 0,
                };
                again.underlay = n == cfg.batch;
                moved |= n > 0;
            }
            if let Some(prx) = pod_rx.as_mut() {
                for (i, from) in mine.iter().enumerate() {
                    if !ready.pods[i] {
                        continue;
                    }
                    let n = w.drain_pod(&snap, from, prx, &mut tun_slots, now);
                    if n == POD_RX_SLOTS {
                        again.mark_pod(i);
                    }
                    moved |= n > 0;
                }
            }
        }
        if moved {
            dirty = true;
            spin_until = now + cfg.spin;
        }
        if dirty && now.saturating_since(last_publish) >= STATS_INTERVAL {
            publish(&shared, id, &w.counters);
            last_publish = now;
            dirty = false;
        }
    };
    publish(&shared, id, &w.counters);
    result
}

/// Copies a worker's counters into its shared slot. The lock is uncontended but for a reader.
fn publish(shared: &WorkerShared, id: usize, counters: &Counters) {
    if let Some(slot) = shared.stats.get(id) {
        slot.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(counters);
    }
}

/// Segments of a super-frame whose headers are written per gathered send.
const GATHER_SEGS: usize = 64;
/// Longest VXLAN-and-inner-Ethernet prefix a gathered segment carries before its IPv4 header.
const HEAD_PREFIX_MAX: usize = 8 + 14;
/// Bytes per gathered segment's headers: the prefix, then IPv4 and TCP headers with options.
const HEAD_STRIDE: usize = HEAD_PREFIX_MAX + MAX_HDR_LEN;

/// A merged (UDP GRO) datagram: where it came from, its slot, its segment size and length.
#[derive(Debug, Clone, Copy)]
struct Merged {
    ingress: Ingress,
    slot: usize,
    seg: usize,
    total: usize,
}

/// An underlay transmit waiting for the end of its batch: which slot, which bytes, to where.
#[derive(Debug, Clone, Copy)]
struct Pending {
    next_hop: Ipv4Addr,
    slot: usize,
    start: usize,
    len: usize,
    encap: Encap,
}

/// Bytes of an Ethernet header.
const ETH_LEN: usize = 14;
/// Bytes of a VXLAN header and the inner Ethernet header behind it.
const VXLAN_ETH_LEN: usize = 8 + ETH_LEN;

/// What [`Worker::forward_super_frame`] did with a super-frame.
#[derive(Debug, Clone, Copy)]
enum SuperFrame {
    /// Carried out (or dropped), in part or whole; what is left of it is in the segments.
    Done,
    /// Its first segment is for pod port `port`, behind Ethernet header `eth`: the caller sends
    /// the whole super-frame there.
    ToPod { port: PortId, eth: [u8; ETH_LEN] },
}

/// How many segments a super-frame of `len` bytes (Ethernet included) described by `vnet` is.
fn super_frame_segments(vnet: &VnetRepr, len: usize) -> usize {
    let payload = len.saturating_sub(usize::from(vnet.hdr_len));
    payload.div_ceil(usize::from(vnet.gso_size).max(1)).max(1)
}

/// Frames one pod-port receive brings at most.
const POD_RX_SLOTS: usize = 16;
/// A pod-port receive slot: headroom, virtio-net header, Ethernet header and a 64 KiB
/// super-frame.
const POD_RX_SLOT: usize = HEADROOM + VNET_HDR_LEN + 14 + 65_535;

/// ARP and broadcast frames a pod port may send per second, and in one burst (an ARP storm from
/// one pod must not take the switch's time from the others).
pub const BROADCAST_RATE: u32 = 200;
/// See [`BROADCAST_RATE`].
pub const BROADCAST_BURST: u32 = 100;

/// A token bucket for one pod port's ARP and broadcast frames.
#[derive(Debug, Clone, Copy)]
struct Budget {
    tokens: u32,
    refilled: Instant,
}

impl Budget {
    /// Takes one token at `now`, refilling first; false when there is none.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_since(self.refilled);
        let new = elapsed
            .as_micros()
            .saturating_mul(u64::from(BROADCAST_RATE))
            / 1_000_000;
        let new = u32::try_from(new).unwrap_or(u32::MAX);
        if new > 0 {
            self.tokens = self.tokens.saturating_add(new).min(BROADCAST_BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// A delivery to a pod port waiting for the end of its batch: which slot, which bytes (the
/// Ethernet frame).
#[derive(Debug, Clone, Copy)]
struct PodSend {
    port: PortId,
    slot: usize,
    start: usize,
    len: usize,
}

/// A worker's per-thread state.
struct Worker<'a> {
    tun_port: PortId,
    tun: &'a TunQueue,
    raw: &'a RawSender,
    vxlan_tx: VxlanSender,
    counters: Counters,
    /// Capacity `batch`, allocated once: one verdict per slot, so it never grows.
    pending: Vec<Pending>,
    /// Deliveries to pod ports, sent at the end of the batch like `pending`.
    pod_pending: Vec<PodSend>,
    /// The pod ports as of this worker's last epoch.
    pods: Arc<PodPorts>,
    /// Per pod port (by id): the ARP and broadcast budget, refilled at [`BROADCAST_RATE`].
    budgets: Vec<Budget>,
    /// The time of the current wakeup, for the pod ports' bandwidth limits.
    now: Instant,
    /// Merges TCP segments bound for the TUN, on a queue with offloads and `coalesce` on.
    coalescer: Option<Coalescer<Vec<u8>>>,
    /// Merges the segments of one UDP GRO datagram bound for the TUN without copying their
    /// payload; present with `coalescer`.
    gather: Option<Box<GatherCoalescer>>,
    /// Headers of the segments of one gathered send, [`HEAD_STRIDE`] bytes each; allocated once,
    /// on a queue with offloads.
    heads: Vec<u8>,
}

impl Worker<'_> {
    /// Reads up to one batch from the TUN queue and forwards it. Returns how many packets were
    /// read, or the error that makes the queue unusable.
    fn drain_tun(&mut self, snap: &Snapshot, slots: &mut Slots, now: Instant) -> io::Result<usize> {
        let mut n = 0;
        let mut fatal = None;
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(room) = slot.get_mut(HEADROOM..) else {
                break;
            };
            match self.tun.read(room) {
                Ok(0) => break,
                Ok(len) => {
                    n += 1;
                    self.forward_local(snap, slot, i, len, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Leaves this slot unused; the loop is bounded by the slot count.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    fatal = Some(e);
                    break;
                }
            }
        }
        self.end_batch(slots);
        match fatal {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Counts and forwards the packet of `len` bytes at [`HEADROOM`] in slot `i`, read from the
    /// TUN.
    fn forward_local(
        &mut self,
        snap: &Snapshot,
        slot: &mut [u8],
        i: usize,
        len: usize,
        now: Instant,
    ) {
        self.counters.rx_local.add(len);
        let verdict = forward(
            snap,
            Ingress::Local(self.tun_port),
            slot,
            HEADROOM,
            len,
            now,
        );
        self.carry_out(verdict, i, slot);
    }

    /// Like [`Worker::drain_tun`] on a queue with virtio-net headers: up to `reads` reads into
    /// `frame_buf`, each a plain packet or a super-frame cut into segments in the slots. Returns
    /// how many reads brought something.
    fn drain_tun_offload(
        &mut self,
        snap: &Snapshot,
        slots: &mut Slots,
        frame_buf: &mut [u8],
        reads: usize,
        now: Instant,
    ) -> io::Result<usize> {
        let mut n = 0;
        let mut attempts = 0;
        let mut next = 0;
        let mut fatal = None;
        while attempts < reads {
            attempts += 1;
            let len = match self.tun.read(frame_buf) {
                Ok(0) => break,
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    fatal = Some(e);
                    break;
                }
            };
            n += 1;
            let Some((hdr, frame)) = frame_buf
                .get(..len)
                .and_then(|b| b.split_at_checked(VNET_HDR_LEN))
            else {
                self.counters.drop(DropReason::Truncated);
                continue;
            };
            let Ok(vnet) = VnetRepr::parse_bytes(hdr) else {
                self.counters.drop(DropReason::OffloadMalformed);
                continue;
            };
            match vnet.gso {
                Gso::None => {
                    if next == slots.len() {
                        self.flush(slots);
                        next = 0;
                    }
                    let Some(slot) = slots.slot_mut(next) else {
                        break;
                    };
                    let Some(room) = slot.get_mut(HEADROOM..HEADROOM + frame.len()) else {
                        self.counters.drop(DropReason::TooBig);
                        continue;
                    };
                    room.copy_from_slice(frame);
                    if vnet.needs_csum
                        && complete_checksum(room, vnet.csum_start, vnet.csum_offset).is_err()
                    {
                        self.counters.drop(DropReason::OffloadMalformed);
                        continue;
                    }
                    self.forward_local(snap, slot, next, frame.len(), now);
                    next += 1;
                }
                Gso::TcpV4 | Gso::UdpL4 => {
                    let Ok(mut segs) = Ipv4Segments::new(frame, &vnet) else {
                        self.counters.drop(DropReason::OffloadMalformed);
                        continue;
                    };
                    let ingress = Ingress::Local(self.tun_port);
                    self.forward_super_frame(snap, ingress, None, slots, &mut next, &mut segs, now);
                    self.forward_each(snap, ingress, None, slots, &mut next, &mut segs, now);
                }
                Gso::Udp | Gso::TcpV6 => {
                    self.counters.drop(DropReason::OffloadMalformed);
                }
            }
        }
        self.end_batch(slots);
        match fatal {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Forwards the first segment of `segs` (into slot `*next`), and if it leaves as VXLAN the
    /// rest with it, gathered: the core's decision for the first holds for every segment of the
    /// super-frame (one flow, one destination, none longer than the first), so the others get
    /// no lookup of their own. Each segment's VXLAN, Ethernet, IPv4 and TCP headers are written
    /// into [`Worker::heads`] and its payload sent from the TUN read buffer where it lies, one
    /// UDP GSO train for the lot; only the checksum reads the payload. Anything else the first
    /// segment's verdict says is carried out for it alone, and `segs` holds the rest.
    ///
    /// From a pod port (`eth` is the frame's Ethernet header, written in front of each segment)
    /// Weft routes, so every segment's TTL is one less; and when the first segment is delivered
    /// to another pod port, nothing is carried out: the caller passes the whole super-frame on
    /// ([`SuperFrame::ToPod`]). So it is for a merged IP-in-IP datagram from the underlay
    /// delivered to a pod port.
    #[allow(clippy::too_many_arguments)]
    fn forward_super_frame(
        &mut self,
        snap: &Snapshot,
        ingress: Ingress,
        eth: Option<&[u8; ETH_LEN]>,
        slots: &mut Slots,
        next: &mut usize,
        segs: &mut Ipv4Segments<'_>,
        now: Instant,
    ) -> SuperFrame {
        if *next == slots.len() {
            self.flush(slots);
            *next = 0;
        }
        let l2 = if eth.is_some() { ETH_LEN } else { 0 };
        let ip_at = HEADROOM + l2;
        let i = *next;
        let Some(slot) = slots.slot_mut(i) else {
            return SuperFrame::Done;
        };
        let Some(room) = slot.get_mut(ip_at..) else {
            return SuperFrame::Done;
        };
        let seg_len = match segs.emit_next(room) {
            Some(Ok(len)) => len,
            Some(Err(_)) => {
                self.counters.drop(DropReason::TooBig);
                return SuperFrame::Done;
            }
            None => return SuperFrame::Done,
        };
        if let Some(eth) = eth {
            slot[HEADROOM..ip_at].copy_from_slice(eth);
        }
        // A merged underlay datagram was counted as received whole.
        let local = matches!(ingress, Ingress::Local(_));
        if local {
            self.counters.rx_local.add(l2 + seg_len);
        }
        let verdict = forward(snap, ingress, slot, HEADROOM, l2 + seg_len, now);
        let plan = plan_super_frame(snap, ingress, &verdict, segs.frame(), now);
        // Carrying the plan out needs the super-frame in a shape the sends take: an Ethernet
        // frame to pass to a pod port whole; the segments' outer headers within a stride.
        let gathered = match (plan, verdict) {
            (SuperFramePlan::Whole { port }, Verdict::Forward(Action::Deliver { start, .. }))
                if (eth.is_some() || ingress == Ingress::IpipInner)
                    && port != self.tun_port
                    && self.pods.get(port).is_some() =>
            {
                let mut out = [0u8; ETH_LEN];
                if let Some(b) = slot.get(start..start + ETH_LEN) {
                    out.copy_from_slice(b);
                    return SuperFrame::ToPod { port, eth: out };
                }
                None
            }
            (
                SuperFramePlan::AsTheFirst { routed },
                Verdict::Forward(Action::Transmit {
                    next_hop,
                    start,
                    len,
                    encap: Encap::Vxlan { src_port, dst_port },
                }),
            ) if !segs.is_done()
                && start + len == ip_at + seg_len
                && ip_at
                    .checked_sub(start + VXLAN_UDP_PAYLOAD_OFFSET)
                    .is_some_and(|p| p <= HEAD_PREFIX_MAX) =>
            {
                Some((
                    SocketAddrV4::new(next_hop, dst_port),
                    start,
                    src_port,
                    routed,
                ))
            }
            _ => None,
        };
        let Some((dst, start, flow, routed)) = gathered else {
            self.carry_out(verdict, i, slot);
            *next += 1;
            return SuperFrame::Done;
        };
        // What is pending may be this flow's too: it leaves first.
        self.flush(slots);
        *next = 0;
        let first = slots.bytes(i, start, ip_at + seg_len - start);
        let Some(first) = first.get(VXLAN_UDP_PAYLOAD_OFFSET..) else {
            return SuperFrame::Done;
        };
        // The VXLAN and inner Ethernet headers, the same on every segment.
        let prefix = &first[..ip_at - start - VXLAN_UDP_PAYLOAD_OFFSET];
        let frame = segs.frame();
        self.counters.gathered_sends += 1;
        let mut lead = Some(first);
        while lead.is_some() || !segs.is_done() {
            let mut cut = [(0usize, 0usize, 0usize); GATHER_SEGS];
            let mut k = 0;
            while k < GATHER_SEGS {
                let head = &mut self.heads[k * HEAD_STRIDE..(k + 1) * HEAD_STRIDE];
                head[..prefix.len()].copy_from_slice(prefix);
                match segs.emit_next_headers(&mut head[prefix.len()..]) {
                    Some(Ok((hl, body))) => {
                        if routed {
                            // One hop, as the core did to the first.
                            let mut ip = Ipv4Packet::new_unchecked(&mut head[prefix.len()..]);
                            if ip.ttl() > 1 {
                                ip.decrement_ttl();
                            }
                        }
                        if local {
                            self.counters.rx_local.add(l2 + hl + body.len());
                        }
                        cut[k] = (prefix.len() + hl, body.start, body.end);
                        k += 1;
                    }
                    // Headers longer than a stride: not from a valid IPv4/TCP super-frame.
                    Some(Err(_)) => self.counters.drop(DropReason::TooBig),
                    None => break,
                }
            }
            let heads = &self.heads;
            let gathered = cut[..k]
                .iter()
                .enumerate()
                .map(|(j, &(hl, from, to))| Datagram {
                    dst,
                    flow,
                    payload: &heads[j * HEAD_STRIDE..j * HEAD_STRIDE + hl],
                    tail: &frame[from..to],
                });
            let lead_dgram = lead.take().map(|payload| Datagram {
                dst,
                flow,
                payload,
                tail: &[],
            });
            let report = self
                .vxlan_tx
                .send_iter(lead_dgram.into_iter().chain(gathered));
            self.count_sent(&report);
        }
        SuperFrame::Done
    }

    /// What a gathered send did not take of `segs`: each segment into `slots` from `*next` on
    /// (behind `eth` when the super-frame came from a pod port) and through the core, as the
    /// packet it would have been. What is carried out stays pending in `slots` (flushed when
    /// they are full): the caller flushes before it reuses them from the first.
    #[allow(clippy::too_many_arguments)]
    fn forward_each(
        &mut self,
        snap: &Snapshot,
        ingress: Ingress,
        eth: Option<&[u8; ETH_LEN]>,
        slots: &mut Slots,
        next: &mut usize,
        segs: &mut Ipv4Segments<'_>,
        now: Instant,
    ) {
        let l2 = if eth.is_some() { ETH_LEN } else { 0 };
        while !segs.is_done() {
            if *next == slots.len() {
                self.flush(slots);
                *next = 0;
            }
            let Some(out) = slots.slot_mut(*next) else {
                break;
            };
            let Some(room) = out.get_mut(HEADROOM + l2..) else {
                break;
            };
            match segs.emit_next(room) {
                Some(Ok(seg_len)) => {
                    if let Some(eth) = eth {
                        out[HEADROOM..HEADROOM + ETH_LEN].copy_from_slice(eth);
                    }
                    if matches!(ingress, Ingress::Local(_)) {
                        self.counters.rx_local.add(l2 + seg_len);
                    }
                    let verdict = forward(snap, ingress, out, HEADROOM, l2 + seg_len, now);
                    self.carry_out(verdict, *next, out);
                    *next += 1;
                }
                // A segment larger than a slot: the MTU is above the slot size.
                Some(Err(_)) => self.counters.drop(DropReason::TooBig),
                None => break,
            }
        }
    }

    /// Passes a super-frame whose first segment the core delivered to pod port `port` on
    /// whole: `frame` (Ethernet header first) gets the core's Ethernet header `eth` and one hop
    /// off its TTL, and leaves behind virtio-net header `vnet` as one GSO packet the port's
    /// veth hands to the pod, counted as the `segments` it stands for.
    fn pass_to_pod(
        &mut self,
        port: PortId,
        eth: &[u8; ETH_LEN],
        vnet: &[u8; VNET_HDR_LEN],
        frame: &mut [u8],
        segments: usize,
    ) {
        let Some(ip) = frame.get_mut(ETH_LEN..) else {
            return;
        };
        let mut ip = Ipv4Packet::new_unchecked(ip);
        if ip.ttl() > 1 {
            ip.decrement_ttl();
        }
        frame[..ETH_LEN].copy_from_slice(eth);
        let len = frame.len();
        self.send_to_pod(port, &[vnet, frame], segments, len);
    }

    /// Receives one batch of frames from pod port `pid` and forwards them: a plain frame where it
    /// lies (its checksum completed first if the pod left it partial), a super-frame cut into
    /// segments in `slots`, each behind the frame's own Ethernet header, so the core checks and
    /// routes every segment as the frame it would have been. Returns how many frames arrived.
    fn drain_pod(
        &mut self,
        snap: &Snapshot,
        from: &PodRx,
        rx: &mut RecvBatch,
        slots: &mut Slots,
        now: Instant,
    ) -> usize {
        let pid = from.id;
        let n = match from.port.recv_batch_on(from.socket, rx) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        let ingress = Ingress::Local(pid);
        const ETH: usize = 14;
        for i in 0..n {
            let Some(meta) = rx.meta(i) else { break };
            if meta.truncated || meta.len < VNET_HDR_LEN + ETH {
                self.counters
                    .rx_local
                    .add(meta.len.saturating_sub(VNET_HDR_LEN));
                self.counters.drop(if meta.truncated {
                    DropReason::TooBig
                } else {
                    DropReason::Truncated
                });
                continue;
            }
            let frame_at = HEADROOM + VNET_HDR_LEN;
            let frame_len = meta.len - VNET_HDR_LEN;
            let parsed = rx
                .get(i)
                .and_then(|(_, slot)| VnetRepr::parse_bytes(&slot[HEADROOM..frame_at]).ok());
            let Some(vnet) = parsed else {
                self.counters.drop(DropReason::OffloadMalformed);
                continue;
            };
            if let Some(limit) = self.pods.limits(pid).and_then(|l| l.egress.as_ref()) {
                if !limit.admit(now, frame_len) {
                    let segments = match vnet.gso {
                        Gso::None => 1,
                        _ => super_frame_segments(&vnet, frame_len),
                    };
                    self.counters.rx_local.add(frame_len);
                    self.counters.drops[DropReason::BandwidthLimited.index()] += segments as u64;
                    continue;
                }
            }
            match vnet.gso {
                Gso::None => {
                    let Some(slot) = rx.slot_mut(i) else { break };
                    self.counters.rx_local.add(frame_len);
                    // ARP and broadcasts (dst MAC's group bit) spend the port's budget.
                    if slot[frame_at] & 1 == 1 || slot[frame_at + 12..frame_at + 14] == [8, 6] {
                        let at = usize::from(pid.0);
                        if self.budgets.len() <= at {
                            self.budgets.resize(
                                at + 1,
                                Budget {
                                    tokens: BROADCAST_BURST,
                                    refilled: now,
                                },
                            );
                        }
                        if !self.budgets[at].take(now) {
                            self.counters.drop(DropReason::RateLimited);
                            continue;
                        }
                    }
                    if vnet.needs_csum {
                        let ip = &mut slot[frame_at + ETH..frame_at + frame_len];
                        let ok = vnet.csum_start >= ETH as u16
                            && complete_checksum(
                                ip,
                                vnet.csum_start - ETH as u16,
                                vnet.csum_offset,
                            )
                            .is_ok();
                        if !ok {
                            self.counters.drop(DropReason::OffloadMalformed);
                            continue;
                        }
                    }
                    let verdict = forward(snap, ingress, slot, frame_at, frame_len, now);
                    self.carry_out(verdict, i, slot);
                }
                Gso::TcpV4 | Gso::UdpL4 => {
                    // Segments go into `slots`: what is pending from `rx` leaves first.
                    self.flush(rx.slots());
                    let outcome = {
                        let Some((_, slot)) = rx.get(i) else { break };
                        let mut eth = [0u8; ETH];
                        eth.copy_from_slice(&slot[frame_at..frame_at + ETH]);
                        let mut v = vnet;
                        v.csum_start = v.csum_start.saturating_sub(ETH as u16);
                        let ip = &slot[frame_at + ETH..frame_at + frame_len];
                        let Ok(mut segs) = Ipv4Segments::new(ip, &v) else {
                            self.counters.rx_local.add(frame_len);
                            self.counters.drop(DropReason::OffloadMalformed);
                            continue;
                        };
                        let mut next = 0;
                        let outcome = self.forward_super_frame(
                            snap,
                            ingress,
                            Some(&eth),
                            slots,
                            &mut next,
                            &mut segs,
                            now,
                        );
                        if matches!(outcome, SuperFrame::Done) {
                            self.forward_each(
                                snap,
                                ingress,
                                Some(&eth),
                                slots,
                                &mut next,
                                &mut segs,
                                now,
                            );
                            self.flush(slots);
                        }
                        outcome
                    };
                    if let SuperFrame::ToPod { port: to, eth } = outcome {
                        // Pod to pod on this node: the whole super-frame, once, with the
                        // first segment's Ethernet header and one hop off its TTL; the
                        // destination veth hands it to the pod as one GSO packet.
                        let Some(slot) = rx.slot_mut(i) else { break };
                        let mut hdr = [0u8; VNET_HDR_LEN];
                        hdr.copy_from_slice(&slot[HEADROOM..frame_at]);
                        let segments = super_frame_segments(&vnet, frame_len);
                        let frame = &mut slot[frame_at..frame_at + frame_len];
                        self.pass_to_pod(to, &eth, &hdr, frame, segments);
                    }
                }
                Gso::Udp | Gso::TcpV6 => {
                    self.counters.rx_local.add(frame_len);
                    self.counters.drop(DropReason::OffloadMalformed);
                }
            }
        }
        self.end_batch(rx.slots());
        n
    }

    /// Receives one batch from the VXLAN socket and forwards it. Returns how many datagrams
    /// arrived. A receive error is not fatal (a UDP socket reports a pending error once); the next
    /// wakeup tries again.
    fn drain_udp(
        &mut self,
        snap: &Snapshot,
        udp: &VxlanSocket,
        rx: &mut RecvBatch,
        now: Instant,
    ) -> usize {
        let n = match udp.recv_batch(rx) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        for i in 0..n {
            let Some(meta) = rx.meta(i) else { break };
            let ingress = Ingress::VxlanUdp {
                src: *meta.src.ip(),
            };
            if meta.truncated {
                self.counters.rx_underlay.add(meta.len + OUTER_IPV4_UDP_LEN);
                self.counters.drop(DropReason::TooBig);
                continue;
            }
            // A merged datagram (UDP GRO) holds `segment`-byte datagrams back to back; each is
            // decapsulated where it lies. Whatever the core writes in front of a later one lands
            // on the tail of the one before, which is why transmits still pending from it are
            // sent first (deliveries are written or copied by the coalescer at once).
            let seg = if meta.segment > 0 {
                meta.segment
            } else {
                meta.len
            };
            let mut off = if meta.len > seg {
                let merged = Merged {
                    ingress,
                    slot: i,
                    seg,
                    total: meta.len,
                };
                self.deliver_merged(snap, &merged, rx, now)
            } else {
                0
            };
            while off < meta.len {
                let len = seg.min(meta.len - off);
                if off > 0 && !(self.pending.is_empty() && self.pod_pending.is_empty()) {
                    self.flush(rx.slots());
                }
                self.counters.rx_underlay.add(len + OUTER_IPV4_UDP_LEN);
                let Some(slot) = rx.slot_mut(i) else { break };
                let verdict = forward(snap, ingress, slot, HEADROOM + off, len, now);
                self.carry_out(verdict, i, slot);
                off += len;
            }
        }
        self.end_batch(rx.slots());
        n
    }

    /// Takes one forwarding decision for a merged datagram (UDP GRO: `total` bytes of
    /// `seg`-byte VXLAN datagrams back to back in its slot) and, when its first segment is
    /// delivered to the TUN, merges it and the segments after it into one super-frame whose
    /// payload is written from where it lies (`writev(2)`), with no copy in userspace. A later
    /// segment joins when its VXLAN and inner Ethernet headers equal the first's and the
    /// coalescer takes it (same addresses, TTL and TOS, valid checksums, in sequence, no longer
    /// than the first): the core would decide the same for it, so it gets no decision of its
    /// own, and no decision writes into a piece before the write. Returns how many bytes of
    /// the datagram were dealt with; the caller forwards the rest segment by segment.
    fn deliver_merged(
        &mut self,
        snap: &Snapshot,
        merged: &Merged,
        rx: &mut RecvBatch,
        now: Instant,
    ) -> usize {
        let Some(mut gather) = self.gather.take() else {
            return 0;
        };
        let done = self.gather_merged(&mut gather, snap, merged, rx, now);
        self.gather = Some(gather);
        done
    }

    /// [`Worker::deliver_merged`] with the gathering coalescer in hand.
    fn gather_merged(
        &mut self,
        gather: &mut GatherCoalescer,
        snap: &Snapshot,
        merged: &Merged,
        rx: &mut RecvBatch,
        now: Instant,
    ) -> usize {
        let &Merged {
            ingress,
            slot: i,
            seg,
            total,
        } = merged;
        // Deliveries to pods still pending from earlier datagrams leave first: this one may be
        // sent at once below, and a flow's packets must not overtake each other.
        if !self.pod_pending.is_empty() {
            self.flush(rx.slots());
        }
        let Some(slot) = rx.slot_mut(i) else {
            return total;
        };
        let first = seg.min(total);
        self.counters.rx_underlay.add(first + OUTER_IPV4_UDP_LEN);
        // The VXLAN and inner Ethernet headers as received: a delivery to a pod port rewrites
        // the first's, and the later segments are compared with the original.
        let mut received = [0u8; VXLAN_ETH_LEN];
        if let Some(b) = slot.get(HEADROOM..HEADROOM + VXLAN_ETH_LEN) {
            received.copy_from_slice(b);
        }
        let verdict = forward(snap, ingress, slot, HEADROOM, first, now);
        // The segments the coalescer joins to the first share its TCP header but for PSH (it
        // takes none with FIN, RST or SYN: those get their own decision), so the first's inner
        // packet stands for them.
        let inner = slot
            .get(HEADROOM + VXLAN_ETH_LEN..HEADROOM + first)
            .unwrap_or(&[]);
        let plan = plan_super_frame(snap, ingress, &verdict, inner, now);
        let (start, len) = match (plan, verdict) {
            (
                SuperFramePlan::Whole { port },
                Verdict::Forward(Action::Deliver { start, len, .. }),
            ) if port == self.tun_port && start >= HEADROOM && start + len <= slot.len() => {
                (start, len)
            }
            (
                SuperFramePlan::Whole { port },
                Verdict::Forward(Action::Deliver { start, len, .. }),
            ) if self.pods.get(port).is_some()
                && start == HEADROOM + VXLAN_ETH_LEN - ETH_LEN
                && start + len <= slot.len() =>
            {
                return self.gather_to_pod(gather, port, &received, merged, slot, start, len);
            }
            _ => {
                self.carry_out(verdict, i, slot);
                return first;
            }
        };
        let slot: &[u8] = slot;
        // What the copying coalescer holds arrived earlier: it is written first.
        self.flush_coalesced();
        if gather.push(&slot[start..start + len], start) == Push::Rejected {
            self.deliver_tun(&slot[start..start + len]);
            return first;
        }
        let prefix = &slot[HEADROOM..start];
        let mut off = first;
        while off < total {
            let l = seg.min(total - off);
            let at = HEADROOM + off;
            let inner = at + prefix.len();
            let same_prefix = slot.get(at..inner) == Some(prefix);
            if !same_prefix
                || l <= prefix.len()
                || gather.push(&slot[inner..at + l], inner) == Push::Rejected
            {
                break;
            }
            self.counters.rx_underlay.add(l + OUTER_IPV4_UDP_LEN);
            off += l;
        }
        if let Some(m) = gather.finish() {
            let parts = m.parts.iter().map(|&(at, len)| &slot[at..at + len]);
            let written = self.tun.write_gathered(m.head, parts).is_ok();
            if self.count_tun_write(written, m.packets, m.packet_bytes) {
                self.counters.gathered_writes += 1;
            }
        }
        off
    }

    /// [`Worker::gather_merged`] for a merged datagram whose first segment the core delivered to
    /// pod port `port` (its frame at `slot[start..start + len]`, Ethernet header rewritten, TTL
    /// one less): the segments that follow with the same headers as `received` are merged into
    /// one super-frame sent to the port gathered, with a GSO virtio-net header, so the pod takes
    /// one GSO packet. Returns the bytes of the datagram dealt with.
    #[allow(clippy::too_many_arguments)]
    fn gather_to_pod(
        &mut self,
        gather: &mut GatherCoalescer,
        port: PortId,
        received: &[u8; VXLAN_ETH_LEN],
        merged: &Merged,
        slot: &mut [u8],
        start: usize,
        len: usize,
    ) -> usize {
        let &Merged { seg, total, .. } = merged;
        let first = seg.min(total);
        let ip_at = start + ETH_LEN;
        let mut eth = [0u8; ETH_LEN];
        eth.copy_from_slice(&slot[start..ip_at]);
        // Merged at the TTL the segments arrived with (the coalescer wants them equal), the hop
        // taken off the merged header below.
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut slot[ip_at..start + len]);
            ip.set_ttl(ip.ttl().saturating_add(1));
            ip.fill_checksum();
        }
        let slot: &[u8] = slot;
        if gather.push(&slot[ip_at..start + len], ip_at) == Push::Rejected {
            let frame = &slot[start..start + len];
            self.send_to_pod(port, &[&PLAIN, frame], 1, len);
            return first;
        }
        let mut off = first;
        while off < total {
            let l = seg.min(total - off);
            let at = HEADROOM + off;
            let inner = at + VXLAN_ETH_LEN;
            if slot.get(at..inner) != Some(&received[..])
                || l <= VXLAN_ETH_LEN
                || gather.push(&slot[inner..at + l], inner) == Push::Rejected
            {
                break;
            }
            self.counters.rx_underlay.add(l + OUTER_IPV4_UDP_LEN);
            off += l;
        }
        let Some(m) = gather.finish() else {
            return off;
        };
        // The virtio-net header counts from the Ethernet header on an AF_PACKET socket.
        let mut head = [0u8; VNET_HDR_LEN + MAX_HDR_LEN];
        let hl = m.head.len().min(head.len());
        head[..hl].copy_from_slice(&m.head[..hl]);
        if let Ok(mut v) = VnetRepr::parse_bytes(&head[..VNET_HDR_LEN]) {
            v.csum_start = v.csum_start.saturating_add(ETH_LEN as u16);
            v.hdr_len = v.hdr_len.saturating_add(ETH_LEN as u16);
            head[..VNET_HDR_LEN].copy_from_slice(&v.to_bytes());
        }
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut head[VNET_HDR_LEN..hl]);
            if ip.ttl() > 1 {
                ip.decrement_ttl();
            }
        }
        let mut pieces: [&[u8]; sys::MAX_PIECES] = [&[]; sys::MAX_PIECES];
        pieces[0] = &head[..VNET_HDR_LEN];
        pieces[1] = &eth;
        pieces[2] = &head[VNET_HDR_LEN..hl];
        let mut n = 3;
        for &(at, l) in m.parts {
            if n == pieces.len() {
                break;
            }
            pieces[n] = &slot[at..at + l];
            n += 1;
        }
        let (packets, bytes) = (m.packets, m.packet_bytes + m.packets * ETH_LEN);
        self.send_to_pod(port, &pieces[..n], packets, bytes);
        self.counters.gathered_writes += 1;
        off
    }

    /// Sends one frame gathered from `pieces` (virtio-net header first) to pod port `port` and
    /// counts `packets` packets of `bytes` bytes as sent or dropped.
    fn send_to_pod(&mut self, port: PortId, pieces: &[&[u8]], packets: usize, bytes: usize) {
        if !self.admit_to_pod(port, bytes, packets) {
            return;
        }
        let sent = self
            .pods
            .get(port)
            .is_some_and(|p| p.send_gathered(pieces).is_ok());
        if sent {
            self.counters.tx_local.packets += packets as u64;
            self.counters.tx_local.bytes += bytes as u64;
        } else {
            self.counters.drops[DropReason::IoError.index()] += packets as u64;
        }
    }

    /// Whether pod port `port`'s ingress limit lets `bytes` more through now; if not, counts
    /// `packets` drops.
    #[inline]
    fn admit_to_pod(&mut self, port: PortId, bytes: usize, packets: usize) -> bool {
        let ok = self
            .pods
            .limits(port)
            .and_then(|l| l.ingress.as_ref())
            .is_none_or(|p| p.admit(self.now, bytes));
        if !ok {
            self.counters.drops[DropReason::BandwidthLimited.index()] += packets as u64;
        }
        ok
    }

    /// Receives one batch of IP-in-IP datagrams (outer IPv4 header included) and forwards it.
    /// Returns how many arrived; a receive error is retried at the next wakeup.
    fn drain_ipip(
        &mut self,
        snap: &Snapshot,
        ipip: &IpipSocket,
        rx: &mut RecvBatch,
        slots: &mut Slots,
        now: Instant,
    ) -> usize {
        let n = match ipip.recv_batch(rx) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        for i in 0..n {
            let Some(meta) = rx.meta(i) else { break };
            self.counters.rx_underlay.add(meta.len);
            if meta.truncated {
                self.counters.drop(DropReason::TooBig);
                continue;
            }
            let Some(slot) = rx.slot_mut(i) else { break };
            match ipip_super_frame(snap, slot, HEADROOM, meta.len, self.tun_port) {
                Ok(Some(IpipMerged::Tun(f))) => {
                    self.write_super_frame(slot, f);
                    continue;
                }
                Ok(Some(IpipMerged::Segment { inner, vnet })) => {
                    self.forward_merged_ipip(snap, rx, i, inner, &vnet, slots, now);
                    continue;
                }
                Ok(None) => {}
                Err(reason) => {
                    self.counters.drop(reason);
                    continue;
                }
            }
            let verdict = forward(snap, Ingress::Underlay, slot, HEADROOM, meta.len, now);
            self.carry_out(verdict, i, slot);
        }
        self.end_batch(rx.slots());
        n
    }

    /// A merged IP-in-IP datagram (rx slot `i`) whose inner TCP super-packet (`slot[inner]`) is
    /// not for the TUN: cut by `vnet` as a pod's TSO send would be, its first segment routed
    /// by the core (policy included). Delivered to a pod port, the whole super-packet goes there
    /// as one GSO frame behind the core's Ethernet header, one hop off its TTL; otherwise each
    /// segment is carried out as the core says.
    #[allow(clippy::too_many_arguments)]
    fn forward_merged_ipip(
        &mut self,
        snap: &Snapshot,
        rx: &mut RecvBatch,
        i: usize,
        inner: core::ops::Range<usize>,
        vnet: &VnetRepr,
        slots: &mut Slots,
        now: Instant,
    ) {
        // Segments go into `slots`: what is pending from `rx` leaves first.
        self.flush(rx.slots());
        let outcome = {
            let Some(ip) = rx.get(i).and_then(|(_, slot)| slot.get(inner.clone())) else {
                return;
            };
            let Ok(mut segs) = Ipv4Segments::new(ip, vnet) else {
                self.counters.drop(DropReason::IpipMalformed);
                return;
            };
            let mut next = 0;
            let ingress = Ingress::IpipInner;
            let outcome =
                self.forward_super_frame(snap, ingress, None, slots, &mut next, &mut segs, now);
            if matches!(outcome, SuperFrame::Done) {
                self.forward_each(snap, ingress, None, slots, &mut next, &mut segs, now);
                self.flush(slots);
            }
            outcome
        };
        let SuperFrame::ToPod { port, eth } = outcome else {
            return;
        };
        // The Ethernet header goes over the tail of the outer IPv4 header (20 bytes at least).
        let Some(frame_at) = inner.start.checked_sub(ETH_LEN) else {
            return;
        };
        let Some(slot) = rx.slot_mut(i) else {
            return;
        };
        // The virtio-net header counts from the Ethernet header on an AF_PACKET socket.
        let mut v = *vnet;
        v.csum_start = v.csum_start.saturating_add(ETH_LEN as u16);
        v.hdr_len = v.hdr_len.saturating_add(ETH_LEN as u16);
        let segments = super_frame_segments(&v, inner.end - frame_at);
        self.pass_to_pod(
            port,
            &eth,
            &v.to_bytes(),
            &mut slot[frame_at..inner.end],
            segments,
        );
    }

    /// Writes a merged IP-in-IP datagram's inner super-packet to the TUN behind its virtio-net
    /// header, after whatever the coalescer holds (order). Without offloads on the queue the TUN
    /// cannot take it: dropped as too big.
    fn write_super_frame(&mut self, slot: &[u8], f: crate::forward::IpipSuperFrame) {
        if !self.tun.vnet_hdr() {
            self.counters.drop(DropReason::TooBig);
            return;
        }
        self.flush_coalesced();
        let written = slot
            .get(f.start..f.start + f.len)
            .is_some_and(|b| self.tun.write_raw(b).is_ok());
        self.count_tun_write(written, f.segments, f.inner_len);
    }

    /// Counts one TUN write of `packets` merged packets, `bytes` in all: sent, or dropped as an
    /// I/O error. Returns `written`.
    fn count_tun_write(&mut self, written: bool, packets: usize, bytes: usize) -> bool {
        if written {
            self.counters.tx_local.packets += packets as u64;
            self.counters.tx_local.bytes += bytes as u64;
        } else {
            self.counters.drops[DropReason::IoError.index()] += packets as u64;
        }
        written
    }

    /// Hands an IPv4 packet bound for the TUN to the coalescer, or writes it now. Packets leave
    /// in the order they came: anything the coalescer will not take is written only after what
    /// it holds.
    fn deliver_tun(&mut self, pkt: &[u8]) {
        if let Some(c) = self.coalescer.as_mut() {
            match c.push(pkt) {
                Push::Started | Push::Appended => return,
                Push::Rejected if c.is_empty() => {}
                Push::Rejected => {
                    self.flush_coalesced();
                    if let Some(c) = self.coalescer.as_mut() {
                        if c.push(pkt) != Push::Rejected {
                            return;
                        }
                    }
                }
            }
        }
        match self.tun.write(pkt) {
            Ok(_) => self.counters.tx_local.add(pkt.len()),
            Err(_) => self.counters.drop(DropReason::IoError),
        }
    }

    /// Writes what the coalescer holds, if anything, with one `write(2)`.
    fn flush_coalesced(&mut self) {
        let Some(m) = self.coalescer.as_mut().and_then(Coalescer::finish) else {
            return;
        };
        let written = self.tun.write_raw(m.bytes).is_ok();
        let (packets, bytes) = (m.packets, m.packet_bytes);
        self.count_tun_write(written, packets, bytes);
    }

    /// Counts a verdict and carries out its action: a TUN write now, an underlay transmit at the
    /// end of the batch.
    fn carry_out(&mut self, verdict: Verdict, slot_index: usize, slot: &[u8]) {
        if let Some(reason) = verdict.drop_reason() {
            self.counters.drop(reason);
        }
        if matches!(verdict, Verdict::Reply { .. }) {
            self.counters.replies += 1;
        }
        match verdict.action() {
            None => {}
            Some(Action::Deliver { port, start, len }) => {
                let bytes = start.checked_add(len).and_then(|end| slot.get(start..end));
                match bytes {
                    Some(pkt) if port == self.tun_port => self.deliver_tun(pkt),
                    // A pod port: sent at the end of the batch, behind a zero virtio-net header.
                    Some(_)
                        if self.pods.get(port).is_some()
                            && self.pod_pending.len() < self.pod_pending.capacity() =>
                    {
                        if self.admit_to_pod(port, len, 1) {
                            self.pod_pending.push(PodSend {
                                port,
                                slot: slot_index,
                                start,
                                len,
                            });
                        }
                    }
                    _ => self.counters.drop(DropReason::IoError),
                }
            }
            Some(Action::Transmit {
                next_hop,
                start,
                len,
                encap,
            }) => {
                let in_slot = start.checked_add(len).is_some_and(|end| end <= slot.len());
                if in_slot && self.pending.len() < self.pending.capacity() {
                    self.pending.push(Pending {
                        next_hop,
                        slot: slot_index,
                        start,
                        len,
                        encap,
                    });
                } else {
                    self.counters.drop(DropReason::IoError);
                }
            }
        }
    }

    /// The end of every drain: what the batch holds for the underlay and the pod ports leaves,
    /// then what the coalescers hold for the TUN.
    fn end_batch(&mut self, slots: &Slots) {
        self.flush(slots);
        self.flush_coalesced();
    }

    /// Sends the batch's underlay transmits and counts the outcome: VXLAN through the UDP
    /// sender (same-flow runs as GSO trains), anything else through the raw socket, each with
    /// `sendmmsg(2)`.
    fn flush(&mut self, slots: &Slots) {
        self.flush_pods(slots);
        if self.pending.is_empty() {
            return;
        }
        let vxlan = |p: &&Pending| matches!(p.encap, Encap::Vxlan { .. });
        if self.pending.iter().any(|p| vxlan(&p)) {
            let report = self
                .vxlan_tx
                .send_iter(self.pending.iter().filter(vxlan).map(|p| {
                    let bytes = slots.bytes(p.slot, p.start, p.len);
                    let (flow, dport) = match p.encap {
                        Encap::Vxlan { src_port, dst_port } => (src_port, dst_port),
                        _ => (0, 0),
                    };
                    Datagram {
                        dst: SocketAddrV4::new(p.next_hop, dport),
                        flow,
                        payload: bytes.get(VXLAN_UDP_PAYLOAD_OFFSET..).unwrap_or(&[]),
                        tail: &[],
                    }
                }));
            self.count_sent(&report);
        }
        if self.pending.iter().any(|p| !vxlan(&p)) {
            let report = self.raw.send_iter(
                self.pending
                    .iter()
                    .filter(|p| !vxlan(p))
                    .map(|p| (p.next_hop, slots.bytes(p.slot, p.start, p.len))),
            );
            self.count_sent(&report);
        }
        self.pending.clear();
    }

    /// Sends the batch's deliveries to pod ports, one `sendmmsg(2)` per run of the same port.
    fn flush_pods(&mut self, slots: &Slots) {
        let mut i = 0;
        while i < self.pod_pending.len() {
            let port = self.pod_pending[i].port;
            let run = self.pod_pending[i..]
                .iter()
                .take_while(|p| p.port == port)
                .take(sys::SEND_CHUNK)
                .count();
            let mut frames: [&[u8]; sys::SEND_CHUNK] = [&[]; sys::SEND_CHUNK];
            let mut bytes = 0;
            for (f, p) in frames.iter_mut().zip(&self.pod_pending[i..i + run]) {
                *f = slots.bytes(p.slot, p.start, p.len);
                bytes += p.len;
            }
            let sent = self
                .pods
                .get(port)
                .map_or(Ok(0), |p| p.send_batch(&PLAIN, &frames[..run]));
            match sent {
                Ok(n) if n == run => {
                    self.counters.tx_local.packets += run as u64;
                    self.counters.tx_local.bytes += bytes as u64;
                }
                Ok(n) => {
                    self.counters.tx_local.packets += n as u64;
                    self.counters.drops[DropReason::IoError.index()] += (run - n) as u64;
                }
                Err(_) => self.counters.drops[DropReason::IoError.index()] += run as u64,
            }
            i += run;
        }
        self.pod_pending.clear();
    }

    fn count_sent(&mut self, report: &SendReport) {
        self.counters.tx_underlay.packets += report.sent as u64;
        self.counters.tx_underlay.bytes += report.sent_bytes as u64;
        self.counters.drops[DropReason::IoError.index()] += report.dropped as u64;
        if report.gso_disabled.is_some() {
            self.counters.gso_fallbacks += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_fits_a_jumbo_frame_behind_the_headroom() {
        let c = WorkerConfig::default();
        assert_eq!(c.batch, 64);
        assert_eq!(c.slot_size, HEADROOM + 9216);
        assert_eq!(c.tun_read_size, VNET_HDR_LEN + 65_535);
        assert!(c.coalesce);
        assert!(c.validate().is_ok());
        assert!(WorkerConfig {
            tun_read_size: VNET_HDR_LEN,
            ..c
        }
        .validate()
        .is_err());
        assert!(WorkerConfig { batch: 0, ..c }.validate().is_err());
        assert!(WorkerConfig {
            slot_size: HEADROOM,
            ..c
        }
        .validate()
        .is_err());
    }
}
