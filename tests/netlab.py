"""Test hosts with their own network addresses, on this machine only.

Where the machine allows it (root, `ip netns`), each host is a network
namespace wired to a private bridge by a veth pair, with its own address and,
through a UTS namespace, its own hostname; otherwise each host gets a distinct
loopback address (127.0.0.x) and shares this machine's hostname. Traffic never
leaves the machine: the bridge has no uplink and the addresses are only on
interfaces made here. Everything made is removed on exit, even after a
failure, and leftovers of an earlier run that died are removed on start.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

from wasmq.process import Child

NETNS = "netns"
LOOPBACK = "loopback"


@dataclass
class Host:
    name: str
    address: str
    netns: str = ""

    def argv(self, command: list[str]) -> list[str]:
        """Run `command` on this host (its namespace and hostname)."""
        if not self.netns:
            return command
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.name, *command]

    def kill_all(self, proc: Child) -> None:
        """SIGKILL the host: every process in its namespace, at once (on a loopback
        host, `proc`'s process group)."""
        if self.netns:
            pids = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                                  text=True, timeout=30).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            proc.signal(signal.SIGKILL)


@dataclass
class Lab:
    mode: str
    hosts: dict[str, Host] = field(default_factory=dict)
    bridge: str = ""
    gateway_address: str = ""  # this machine's address on the bridge
    _made: list[list[str]] = field(default_factory=list)

    @classmethod
    def create(cls, names: list[str], netns: bool = True) -> "Lab":
        if netns and _netns_possible():
            _remove_leftovers()
            lab = cls(NETNS)
            try:
                lab._build(names)
                return lab
            except (subprocess.CalledProcessError, OSError):
                lab.close()
        lab = cls(LOOPBACK)
        for i, name in enumerate(names):
            lab.hosts[name] = Host(name, f"127.0.0.{i + 2}")
        return lab

    def describe(self) -> str:
        where = ", ".join(f"{h.name}={h.address}" for h in self.hosts.values())
        if self.mode == NETNS:
            return (f"network namespaces on bridge {self.bridge} "
                    f"(this machine {self.gateway_address}): {where}")
        return f"loopback addresses, one hostname (no network namespaces here): {where}"

    def _build(self, names: list[str]) -> None:
        tag = f"wqlab{os.getpid()}"
        subnet = _free_subnet()
        hosts = list(subnet.hosts())
        self.bridge = f"{tag}b"[-15:]
        self.gateway_address = str(hosts[0])
        prefix = subnet.prefixlen
        self._run(["ip", "link", "add", self.bridge, "type", "bridge"],
                  undo=["ip", "link", "del", self.bridge])
        self._run(["ip", "addr", "add", f"{self.gateway_address}/{prefix}", "dev",
                   self.bridge])
        self._run(["ip", "link", "set", self.bridge, "up"])
        for i, name in enumerate(names):
            ns, veth = f"{tag}-{name}", f"{tag}v{i}"[-15:]
            address = str(hosts[i + 1])
            self._run(["ip", "netns", "add", ns], undo=["ip", "netns", "del", ns])
            self._run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                       "netns", ns], undo=["ip", "link", "del", veth])
            self._run(["ip", "link", "set", veth, "master", self.bridge, "up"])
            self._run(["ip", "-n", ns, "addr", "add", f"{address}/{prefix}", "dev", "eth0"])
            self._run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            self._run(["ip", "-n", ns, "link", "set", "lo", "up"])
            self.hosts[name] = Host(name, address, ns)

    def _run(self, argv: list[str], undo: list[str] | None = None) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        if undo:
            self._made.append(undo)

    def close(self) -> None:
        """Undo everything, last made first; stop the hosts' processes before."""
        while self._made:
            subprocess.run(self._made.pop(), capture_output=True, timeout=30)


def _netns_possible() -> bool:
    return (os.geteuid() == 0 and shutil.which("ip") is not None
            and shutil.which("unshare") is not None)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 no interface or route of this machine uses (namespaces of other
    test runs included)."""
    used = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                          text=True, timeout=30).stdout
    taken = {ipaddress.ip_network(m, strict=False)
             for m in re.findall(r"\b(\d+\.\d+\.\d+\.\d+/\d+)", used)}
    start = os.getpid() % 200
    for k in range(200):
        net = ipaddress.ip_network(f"10.213.{(start + k) % 200 + 20}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise OSError("no free 10.213.x.0/24 subnet for the test lab")


def _remove_leftovers() -> None:
    """Namespaces and bridges of earlier runs whose process is gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             timeout=30).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           timeout=30).stdout
    for kind, names in (("netns", re.findall(r"^(wqlab(\d+)-\S+)", listing, re.M)),
                        ("link", re.findall(r"^\d+: (wqlab(\d+)b)[:@]", links, re.M))):
        for name, pid in names:
            if not os.path.exists(f"/proc/{pid}"):
                argv = ["ip", "netns", "del", name] if kind == "netns" else \
                    ["ip", "link", "del", name]
                subprocess.run(argv, capture_output=True, timeout=30)
