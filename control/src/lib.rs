//! Weft's node agent: turns datastore state (static file, etcd, Kubernetes) into dataplane table
//! snapshots and plumbs the node (TUN, bridge, routes). Filled by the weftd issues; empty for now.
#![forbid(unsafe_code)]
