//! Helpers for integration tests in network namespaces: unique names, cleanup in `Drop`.
//! Filled by the weftd issue, which brings the first test that needs real namespaces.
#![forbid(unsafe_code)]
