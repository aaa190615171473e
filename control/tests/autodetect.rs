//! Public address autodetection in a namespace laid out like a node: a docker bridge, a veth, and
//! the real uplink. Needs root (fails otherwise).
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the test failing

mod common;

use std::net::Ipv4Addr;

use common::{require_root, unique_name};
use control::autodetect::{detect, interface_of, AutodetectError, AutodetectMethod};
use control::netlink::Netlink;
use control::netns::NetNs;

fn method(s: &str) -> AutodetectMethod {
    s.parse().unwrap()
}

#[test]
fn methods_find_the_uplink_and_skip_virtual_interfaces() {
    require_root();
    let ns = NetNs::create(&unique_name()).unwrap();
    ns.run(|| {
        let nl = Netlink::new().unwrap();
        // Created first, so lower indexes: first-found must skip them by name.
        nl.create_bridge("docker0").unwrap();
        nl.add_address("docker0", "172.17.0.1/16".parse().unwrap())
            .unwrap();
        nl.set_up("docker0").unwrap();
        nl.create_veth("veth0", "veth1").unwrap();
        nl.add_address("veth0", "10.9.9.1/24".parse().unwrap())
            .unwrap();
        nl.set_up("veth0").unwrap();
        nl.set_up("veth1").unwrap();
        // The uplink, and a down interface with an address that must be ignored.
        nl.create_veth("down0", "down1").unwrap();
        nl.add_address("down0", "198.51.100.1/24".parse().unwrap())
            .unwrap();
        nl.create_veth("uplink0", "uplink1").unwrap();
        nl.set_mtu("uplink0", 1400).unwrap();
        nl.add_address("uplink0", "192.0.2.10/24".parse().unwrap())
            .unwrap();
        nl.set_up("uplink0").unwrap();
        nl.set_up("uplink1").unwrap();
        nl.set_up("lo").unwrap();

        let uplink = (Ipv4Addr::new(192, 0, 2, 10), "uplink0".to_string(), 1400);
        assert_eq!(detect(&AutodetectMethod::FirstFound).unwrap(), uplink);
        assert_eq!(detect(&method("can-reach=192.0.2.99")).unwrap(), uplink);
        assert_eq!(detect(&method("interface=^uplink")).unwrap(), uplink);
        // interface= overrides the exclusions: the user asked for a veth.
        let veth = detect(&method("interface=^veth0$")).unwrap();
        assert_eq!(veth.0, Ipv4Addr::new(10, 9, 9, 1));
        assert_eq!(veth.1, "veth0");

        assert!(matches!(
            detect(&method("interface=^eth")),
            Err(AutodetectError::NotFound { .. })
        ));
        // No default route in the namespace.
        assert!(matches!(
            detect(&method("can-reach=203.0.113.1")),
            Err(AutodetectError::Unreachable { .. })
        ));

        assert_eq!(
            interface_of(Ipv4Addr::new(172, 17, 0, 1)).unwrap(),
            ("docker0".to_string(), 1500)
        );
        assert!(matches!(
            interface_of(Ipv4Addr::new(192, 0, 2, 11)),
            Err(AutodetectError::NoInterfaceFor(_))
        ));
    })
    .unwrap();
}

#[test]
fn first_found_reports_an_empty_node() {
    require_root();
    let ns = NetNs::create(&unique_name()).unwrap();
    let e = ns
        .run(|| detect(&AutodetectMethod::FirstFound).unwrap_err())
        .unwrap();
    assert!(matches!(e, AutodetectError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("first-found"), "{e}");
}
