//! Weft's node agent: turns datastore state (static file, etcd, Kubernetes) into dataplane table
//! snapshots and plumbs the node (TUN, bridge, routes).
//!
//! `unsafe` is denied everywhere but [`sys`], which holds the few syscall wrappers.
#![deny(unsafe_code)]

pub mod agent;
pub mod autodetect;
pub mod cni;
pub mod config;
pub mod cpu_latency;
pub mod ctl;
pub mod datastore;
pub mod direct_routes;
pub mod etcd;
pub mod forwarding;
pub mod health;
pub mod install_cni;
pub mod masq;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod policy;
pub mod show;
pub mod status;
pub mod subnet_env;
pub mod sys;
pub mod tooling;
