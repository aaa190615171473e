//! The static datastore: the peers listed in the config file (`[[peers]]`), as leases. Nothing
//! changes while the agent runs; editing the file and restarting the agent is how peers change.

use crate::config::Config;

use super::Lease;

/// The leases the config file lists: one per `[[peers]]` table, each taken to run this node's
/// backend (VXLAN with the config's VNI and the peer's VTEP MAC).
pub fn leases(cfg: &Config) -> Vec<Lease> {
    cfg.peers
        .iter()
        .filter(|p| p.name != cfg.node.name)
        .map(|p| Lease {
            subnet: p.subnet,
            public_ip: p.public_ip,
            backend_type: cfg.backend.kind.name().to_string(),
            vni: Some(cfg.backend.vni),
            vtep_mac: Some(p.vtep_mac),
            expiration: None,
        })
        .collect()
}
