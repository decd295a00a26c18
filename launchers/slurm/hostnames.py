"""Slurm node lists: ``node[01-03,7],gpu-a`` -> one host name per line (what ``scontrol show hostnames`` prints).

Used by ``launchers/slurm/node.sh`` where ``scontrol`` is not on the PATH of the task; the standard
library only, so any Python runs it.

    python launchers/slurm/hostnames.py 'node[01-03,7],gpu-a'
"""

from __future__ import annotations

import re
import sys

_GROUP = re.compile(r"\[([^\]]*)\]")


def expand_hostlist(hostlist: str) -> list[str]:
    """Host names of a Slurm host list, in order; bracket groups (zero padding kept) may repeat in one name."""
    hosts: list[str] = []
    for item in _split_top_level(hostlist.strip()):
        hosts.extend(_expand_item(item))
    if not hosts:
        raise ValueError(f"empty Slurm host list: {hostlist!r}")
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise ValueError(f"unbalanced brackets in Slurm host list: {text!r}")
        if char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    if depth:
        raise ValueError(f"unbalanced brackets in Slurm host list: {text!r}")
    items.append(text[start:])
    return [item for item in items if item]


def _expand_item(item: str) -> list[str]:
    match = _GROUP.search(item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end() :]
    return [f"{head}{number}{rest}" for number in _expand_ranges(match.group(1), item) for rest in _expand_item(tail)]


def _expand_ranges(ranges: str, item: str) -> list[str]:
    numbers = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"bad range {part!r} in Slurm host list item {item!r}")
        high = high or low
        if int(high) < int(low):
            raise ValueError(f"descending range {part!r} in Slurm host list item {item!r}")
        width = len(low) if low.startswith("0") else 0
        numbers.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return numbers


def main(argv: list[str] | None = None) -> int:
    """Print one host name per line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python launchers/slurm/hostnames.py HOSTLIST", file=sys.stderr)
        return 2
    print("\n".join(expand_hostlist(args[0])))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
