//! Kubernetes NetworkPolicy, from the API's objects to the dataplane's compiled rules.
//!
//! - [`selector`]: label selectors (`matchLabels`, `matchExpressions`), checked and matched.
//! - [`compile`](mod@compile): NetworkPolicies, Pods and Namespaces to the
//!   [`PolicySet`](dataplane::policy::PolicySet) of one node: which local pods are isolated in
//!   which direction, and by which rules; named ports resolved, `ipBlock`s cut, selectors
//!   evaluated. The module docs state the semantics and where Kubernetes leaves a choice.
//! - [`manifests`]: a directory of YAML manifests, the policy source of the etcd and static
//!   datastores, and [`watch`], which follows it.
//! - [`kube`](mod@kube): the Kubernetes source, watchers of Pods, Namespaces and NetworkPolicies,
//!   and the gate that holds a CNI ADD until its pod is known.
//! - [`state`]: the manifests joined with this node's pods and compiled at each publish;
//!   [`explain`]: `weftctl policy`.
//!
//! The dataplane side (the decision, conntrack, the stateful filter) is `dataplane::policy`.
//! `control/tests/netpol_model.rs` runs the upstream NetworkPolicy e2e suite's truth-table model
//! (`crate::tooling::netpol_model`) through [`compile()`] and the dataplane's decision.

pub mod compile;
pub mod explain;
pub mod kube;
pub mod manifests;
pub mod selector;
pub mod state;
pub mod watch;

pub use compile::{compile, compile_with, CompileError, CompileOptions};
pub use manifests::{LoadError, Manifests};
pub use state::{LocalPod, PolicyState};
