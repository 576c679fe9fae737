"""The local services the tests start (scripts/dev-slurm, scripts/dev-db) are
reachable from this machine only: every listening socket of theirs is bound to
a loopback address, never to 0.0.0.0 or ::.
"""

import ipaddress
import re
import socket
from urllib.parse import urlsplit

import pytest
from support.databases import server_url
from support.slurm import slurm_conf  # noqa: F401 (fixture)

LISTEN = "0A"   # TCP_LISTEN in /proc/net/tcp{,6}


def listening_addresses(port):
    """Local addresses of the TCP sockets listening on ``port`` (IPv4 and IPv6)."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table, encoding="ascii").read().splitlines()[1:]
        except FileNotFoundError:   # no IPv6 in this kernel
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != LISTEN or int(hex_port, 16) != port or len(address) != width:
                continue
            # The kernel prints each 32-bit word in host (little-endian) byte order.
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, width, 8))
            found.append(ipaddress.ip_address(raw))
    return found


def slurm_ports(conf):
    text = open(conf, encoding="utf-8").read()
    ports = {}
    for key, default in (("SlurmctldPort", 6817), ("SlurmdPort", 6818)):
        match = re.search(rf"^{key}=(\d+)", text, re.MULTILINE)
        ports[key] = int(match.group(1)) if match else default
    return ports


def assert_loopback_only(port, what):
    addresses = listening_addresses(port)
    assert addresses, f"nothing listens on port {port} ({what})"
    exposed = [str(a) for a in addresses if not a.is_loopback]
    assert not exposed, f"{what} listens on {exposed} (port {port}), not on loopback only"


def test_local_slurm_listens_on_loopback_only(slurm_conf):
    for name, port in slurm_ports(slurm_conf).items():
        assert_loopback_only(port, name)


def test_local_mariadb_listens_on_loopback_only():
    assert_loopback_only(urlsplit(server_url("mariadb")).port, "MariaDB")


@pytest.mark.parametrize("bind,loopback", [("127.0.0.1", True), ("0.0.0.0", False),
                                           ("::1", True), ("::", False)])
@pytest.mark.unit  # in process
def test_the_check_tells_loopback_from_every_interface(bind, loopback):
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.bind((bind, 0))
        server.listen()
        addresses = listening_addresses(server.getsockname()[1])
    assert addresses == [ipaddress.ip_address(bind)]
    assert addresses[0].is_loopback is loopback
