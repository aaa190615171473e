#!/usr/bin/env bash
# Installs the Debian packages the tests need, once: a package already installed is not asked for
# again, and a run that finds everything in place installs nothing and says so. Needs root (the
# tests need it too). Called by scripts/test.sh before anything is built or run; .ci/run calls
# scripts/test.sh.
set -euo pipefail

# Packages, by purpose:
#   iproute2, iputils-ping, kmod        namespaces, veth, vxlan peers, modprobe
#   iptables, nftables                  masquerade / portmap tests
#   etcd-server, etcd-client            flannel etcd-mode subnet leases (a real etcd on loopback)
#   iperf3                              throughput tests through the dataplane
#   containernetworking-plugins         reference CNI plugins (portmap, bandwidth, host-local)
#   tcpdump, tshark                     independent decoders for captured frames
#   python3                             fixture helpers
#   ethtool                             the harness's segmenting underlay (NIC-like offloads)
PACKAGES=(
    iproute2 iputils-ping kmod python3 iptables nftables
    etcd-server etcd-client iperf3 containernetworking-plugins
    tcpdump tshark ethtool
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "deps: all ${#PACKAGES[@]} test packages already installed; nothing to install"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "deps: missing packages: ${missing[*]}" >&2
    echo "deps: installing them needs root (the namespace tests need root too): run as root" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: missing packages: ${missing[*]}; apt-get not found (this script knows Debian only)" >&2
    exit 1
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark pulls in wireshark-common, which asks whether non-root users may capture.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
echo "deps: installed ${#missing[@]} packages"
