//! Proxy ARP on pod ports, as Calico does (REFERENCE.md): the pod's gateway, and every address
//! beyond it, resolves to the port's own MAC, so every packet the pod sends comes to Weft.

use crate::drop::DropReason;
use crate::wire::{ethernet, ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame};

/// The sender hardware and protocol addresses of the ARP packet in the Ethernet frame `frame`, if
/// it is one.
pub fn sender(frame: &[u8]) -> Option<(EthernetAddress, std::net::Ipv4Addr)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let arp = ArpPacket::new_checked(eth.payload()).ok()?;
    match ArpRepr::parse(&arp).ok()? {
        ArpRepr::EthernetIpv4 {
            source_hardware_addr,
            source_protocol_addr,
            ..
        } => Some((source_hardware_addr, source_protocol_addr)),
    }
}

/// Turns the ARP request in the Ethernet frame `frame` into a reply from `mac`, in place, and
/// returns the reply's length. Requests for the asker's own address (duplicate-address probes and
/// gratuitous ARP) and everything that is not a request are not answered.
pub fn proxy_reply(frame: &mut [u8], mac: EthernetAddress) -> Result<usize, DropReason> {
    let (asker_mac, asker_ip, target_ip) = {
        let eth = EthernetFrame::new_checked(&*frame).map_err(|_| DropReason::Truncated)?;
        let arp = ArpPacket::new_checked(eth.payload()).map_err(|_| DropReason::Truncated)?;
        match ArpRepr::parse(&arp) {
            Ok(ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            }) if source_protocol_addr != target_protocol_addr
                && !source_protocol_addr.is_unspecified() =>
            {
                (
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                )
            }
            _ => return Err(DropReason::ArpIgnored),
        }
    };
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: target_ip,
        target_hardware_addr: asker_mac,
        target_protocol_addr: asker_ip,
    };
    let len = ethernet::HEADER_LEN + reply.buffer_len();
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..len]);
    eth.set_dst_addr(asker_mac);
    eth.set_src_addr(mac);
    reply.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    Ok(len)
}
