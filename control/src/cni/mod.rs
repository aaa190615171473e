//! The agent side of CNI: the `weft` plugin (`cni-shim`) forwards every runtime call to this
//! server over a unix socket; here pods get their veth, address and routes.
//!
//! - [`server`]: the socket, one request per connection, readiness (STATUS), the verbs.
//! - [`ipam`]: the node subnet's allocator, persisted crash-safely under `[cni] data_dir`.
//! - [`plumbing`]: the veth pair, the pod address and default route, over netlink.
//!
//! The wire types and the CNI spec types live in the `cni-shim` crate, shared with the plugin.

pub mod ipam;
pub mod plumbing;
pub mod server;

pub use server::{CniContext, CniServer, CniServerError, SwitchPorts};
