//! Tooling, not product: what `weftd demo`, `weftd bench`, `weftd bench-control`, `cni-bench`
//! and the integration tests build on. The agent (`weftd run`) never imports from here, and
//! `control/tests/module_graph.rs` checks that.
//!
//! - [`lab`]: a cluster in network namespaces on one machine: an underlay bridge, nodes running
//!   `weftd run` or kernel flannel's configuration, pods, outside hosts.
//! - [`etcd_server`]: a throwaway etcd (Debian's binary) on free ports, in a namespace or on
//!   loopback.
//! - [`ping`]: ICMP echo with microsecond timing, for RTT figures and reachability checks.
//! - [`demo`]: `weftd demo`, a three-node cluster whose pods ping and talk across it.
//! - [`harness`]: `weftd bench`, Weft against the kernel's VXLAN, routing and bridge, alternating.
//! - [`bench_control`]: `weftd bench-control`, etcd with thousands of leases.
//! - [`netpol_model`]: the upstream NetworkPolicy e2e suite's namespaces, pods and cases, as
//!   data for the model test and the namespace test.

pub mod bench_control;
pub mod demo;
pub mod etcd_server;
pub mod harness;
pub mod lab;
pub mod netpol_model;
pub mod ping;
