//! The agent side of CNI: the `weft` plugin (`cni-shim`) forwards every runtime call to this
//! server over a unix socket; here pods get their veth, address and routes.
//!
//! - [`ipam`]: the node subnet's allocator, persisted crash-safely under `[cni] data_dir`.

pub mod ipam;
