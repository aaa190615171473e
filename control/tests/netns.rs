//! Named network namespaces: creation compatible with `ip netns`, entering on a scoped thread,
//! spawning into one, and clean-up on drop. Needs root (fails otherwise).
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the test failing

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{ip, require_root, run, unique_name};
use control::netlink::Netlink;
use control::netns::{spawn_in_netns, NetNs, NetNsError};

fn current_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn listed(name: &str) -> bool {
    run("ip", &["netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn create_enter_and_drop_leaves_nothing() {
    require_root();
    let name = unique_name();
    let outer = current_netns();
    {
        let ns = NetNs::create(&name).unwrap();
        assert_eq!(ns.name(), name);
        assert!(ns.path().exists());
        assert!(listed(&name), "ip netns list does not show {name}");

        let (inner, links) = ns
            .run(|| (current_netns(), Netlink::new().unwrap().links().unwrap()))
            .unwrap();
        assert_ne!(inner, outer, "run() did not enter the namespace");
        assert_eq!(current_netns(), outer, "run() moved the calling thread");
        let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["lo"], "a fresh namespace holds only lo");
        assert!(links[0].loopback);

        // iproute2 sees the same namespace.
        assert!(ip(&name, &["-o", "link", "show"]).contains("lo:"));
    }
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert!(!listed(&name), "{name} still listed after drop");
}

#[test]
fn run_dir_is_a_shared_mount_like_iproute2_makes_it() {
    require_root();
    let _ns = NetNs::create(&unique_name()).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/run/netns"))
        .expect("/run/netns is a mount point");
    assert!(line.contains("shared:"), "/run/netns is not shared: {line}");
}

#[test]
fn keep_open_and_delete() {
    require_root();
    let name = unique_name();
    let mut ns = NetNs::create(&name).unwrap();
    ns.keep();
    drop(ns);
    assert!(listed(&name), "keep() did not keep {name}");

    let opened = NetNs::open(&name).unwrap();
    drop(opened);
    assert!(listed(&name), "dropping an opened namespace deleted it");

    let again = NetNs::open(&name).unwrap();
    again.delete().unwrap();
    assert!(!listed(&name));
    assert!(matches!(NetNs::open(&name), Err(NetNsError::Open { .. })));
}

#[test]
fn duplicate_and_invalid_names_are_refused() {
    require_root();
    let name = unique_name();
    let _ns = NetNs::create(&name).unwrap();
    let e = NetNs::create(&name).unwrap_err();
    assert!(matches!(e, NetNsError::Exists(_)), "{e}");
    assert!(matches!(
        NetNs::create("a/b"),
        Err(NetNsError::InvalidName(_))
    ));
    assert!(matches!(NetNs::create(""), Err(NetNsError::InvalidName(_))));
}

#[test]
fn spawned_child_runs_in_the_namespace() {
    require_root();
    let ns = NetNs::create(&unique_name()).unwrap();
    let child = spawn_in_netns(
        Command::new("ip")
            .args(["-o", "link", "show"])
            .stdout(Stdio::piped()),
        &ns,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let names: Vec<_> = stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .collect();
    assert_eq!(names, ["lo"], "child saw {stdout}");
}
