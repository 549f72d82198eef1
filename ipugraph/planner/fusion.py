"""Fusion: group ops that run as one compute set.

Two kinds of group, both planned and lowered as ONE compute set:

  a pointwise region   pointwise ops (ops/pointwise.py: primitives, expand, cast) whose
                       intermediate results are read only inside the region: one pass over
                       memory, whatever the chain's shape (a tree or a DAG of ops);
  an anchored group    conv2d / linear / matmul (or a batch norm), an inference batch_norm
                       folded into its weights and bias (parameters must be leaves), and a
                       pointwise region
                       consuming the result as its epilogue (PopLibs maps elementwise work by
                       its input's tile mapping, so the epilogue's elements already sit on the
                       tiles that computed them). conv → bn → add → relu is one compute set,
                       and so is silu(conv(x)) + y → relu.

Regions grow from their last op (the root) backwards: a pointwise producer joins if every
reader of its result is already in the region, its result is not kept (a graph output or an
assigned value) and it has as many elements as the root (a smaller producer, e.g. per-channel
arithmetic, stays its own small compute set rather than being recomputed per element). An
anchor joins the region that consumes it when the region reads its result (or its folded
batch norm's) and nothing else does; of several candidates the first operand in the region's
order wins (ResNet's main path, not its downsample branch). A group runs at the position of its
root: every input from outside the group is produced before that.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Graph, Node, Tensor

# Ops whose codelet runs a pointwise epilogue over the output elements it has just written.
ANCHORS = {"conv2d", "conv2d_backward_data", "linear", "matmul", "batch_norm", "batch_norm_train"}
FOLDS_BN = {"conv2d", "linear"}


def is_pointwise(node: Node) -> bool:
    return node.op.pointwise is not None


def group_spaces(group: "Group", target) -> list:
    """The Spaces a group may be planned over, one per method: its anchor's, or for a pointwise
    region the output's flat range with every operand the region reads."""
    from ..ops.pointwise import PRIMITIVES, pointwise_space
    if not group.is_pointwise:
        spaces = group.anchor.op.space(group.anchor, target)
        return list(spaces) if isinstance(spaces, (list, tuple)) else [spaces]
    flops = sum(PRIMITIVES[n.op.name].flops if n.op.name in PRIMITIVES else 0
                for n in group.pointwise)
    return [pointwise_space(group.output, group.external_inputs(), target, max(flops, 1))]


@dataclass
class Group:
    nodes: list[Node]                  # execution order (the root last)
    anchor: Node                       # the op the group is planned by (a pointwise region:
                                       # its root)
    bn: Node | None = None             # an inference batch_norm folded into the anchor
    pointwise: list[Node] = field(default_factory=list)   # the fused pointwise ops

    @property
    def root(self) -> Node:
        return self.nodes[-1]

    @property
    def output(self) -> Tensor:
        return self.nodes[-1].output

    @property
    def is_pointwise(self) -> bool:
        """A pointwise region with no anchor op."""
        return bool(self.pointwise) and self.anchor is self.pointwise[-1] and \
            is_pointwise(self.anchor)

    @property
    def epilogue(self) -> list[Node]:
        """The nodes after the anchor: a folded batch norm, then the pointwise ops."""
        return [n for n in self.nodes if n is not self.anchor]

    @property
    def name(self) -> str:
        return self.anchor.name

    def describe(self) -> str:
        return "+".join(n.op.name for n in self.nodes)

    def external_inputs(self, nodes=None) -> list[Tensor]:
        """Tensors read by `nodes` (default: every node) that the group does not produce, in
        order of first use."""
        inside = {n.output.name for n in self.nodes}
        seen, out = set(), []
        for node in (self.nodes if nodes is None else nodes):
            for t in node.inputs:
                if t.name not in inside and t.name not in seen:
                    seen.add(t.name)
                    out.append(t)
        return out

    def epilogue_inputs(self) -> list[Tensor]:
        """What the pointwise epilogue of an anchored group reads besides the anchor's result
        (a residual, a per-channel scale, a scalar); empty for a pointwise region."""
        if self.is_pointwise:
            return []
        return self.external_inputs(self.pointwise)


def group_nodes(graph: Graph, fuse: bool = True) -> list[Group]:
    """Partition graph.nodes into groups, returned in a valid execution order."""
    users = graph.consumers()
    kept = graph.kept()
    taken: set[int] = set()
    groups: list[Group] = []
    for node in reversed(graph.nodes):
        if node.index in taken:
            continue
        taken.add(node.index)
        if fuse and is_pointwise(node):
            group = _region(node, users, kept, taken)
        elif fuse and node.op.name == "batch_norm" and _folds(node, users, kept, taken):
            group = Group([node.inputs[0].node, node], node.inputs[0].node, bn=node)
            taken.add(node.inputs[0].node.index)
        else:
            group = Group([node], node, pointwise=[node] if is_pointwise(node) else [])
        groups.append(group)
    groups.sort(key=lambda g: g.root.index)
    return groups


def _private(t: Tensor, inside: set[int], users, kept) -> bool:
    """t is read only by nodes in `inside` and is not kept."""
    return t.name not in kept and all(u.index in inside for u in users[t.name])


def _region(root: Node, users, kept, taken) -> Group:
    size = root.output.size
    members = {root.index: root}
    frontier = {t.node.index: t.node for t in root.inputs if t.node is not None}
    while frontier:
        i = max(frontier)                      # consumers are decided before producers
        cand = frontier.pop(i)
        if i in taken or i in members or not is_pointwise(cand) or \
                cand.output.size != size or not _private(cand.output, members, users, kept):
            continue
        members[i] = cand
        frontier.update({t.node.index: t.node for t in cand.inputs if t.node is not None})
    region = [members[i] for i in sorted(members)]
    taken.update(members)
    group = Group(region, root, pointwise=region)
    inside = set(members)
    for t in group.external_inputs():          # the first anchor the region alone reads
        producer = t.node
        if producer is None or producer.index in taken or t.size != size or \
                not _private(t, inside, users, kept):
            continue
        bn = None
        if producer.op.name == "batch_norm" and _folds(producer, users, kept, taken):
            bn, producer = producer, producer.inputs[0].node
        if producer.op.name not in ANCHORS:
            continue
        nodes = [producer] + ([bn] if bn is not None else []) + region
        taken.update(n.index for n in nodes)
        return Group(nodes, producer, bn=bn, pointwise=region)
    return group


def _folds(bn: Node, users, kept, taken) -> bool:
    """An inference batch_norm that can be folded into the conv / linear producing its input:
    that result is read by the batch norm alone and the parameters are leaves."""
    x = bn.inputs[0]
    producer = x.node
    return (producer is not None and producer.op.name in FOLDS_BN
            and producer.index not in taken and x.name not in kept
            and len(users[x.name]) == 1
            and all(p.kind in ("variable", "constant") for p in bn.inputs[1:]))
