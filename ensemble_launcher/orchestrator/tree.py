"""Planning the master/worker tree: who runs where, with the names users know.

    nlevels=1:  main -> main.w0 (node 0), main.w1 (node 1), ...
    nlevels=2:  main -> main.m0 (nodes 0-1) -> main.m0.w0 (node 0), main.m0.w1 (node 1)
                     -> main.m1 (node 2)    -> main.m1.w0 (node 2)

Workers are one per node. A master's nodes are split into ``nchildren`` contiguous
groups (default: about the ``levels``-th root of the node count, so every level fans out
alike); a sub-master runs on the first node of its group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["master", "worker"]


@dataclass
class TreeNode:
    name: str
    role: Role
    hosts: list[str]
    children: list[TreeNode] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.hosts[0]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "hosts": self.hosts,
                "children": [c.to_dict() for c in self.children]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TreeNode:
        return cls(data["name"], data["role"], list(data["hosts"]),
                   [cls.from_dict(c) for c in data["children"]])

    def gang_capacity(self) -> int:
        """The most nodes a multi-node task can span in this subtree: the largest group of
        workers under one master (a worker alone: 1)."""
        if self.role == "worker":
            return 1
        if all(c.role == "worker" for c in self.children):
            return len(self.children)
        return max(c.gang_capacity() for c in self.children)

    def walk(self) -> list[TreeNode]:
        """This node and every node below it, parents first."""
        return [self] + [n for c in self.children for n in c.walk()]

    def workers(self) -> list[TreeNode]:
        if self.role == "worker":
            return [self]
        return [w for c in self.children for w in c.workers()]


def plan_tree(hosts: list[str], nlevels: int, nchildren: int | None = None) -> TreeNode:
    """The tree below ``main`` for ``hosts`` (nlevels >= 1)."""
    if nlevels < 1:
        raise ValueError("a tree needs nlevels >= 1")
    return TreeNode("main", "master", list(hosts), _children("main", hosts, nlevels, nchildren))


def _children(parent: str, hosts: list[str], levels: int, nchildren: int | None) -> list[TreeNode]:
    if levels == 1:
        return [TreeNode(f"{parent}.w{i}", "worker", [h]) for i, h in enumerate(hosts)]
    fanout = nchildren or max(1, math.ceil(len(hosts) ** (1 / levels)))
    groups = _split(hosts, min(fanout, len(hosts)))
    return [TreeNode(f"{parent}.m{i}", "master", group,
                     _children(f"{parent}.m{i}", group, levels - 1, nchildren))
            for i, group in enumerate(groups)]


def _split(items: list[str], n: int) -> list[list[str]]:
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out
