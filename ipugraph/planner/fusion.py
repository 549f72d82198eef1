"""Fusion: group an anchor op with the elementwise epilogue that follows it.

A group is planned and lowered as one compute set with the anchor's partition (PopLibs maps
elementwise work by its input's tile mapping, so the epilogue's elements already sit on the
tiles that computed them). The rules, in order along a single-consumer chain:

  conv2d / linear  → batch_norm   (folded into the weights and bias; parameters must be leaves)
  conv2d           → add          (the other operand, same shape, is the residual)
  conv2d / linear / matmul → relu (ends the group)

An intermediate tensor joins a group only if its one consumer is the next op and it is not a
graph output. A group runs at the position of its last node: every input from outside the group
is produced before that (only a group's last tensor leaves it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Graph, Node, Tensor

ANCHORS = {"conv2d", "linear", "matmul"}
FOLDS_BN = {"conv2d", "linear"}
TAKES_RESIDUAL = {"conv2d"}


@dataclass
class Group:
    anchor: Node
    epilogue: list[Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [self.anchor, *self.epilogue]

    @property
    def output(self) -> Tensor:
        return self.nodes[-1].output

    @property
    def bn(self) -> Node | None:
        return next((n for n in self.epilogue if n.op.name == "batch_norm"), None)

    @property
    def residual(self) -> Tensor | None:
        """The add's operand that does not come from inside the group."""
        for node in self.epilogue:
            if node.op.name == "add":
                inside = {n.output.name for n in self.nodes}
                return next(t for t in node.inputs if t.name not in inside)
        return None

    @property
    def relu(self) -> bool:
        return any(n.op.name == "relu" for n in self.epilogue)

    @property
    def name(self) -> str:
        return self.anchor.name

    def describe(self) -> str:
        return "+".join(n.op.name for n in self.nodes)


def group_nodes(graph: Graph, fuse: bool = True) -> list[Group]:
    """Partition graph.nodes into groups, returned in a valid execution order."""
    users = graph.consumers()
    outputs = graph.kept()
    taken: set[int] = set()
    groups: list[Group] = []
    for node in graph.nodes:
        if node.index in taken:
            continue
        group = Group(node)
        taken.add(node.index)
        if fuse and node.op.name in ANCHORS:
            _grow(group, users, outputs, taken)
        groups.append(group)
    groups.sort(key=lambda g: g.nodes[-1].index)
    return groups


def _grow(group: Group, users, outputs, taken) -> None:
    anchor = group.anchor.op.name
    stage = 0                                     # 0: nothing yet, 1: bn, 2: add, 3: relu
    while True:
        t = group.output
        if t.name in outputs or len(users[t.name]) != 1:
            return
        nxt = users[t.name][0]
        if nxt.index in taken:                    # already the epilogue of another anchor
            return
        kind = nxt.op.name
        if kind == "batch_norm" and stage == 0 and anchor in FOLDS_BN and nxt.inputs[0] is t \
                and all(p.kind in ("variable", "constant") for p in nxt.inputs[1:]):
            stage = 1
        elif kind == "add" and stage <= 1 and anchor in TAKES_RESIDUAL \
                and nxt.inputs[0] is not nxt.inputs[1]:
            stage = 2
        elif kind == "relu" and stage <= 2:
            stage = 3
        else:
            return
        group.epilogue.append(nxt)
        taken.add(nxt.index)
        if stage == 3:
            return
