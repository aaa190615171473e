//! The configuration file: defaults, every validation error, the example file, the VTEP MAC.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the test failing

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use control::autodetect::AutodetectMethod;
use control::config::{
    vtep_mac_for, BackendKind, Config, ConfigError, Encapsulation, Mtu, PublicAddress,
    DEFAULT_CONTROL_SOCKET,
};
use dataplane::wire::EthernetAddress;

const MINIMAL: &str = r#"
[node]
name = "node-a"
subnet = "10.244.1.0/24"
"#;

fn with_node(extra: &str) -> String {
    format!("[node]\nname = \"node-a\"\nsubnet = \"10.244.1.0/24\"\n{extra}")
}

fn err(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("accepted invalid config:\n{text}\nas {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(text: &str, expected: &[&str]) {
    let msg = err(text);
    for part in expected {
        assert!(msg.contains(part), "error {msg:?} lacks {part:?}");
    }
}

fn peer(name: &str, ip: &str, subnet: &str) -> String {
    format!("[[peers]]\nname = \"{name}\"\npublic_ip = \"{ip}\"\nsubnet = \"{subnet}\"\n")
}

#[test]
fn minimal_file_gets_every_default() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.node.name, "node-a");
    assert_eq!(
        c.node.public_address,
        PublicAddress::Autodetect(AutodetectMethod::FirstFound)
    );
    assert_eq!(c.node.subnet, Some("10.244.1.0/24".parse().unwrap()));
    assert_eq!(c.network.network, "10.244.0.0/16".parse().unwrap());
    assert!(
        c.network.ip_masq,
        "egress masquerade is on by default, as flannel's --ip-masq in its manifest"
    );
    assert_eq!(c.network.masq_backend, control::masq::BackendChoice::Auto);
    assert_eq!(c.backend.kind, BackendKind::Vxlan);
    assert_eq!(c.backend.vni, 1);
    assert_eq!(c.backend.port, 8472);
    assert_eq!(c.backend.mtu, Mtu::Auto);
    assert_eq!(c.dataplane.workers, 0);
    assert_eq!(c.dataplane.bridge, "weft0");
    assert_eq!(
        c.dataplane.control_socket,
        PathBuf::from(DEFAULT_CONTROL_SOCKET)
    );
    assert!(c.dataplane.offload, "TUN offloads are on by default");
    assert!(
        c.dataplane.gso && c.dataplane.gro,
        "UDP GSO and GRO are on by default"
    );
    assert_eq!(c.dataplane.busy_poll_us, 200);
    assert_eq!(
        c.dataplane.cpu_wakeup_latency_us, None,
        "no PM QoS request by default"
    );
    assert!(c.peers.is_empty());
    assert_eq!(c.tunnel_mtu(1500), 1450);
    assert_eq!(c.vtep_mac(), vtep_mac_for("node-a"));
}

#[test]
fn explicit_values_are_kept() {
    let text = r#"
[node]
name = "n1"
public_ip = "192.168.50.1"
subnet = "10.50.7.0/26"
[network]
network = "10.50.0.0/16"
[backend]
type = "vxlan"
vni = 16777215
port = 4789
mtu = 1400
[dataplane]
workers = 3
bridge = "br-pods"
control_socket = "/tmp/w.sock"
[[peers]]
name = "n2"
public_ip = "192.168.50.2"
subnet = "10.50.7.64/26"
vtep_mac = "0E:00:00:00:00:02"
"#;
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(
        c.node.public_address,
        PublicAddress::Static(Ipv4Addr::new(192, 168, 50, 1))
    );
    assert_eq!(c.backend.vni, 16_777_215);
    assert_eq!(c.backend.port, 4789);
    assert_eq!(c.backend.mtu, Mtu::Fixed(1400));
    assert_eq!(c.tunnel_mtu(9000), 1400);
    assert_eq!(c.dataplane.workers, 3);
    assert_eq!(c.dataplane.bridge, "br-pods");
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.peers[0].vtep_mac, EthernetAddress([0x0e, 0, 0, 0, 0, 2]));
}

#[test]
fn autodetect_methods_parse() {
    for (s, m) in [
        ("first-found", AutodetectMethod::FirstFound),
        (
            "can-reach=1.2.3.4",
            AutodetectMethod::CanReach(Ipv4Addr::new(1, 2, 3, 4)),
        ),
        (
            "interface=eth.*",
            AutodetectMethod::Interface(regex::Regex::new("eth.*").unwrap()),
        ),
    ] {
        let c = Config::from_toml_str(&with_node(&format!("autodetect = \"{s}\""))).unwrap();
        assert_eq!(c.node.public_address, PublicAddress::Autodetect(m));
    }
}

#[test]
fn peer_mac_defaults_to_the_derived_one() {
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}{}",
        peer("node-b", "192.168.50.2", "10.244.2.0/24")
    ))
    .unwrap();
    assert_eq!(c.peers[0].vtep_mac, vtep_mac_for("node-b"));
}

#[test]
fn vtep_mac_is_stable_local_unicast_and_distinct() {
    // Golden values: the derivation is a wire contract (peers cache the MAC), never change it.
    assert_eq!(vtep_mac_for("node-a"), vtep_mac_for("node-a"));
    let golden_a = vtep_mac_for("node-a").to_string();
    let golden_b = vtep_mac_for("node-b").to_string();
    assert_eq!(golden_a, GOLDEN_NODE_A, "vtep_mac_for(\"node-a\") changed");
    assert_eq!(golden_b, GOLDEN_NODE_B, "vtep_mac_for(\"node-b\") changed");
    let mut seen = std::collections::HashSet::new();
    for i in 0..10_000 {
        let mac = vtep_mac_for(&format!("node-{i}"));
        assert!(mac.is_unicast() && mac.is_local(), "{mac}");
        assert!(seen.insert(mac), "collision at node-{i}");
    }
}

const GOLDEN_NODE_A: &str = "1e:fa:10:51:e4:d1";
const GOLDEN_NODE_B: &str = "d2:dc:6e:ac:c8:c1";

#[test]
fn example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/weftd.example.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.node.name, "node-a");
    assert_eq!(c.peers.len(), 2);
    assert_eq!(c.peers[1].name, "node-c");
}

#[test]
fn rendering_fills_defaults_and_round_trips() {
    let text = format!(
        "{MINIMAL}{}",
        peer("node-b", "192.168.50.2", "10.244.2.0/24")
    );
    let c = Config::from_toml_str(&text).unwrap();
    let rendered = c.to_toml_string();
    for key in [
        "network = \"10.244.0.0/16\"",
        "vni = 1",
        "port = 8472",
        "mtu = \"auto\"",
        "workers = 0",
        "bridge = \"weft0\"",
        "offload = true",
        "autodetect = \"first-found\"",
        "vtep_mac = ",
    ] {
        assert!(rendered.contains(key), "{key:?} missing from\n{rendered}");
    }
    assert_eq!(Config::from_toml_str(&rendered).unwrap(), c);

    let fixed = Config::from_toml_str(&with_node(
        "public_ip = \"10.0.0.1\"\n[backend]\nmtu = 1400",
    ))
    .unwrap();
    assert_eq!(
        Config::from_toml_str(&fixed.to_toml_string()).unwrap(),
        fixed
    );
}

#[test]
fn missing_file_names_the_path() {
    let e = Config::load("/nonexistent/weftd.toml").unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/weftd.toml"), "{e}");
}

#[test]
fn toml_errors_keep_line_and_key() {
    // Syntax error: line and column.
    assert_err(
        "[node]\nname = \"a\nsubnet = \"10.244.1.0/24\"\n",
        &["line 2"],
    );
    // Unknown key: named.
    assert_err(&with_node("colour = \"blue\""), &["colour"]);
    assert_err(&format!("{MINIMAL}[backend]\nvnid = 3\n"), &["vnid"]);
    assert_err(&format!("{MINIMAL}[bogus]\nx = 1\n"), &["bogus"]);
    // Missing required keys.
    assert_err("[node]\nsubnet = \"10.244.1.0/24\"\n", &["name"]);
    assert_err("[node]\nname = \"a\"\n", &["subnet"]);
    assert_err("[network]\n", &["node"]);
    // Wrong type.
    assert_err(
        &format!("{MINIMAL}[backend]\nvni = \"one\"\n"),
        &["backend.vni: "],
    );
}

#[test]
fn node_errors_name_the_field() {
    assert_err(
        &with_node("public_ip = \"1.2.3.4\"\nautodetect = \"first-found\""),
        &["node:", "not both"],
    );
    assert_err(
        &with_node("public_ip = \"1.2.3\""),
        &["node.public_ip:", "1.2.3"],
    );
    assert_err(&with_node("public_ip = \"0.0.0.0\""), &["node.public_ip:"]);
    assert_err(
        &with_node("autodetect = \"cidr=10.0.0.0/8\""),
        &["node.autodetect:", "first-found"],
    );
    assert_err(
        &with_node("autodetect = \"can-reach=foo\""),
        &["node.autodetect:", "can-reach"],
    );
    assert_err(
        &with_node("autodetect = \"interface=(\""),
        &["node.autodetect:", "regular expression"],
    );
    assert_err(
        "[node]\nname = \" \"\nsubnet = \"10.244.1.0/24\"\n",
        &["node.name:", "empty"],
    );
    let sub = |s: &str| format!("[node]\nname = \"a\"\nsubnet = \"{s}\"\n");
    assert_err(&sub("10.244.1.0"), &["node.subnet:", "CIDR"]);
    assert_err(
        &sub("10.244.1.5/24"),
        &["node.subnet:", "host bits", "10.244.1.0/24"],
    );
    assert_err(&sub("10.244.1.0/31"), &["node.subnet:", "too small", "/30"]);
    assert_err(
        &sub("10.245.1.0/24"),
        &["node.subnet: 10.245.1.0/24 is not inside network 10.244.0.0/16"],
    );
    assert_err(&sub("10.244.0.0/16"), &["node.subnet:", "not inside"]);
}

#[test]
fn network_errors_name_the_field() {
    assert_err(
        &format!("{MINIMAL}[network]\nnetwork = \"10.244.0.0/33\"\n"),
        &["network.network:"],
    );
    assert_err(
        &format!("{MINIMAL}[network]\nnetwork = \"10.244.0.1/16\"\n"),
        &["network.network:", "host bits"],
    );
    assert_err(
        "[node]\nname = \"a\"\nsubnet = \"10.0.0.0/30\"\n[network]\nnetwork = \"10.0.0.0/29\"\n",
        &["network.network:", "/28"],
    );
}

#[test]
fn backend_errors_name_the_field() {
    let b = |s: &str| format!("{MINIMAL}[backend]\n{s}\n");
    assert_err(
        &b("type = \"wireguard\""),
        &["backend.type:", "wireguard", "\"ipip\""],
    );
    assert_err(
        &b("type = \"ipip\"\nencapsulation = \"crosssubnet\""),
        &["backend.encapsulation:", "CrossSubnet"],
    );
    assert_err(
        &b("type = \"host-gw\"\nencapsulation = \"Always\""),
        &["backend.encapsulation:", "host-gw"],
    );
    for (text, kind, encap, mtu) in [
        (
            "type = \"ipip\"",
            BackendKind::Ipip,
            Encapsulation::Always,
            1480,
        ),
        (
            "type = \"ipip\"\nencapsulation = \"CrossSubnet\"",
            BackendKind::Ipip,
            Encapsulation::CrossSubnet,
            1480,
        ),
        (
            "encapsulation = \"Never\"",
            BackendKind::Vxlan,
            Encapsulation::Never,
            1450,
        ),
        (
            "type = \"host-gw\"",
            BackendKind::HostGw,
            Encapsulation::Never,
            1500,
        ),
    ] {
        let c = Config::from_toml_str(&b(text)).expect(text);
        assert_eq!(
            (c.backend.kind, c.backend.encapsulation),
            (kind, encap),
            "{text}"
        );
        assert_eq!(c.tunnel_mtu(1500), mtu, "{text}");
        let again = Config::from_toml_str(&c.to_toml_string()).expect("round trip");
        assert_eq!(again, c, "{text}");
    }
    assert_err(
        &b("vni = 16777216"),
        &["backend.vni:", "16777216", "0..=16777215"],
    );
    assert_err(&b("vni = -1"), &["backend.vni:"]);
    assert_err(&b("port = 0"), &["backend.port:"]);
    assert_err(&b("port = 65536"), &["backend.port:"]);
    assert_err(&b("mtu = 575"), &["backend.mtu:", "576..=8950"]);
    assert_err(&b("mtu = 8951"), &["backend.mtu:"]);
    assert_err(&b("mtu = \"big\""), &["backend.mtu:", "auto"]);
    assert_err(&b("mtu = 1400.5"), &["backend.mtu:"]);
    assert!(Config::from_toml_str(&b("vni = 0\nmtu = 576")).is_ok());
    assert!(Config::from_toml_str(&b("mtu = 8950")).is_ok());
}

#[test]
fn dataplane_errors_name_the_field() {
    let d = |s: &str| format!("{MINIMAL}[dataplane]\n{s}\n");
    assert_err(&d("workers = -1"), &["dataplane.workers:"]);
    assert_err(&d("workers = 100000"), &["dataplane.workers:"]);
    assert_err(
        &d("bridge = \"a-very-long-bridge-name\""),
        &["dataplane.bridge:", "1-15"],
    );
    assert_err(&d("bridge = \"\""), &["dataplane.bridge:"]);
    assert_err(&d("bridge = \"br/0\""), &["dataplane.bridge:"]);
    assert_err(&d("bridge = \"weft.1\""), &["dataplane.bridge:", "TUN"]);
    assert_err(
        &d("control_socket = \"weftd.sock\""),
        &["dataplane.control_socket:", "absolute"],
    );
    assert_err(&d("offload = \"yes\""), &["offload"]);
    let off = Config::from_toml_str(&d("offload = false")).unwrap();
    assert!(!off.dataplane.offload);
    assert_err(&d("busy_poll_us = -1"), &["dataplane.busy_poll_us:"]);
    assert_err(&d("busy_poll_us = 100001"), &["dataplane.busy_poll_us:"]);
    let knobs = Config::from_toml_str(&d("gso = false\ngro = false\nbusy_poll_us = 0"))
        .expect("offload knobs parse");
    assert!(!knobs.dataplane.gso && !knobs.dataplane.gro);
    assert_eq!(knobs.dataplane.busy_poll_us, 0);
    assert_err(
        &d("cpu_wakeup_latency_us = -1"),
        &["dataplane.cpu_wakeup_latency_us:"],
    );
    let held = Config::from_toml_str(&d("cpu_wakeup_latency_us = 0")).expect("latency parses");
    assert_eq!(held.dataplane.cpu_wakeup_latency_us, Some(0));
    assert_eq!(Config::from_toml_str(&held.to_toml_string()).unwrap(), held);
    assert!(off.to_toml_string().contains("offload = false"));
    assert_eq!(Config::from_toml_str(&off.to_toml_string()).unwrap(), off);
}

#[test]
fn peer_errors_name_the_field() {
    let p = |peers: &[String]| format!("{MINIMAL}{}", peers.concat());
    let b = peer("node-b", "192.168.50.2", "10.244.2.0/24");
    assert_err(
        &p(&[b.clone(), peer("node-c", "192.168.50.3", "10.245.0.0/24")]),
        &["peers[1].subnet: 10.245.0.0/24 is not inside network 10.244.0.0/16"],
    );
    assert_err(
        &p(&[peer("node-b", "192.168.50.2", "10.244.1.0/25")]),
        &[
            "peers[0].subnet:",
            "10.244.1.0/25",
            "overlaps",
            "node.subnet",
        ],
    );
    assert_err(
        &p(&[peer("node-b", "192.168.50.2", "10.244.0.0/23")]),
        &["peers[0].subnet:", "overlaps", "node.subnet"],
    );
    assert_err(
        &p(&[b.clone(), peer("node-c", "192.168.50.3", "10.244.2.128/25")]),
        &["peers[1].subnet:", "overlaps", "peers[0].subnet"],
    );
    assert_err(
        &p(&[b.clone(), peer("node-b", "192.168.50.3", "10.244.3.0/24")]),
        &["peers[1].name:", "node-b", "peers[0].name"],
    );
    assert_err(
        &p(&[peer("node-a", "192.168.50.3", "10.244.3.0/24")]),
        &["peers[0].name:", "node.name"],
    );
    assert_err(
        &p(&[peer("node-b", "192.168.50", "10.244.2.0/24")]),
        &["peers[0].public_ip:"],
    );
    assert_err(
        &p(&[peer("node-b", "192.168.50.2", "10.244.2.0/31")]),
        &["peers[0].subnet:", "too small"],
    );
    let with_mac = |mac: &str| format!("{b}vtep_mac = \"{mac}\"\n");
    assert_err(
        &p(&[with_mac("0e:00:00:00:00")]),
        &["peers[0].vtep_mac:", "invalid MAC"],
    );
    assert_err(
        &p(&[with_mac("zz:00:00:00:00:01")]),
        &["peers[0].vtep_mac:"],
    );
    assert_err(
        &p(&[with_mac("01:00:5e:00:00:01")]),
        &["peers[0].vtep_mac:", "unicast"],
    );
    assert_err(
        &p(&[with_mac("00:00:00:00:00:00")]),
        &["peers[0].vtep_mac:"],
    );
    assert_err(
        &p(&[with_mac(&vtep_mac_for("node-a").to_string())]),
        &["peers[0].vtep_mac:", "node"],
    );
    let c = format!(
        "{}vtep_mac = \"{}\"\n",
        peer("node-c", "192.168.50.3", "10.244.3.0/24"),
        vtep_mac_for("node-b")
    );
    assert_err(
        &p(&[b.clone(), c]),
        &["peers[1].vtep_mac:", "peers[0].vtep_mac"],
    );
    assert_err(
        &format!("{MINIMAL}[[peers]]\nname = \"x\"\n"),
        &["public_ip"],
    );
}

#[test]
fn datastore_defaults_are_flannels() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.datastore.kind, control::datastore::DatastoreKind::Static);
    assert_eq!(
        c.datastore.subnet_file,
        PathBuf::from("/run/flannel/subnet.env")
    );
    let e = &c.datastore.etcd;
    assert_eq!(e.endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(e.prefix, "/coreos.com/network");
    assert_eq!((e.lease_ttl, e.renew_margin), (86400, 3600));
    assert_eq!(c.health.listen, Some("0.0.0.0:9472".parse().unwrap()));
}

#[test]
fn etcd_datastore_takes_the_subnet_from_the_lease() {
    let text = "[node]\nname = \"a\"\n[datastore]\ntype = \"etcd\"\n[datastore.etcd]\nendpoints = [\"https://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\nprefix = \"/my/net/\"\nlease_ttl = 60\nrenew_margin = 20\n[health]\nlisten = \"off\"\n";
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(c.node.subnet, None);
    assert_eq!(c.datastore.etcd.prefix, "/my/net");
    assert_eq!(c.health.listen, None);
    // Round trip through the rendered form.
    assert_eq!(Config::from_toml_str(&c.to_toml_string()).unwrap(), c);
    // A short TTL gets a margin of half of it by default.
    let short = Config::from_toml_str(
        "[node]\nname = \"a\"\n[datastore]\ntype = \"etcd\"\n[datastore.etcd]\nlease_ttl = 10\n",
    )
    .unwrap();
    assert_eq!(short.datastore.etcd.renew_margin, 5);
}

#[test]
fn datastore_errors_name_the_field() {
    let etcd = |extra: &str| format!("[node]\nname = \"a\"\n[datastore]\ntype = \"etcd\"\n{extra}");
    assert_err(
        "[node]\nname = \"a\"\n[datastore]\ntype = \"zookeeper\"\n",
        &["datastore.type:", "\"etcd\""],
    );
    assert_err(
        "[node]\nname = \"a\"\nsubnet = \"10.244.1.0/24\"\n[datastore]\ntype = \"etcd\"\n",
        &["node.subnet:", "lease"],
    );
    assert_err(
        "[node]\nname = \"a\"\nsubnet = \"10.244.1.0/24\"\n[datastore]\ntype = \"kubernetes\"\n",
        &["node.subnet:", "podCIDR"],
    );
    assert_err(
        &format!("{}{}", etcd(""), peer("b", "192.168.1.2", "10.244.2.0/24")),
        &["peers:", "static"],
    );
    assert_err(
        &etcd("[datastore.etcd]\nendpoints = []\n"),
        &["datastore.etcd.endpoints:"],
    );
    assert_err(
        &etcd("[datastore.etcd]\nendpoints = [\"10.0.0.1:2379\"]\n"),
        &["datastore.etcd.endpoints[0]:", "http://"],
    );
    assert_err(
        &etcd("[datastore.etcd]\nprefix = \"coreos.com\"\n"),
        &["datastore.etcd.prefix:"],
    );
    assert_err(
        &etcd("[datastore.etcd]\ncert_file = \"/c.pem\"\n"),
        &["cert_file and key_file"],
    );
    assert_err(
        &etcd("[datastore.etcd]\npassword = \"x\"\n"),
        &["datastore.etcd.username:"],
    );
    assert_err(
        &etcd("[datastore.etcd]\nlease_ttl = 60\nrenew_margin = 60\n"),
        &["datastore.etcd.renew_margin:", "out of range"],
    );
    assert_err(
        &etcd("[datastore.etcd]\nlease_ttl = 1\n"),
        &["datastore.etcd.lease_ttl:"],
    );
    assert_err(&etcd("[datastore.etcd]\nbogus = 1\n"), &["bogus"]);
    assert_err(
        &with_node("[health]\nlisten = \"9472\"\n"),
        &["health.listen:", "address:port"],
    );
    assert_err(
        "[node]\nname = \"a\"\n",
        &["node.subnet:", "missing", "static"],
    );
}

#[test]
fn cni_section_defaults_errors_and_round_trip() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert!(c.cni.enabled, "the CNI server is on by default");
    assert_eq!(
        c.cni.socket,
        PathBuf::from(control::config::DEFAULT_CNI_SOCKET)
    );
    assert_eq!(c.cni.socket, PathBuf::from(cni_shim::DEFAULT_SOCKET));
    assert_eq!(
        c.cni.data_dir,
        PathBuf::from(control::config::DEFAULT_DATA_DIR)
    );
    let d = |s: &str| format!("{MINIMAL}[cni]\n{s}\n");
    assert_err(&d("socket = \"cni.sock\""), &["cni.socket:", "absolute"]);
    assert_err(&d("data_dir = \"state\""), &["cni.data_dir:", "absolute"]);
    assert_err(&d("enabled = 1"), &["enabled"]);
    assert_err(&d("sockets = \"/x\""), &["sockets"]);
    assert_err(
        &d("socket = \"/run/weft/weftd.sock\""),
        &["cni.socket:", "control_socket"],
    );
    let c = Config::from_toml_str(&d(
        "enabled = false\nsocket = \"/run/w/c.sock\"\ndata_dir = \"/srv/weft\"",
    ))
    .unwrap();
    assert!(!c.cni.enabled);
    assert_eq!(c.cni.data_dir, PathBuf::from("/srv/weft"));
    let rendered = c.to_toml_string();
    assert!(rendered.contains("[cni]"), "{rendered}");
    assert_eq!(Config::from_toml_str(&rendered).unwrap(), c);
}

#[test]
fn ip_masq_must_be_a_boolean_and_masq_backend_a_known_tool() {
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}[network]\nip_masq = false\nmasq_backend = \"nftables\"\n"
    ))
    .unwrap();
    assert!(!c.network.ip_masq);
    assert_eq!(
        c.network.masq_backend,
        control::masq::BackendChoice::Nftables
    );
    assert_err(
        &format!("{MINIMAL}[network]\nip_masq = \"yes\"\n"),
        &["network.ip_masq: "],
    );
    assert_err(
        &format!("{MINIMAL}[network]\nip_masq = 1\n"),
        &["network.ip_masq: "],
    );
    assert_err(
        &format!("{MINIMAL}[network]\nmasq_backend = \"ipfw\"\n"),
        &["network.masq_backend", "ipfw", "iptables", "nftables"],
    );
    // Written out and read back alike.
    let back = Config::from_toml_str(&c.to_toml_string()).unwrap();
    assert_eq!(back, c);
}
