"""Two "nodes" on this machine for multi-node tests: network namespaces joined by a veth pair, or 127.0.0.1.

Each node gets its own network namespace (``ip netns add``) with one end of a
veth pair and a private address; nothing is configured outside the namespaces
and everything is removed at the end. Where the machine refuses namespaces
(no root, no iproute2) both nodes share 127.0.0.1 and ``kind`` says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    """One node: how to run a command on it, its address, and the interface gloo must use there."""

    prefix: tuple[str, ...]  # e.g. ("ip", "netns", "exec", name), or () on 127.0.0.1
    address: str
    interface: str
    namespace: str | None = None


@dataclass(frozen=True)
class Hosts:
    """The two nodes and which network path joins them."""

    nodes: tuple[Node, Node]
    kind: str  # "network namespaces over a veth pair" | "127.0.0.1 (namespaces refused: ...)"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def namespaces_left(tag: str) -> list[str]:
    """Namespaces whose name starts with ``tag`` (a test checks none survive it)."""
    if shutil.which("ip") is None:
        return []
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(tag)]


@contextlib.contextmanager
def two_hosts(tag: str | None = None) -> Iterator[Hosts]:
    """Two nodes joined by a veth pair in their own namespaces (or 127.0.0.1), removed on exit."""
    tag = tag or f"dsn{os.getpid() % 100000}"
    names = (f"{tag}a", f"{tag}b")
    links = (f"{tag}va", f"{tag}vb")
    subnet = f"10.{(os.getpid() // 250) % 250 + 1}.{os.getpid() % 250 + 1}"
    created: list[str] = []
    try:
        try:
            if shutil.which("ip") is None:
                raise OSError("iproute2's ip is not installed")
            for name in names:
                _ip("netns", "add", name)
                created.append(name)
            _ip("link", "add", links[0], "type", "veth", "peer", "name", links[1])
            for index, (name, link) in enumerate(zip(names, links, strict=True)):
                _ip("link", "set", link, "netns", name)
                _ip("-n", name, "addr", "add", f"{subnet}.{index + 1}/24", "dev", link)
                _ip("-n", name, "link", "set", link, "up")
                _ip("-n", name, "link", "set", "lo", "up")
        except (OSError, subprocess.CalledProcessError) as error:
            reason = getattr(error, "stderr", None) or str(error)
            _remove(created)
            created = []
            local = Node((), "127.0.0.1", "lo")
            yield Hosts((local, local), f"127.0.0.1 (namespaces refused: {reason.strip()})")
            return
        nodes = tuple(
            Node(("ip", "netns", "exec", name), f"{subnet}.{index + 1}", link, name)
            for index, (name, link) in enumerate(zip(names, links, strict=True))
        )
        yield Hosts(nodes, "network namespaces over a veth pair")
    finally:
        _remove(created)


def _remove(namespaces: list[str]) -> None:
    """Kill what still runs inside, then delete the namespaces (their veth ends go with them)."""
    for name in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=30).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
