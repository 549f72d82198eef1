"""ResNet-18/34/50 (He et al. 2015) as ipugraph Graphs, layer for layer as torchvision builds them.

Variable names are torchvision's state_dict keys (conv1.weight, layer2.0.downsample.1.running_var,
fc.bias, ...), so `ig.interop.load_state_dict(net, torchvision_model.state_dict())` loads
pretrained weights unchanged. ResNet-50 is "v1.5": the stride-2 of a down-sampling Bottleneck sits
on its 3×3 conv, not the first 1×1 (torchvision's choice; the paper put it on the 1×1).

Ops are built in torchvision's forward order inside `g.scope(...)`, so a node's name is its
torchvision module path ("conv1", "layer3.1.conv2", "fc"), and the planner's fusion sees
conv → bn → (add) → relu chains: the add joins the main path's last conv (built first), the
downsample branch becomes its residual operand.
"""
from __future__ import annotations

import zlib

import numpy as np

from .. import init, ops
from ..graph import Graph, Tensor
from ..target import Target

# The five stride-2 steps (kernel, padding): conv1, maxpool, and the first block of layers 2-4
# (3×3 pad 1 and its 1×1 downsample halve alike). An image is big enough when every one of them
# halves a map of at least 2 pixels; below that a step strides over a 1-pixel map, reading
# padding in all but its centre tap: valid arithmetic, never what a caller meant.
STRIDE2_STEPS = (("conv1", 7, 3), ("maxpool", 3, 1), ("layer2", 3, 1), ("layer3", 3, 1),
                 ("layer4", 3, 1))
BN_EPS = 1e-5
BN_MOMENTUM = 0.1            # torch.nn.BatchNorm2d's default

# name -> (block kind, blocks per stage)
CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}


def variable_seed(base: int, name: str) -> int:
    """A seed per variable derived from the base seed and the variable's name: stable across
    runs and Python versions (crc32, not hash()), independent of build order, and different for
    same-shaped variables so no two layers start with identical weights."""
    return int(np.random.SeedSequence([base, zlib.crc32(name.encode())]).generate_state(1)[0])


class _Builder:
    """Holds the graph and base seed while the layers are added. Layer helpers take the
    module's local name ("conv1", "downsample.0"); inside g.scope("layer2") / g.scope("0") that
    makes the variable "layer2.0.conv1.weight" and the node "layer2.0.conv1": torchvision's
    module path, for state_dict keys and node names alike."""

    def __init__(self, g: Graph, seed: int, training: bool = False):
        self.g = g
        self.seed = seed
        self.training = training

    def path(self, local: str) -> str:
        scope = self.g.current_scope
        return f"{scope}.{local}" if scope else local

    def conv(self, x: Tensor, local: str, out_ch: int, kernel: int, stride: int = 1,
             padding: int = 0) -> Tensor:
        """A bias-free conv, weight kaiming_normal(fan_out, relu) as torchvision initialises."""
        key = f"{self.path(local)}.weight"
        w = self.g.variable(key, (out_ch, x.shape[1], kernel, kernel),
                            init=init.kaiming_normal(seed=variable_seed(self.seed, key),
                                                     mode="fan_out"))
        return ops.conv2d(x, w, stride=stride, padding=padding, name=local)

    def bn(self, x: Tensor, local: str) -> Tensor:
        """Batch norm: weight 1, bias 0, running mean 0, running var 1 (buffers). Inference
        form normalises with the running statistics; training form (torch's train()) with the
        batch's, and updates the running ones in place (momentum 0.1, unbiased variance)."""
        c, prefix, g = (x.shape[1],), self.path(local), self.g
        gamma = g.variable(f"{prefix}.weight", c, init=init.ones())
        beta = g.variable(f"{prefix}.bias", c, init=init.zeros())
        mean = g.variable(f"{prefix}.running_mean", c, init=init.zeros(), trainable=False)
        var = g.variable(f"{prefix}.running_var", c, init=init.ones(), trainable=False)
        if not self.training:
            return ops.batch_norm(x, gamma, beta, mean, var, eps=BN_EPS, name=local)
        y, _ = ops.batch_norm_train(x, gamma, beta, eps=BN_EPS, name=local, running_mean=mean,
                                    running_var=var, momentum=BN_MOMENTUM)
        return y

    def block(self, kind: str, x: Tensor, width: int, stride: int) -> Tensor:
        """One BasicBlock or Bottleneck, built inside its module's scope (e.g. layer2 / 0)."""
        out_ch = width * EXPANSION[kind]
        if kind == "basic":
            y = ops.relu(self.bn(self.conv(x, "conv1", width, 3, stride, 1), "bn1"),
                         name="relu1")
            y = self.bn(self.conv(y, "conv2", width, 3, 1, 1), "bn2")
        else:
            y = ops.relu(self.bn(self.conv(x, "conv1", width, 1), "bn1"), name="relu1")
            y = ops.relu(self.bn(self.conv(y, "conv2", width, 3, stride, 1), "bn2"),
                         name="relu2")
            y = self.bn(self.conv(y, "conv3", out_ch, 1), "bn3")
        identity = x
        if stride != 1 or x.shape[1] != out_ch:
            # torchvision's downsample = Sequential(conv1x1, BatchNorm2d): keys .0 and .1
            identity = self.bn(self.conv(x, "downsample.0", out_ch, 1, stride), "downsample.1")
        return ops.relu(ops.add(y, identity, name="add"), name="relu")


def _first_collapse(side: int) -> str | None:
    """The first stride-2 step that receives a map side of 1 pixel, if any."""
    for step, kernel, pad in STRIDE2_STEPS:
        if side < 2:
            return step
        side = (side + 2 * pad - kernel) // 2 + 1
    return None


def min_image_size() -> int:
    """The smallest image side every stride-2 step can halve (17: 17→9→5→3→2→1)."""
    side = 1
    while _first_collapse(side) is not None:
        side += 1
    return side


def _image_hw(arch: str, image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    else:
        try:
            h, w = image_size
            if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (h, w)):
                raise TypeError
            hw = (int(h), int(w))
        except (TypeError, ValueError):
            raise ValueError(f"{arch}: image_size must be an int or a pair of ints (h, w), got "
                             f"{image_size!r}") from None
    step = _first_collapse(min(hw))
    if step is not None:
        raise ValueError(f"{arch}: image_size {hw[0]}x{hw[1]} is too small: {step} would stride "
                         f"over a 1-pixel feature map; each side must be at least "
                         f"{min_image_size()} pixels")
    return hw


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def resnet(arch: str, batch: int = 8, image_size=224, num_classes: int = 1000, seed: int = 0,
           target: Target | None = None, name: str | None = None,
           training: bool = False) -> Graph:
    """Build `arch` (resnet18 / resnet34 / resnet50) with input "x" [batch, 3, H, W] (float32)
    and output "logits" [batch, num_classes]. training=True builds batch norm in training form
    (batch statistics; running statistics updated in place each run), ready for
    ipugraph.training.add_training (loss, gradients, optimizer)."""
    if arch not in CONFIGS:
        raise ValueError(f"unknown ResNet '{arch}'; choose from {sorted(CONFIGS)}")
    batch = _positive_int(batch, f"{arch}: batch")
    num_classes = _positive_int(num_classes, f"{arch}: num_classes")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{arch}: seed must be a non-negative int, got {seed!r}")
    h, w = _image_hw(arch, image_size)
    kind, blocks = CONFIGS[arch]

    g = Graph(target, name=name or arch)
    b = _Builder(g, int(seed), bool(training))
    x = g.input("x", (batch, 3, h, w))
    y = ops.relu(b.bn(b.conv(x, "conv1", 64, 7, stride=2, padding=3), "bn1"), name="relu")
    y = ops.max_pool2d(y, kernel=3, stride=2, padding=1, name="maxpool")
    for stage, count in enumerate(blocks):
        with g.scope(f"layer{stage + 1}"):
            for i in range(count):
                with g.scope(str(i)):
                    y = b.block(kind, y, 64 * 2 ** stage, 2 if stage > 0 and i == 0 else 1)
    y = ops.flatten(ops.global_avg_pool(y, name="avgpool"), name="flatten")
    bound = 1.0 / np.sqrt(y.shape[1])          # torch.nn.Linear's default for weight and bias
    fc_w = g.variable("fc.weight", (num_classes, y.shape[1]),
                      init=init.uniform(-bound, bound, seed=variable_seed(seed, "fc.weight")))
    fc_b = g.variable("fc.bias", (num_classes,),
                      init=init.uniform(-bound, bound, seed=variable_seed(seed, "fc.bias")))
    logits = ops.linear(y, fc_w, fc_b, name="fc")
    g.output("logits", logits)
    return g


def resnet18(batch: int = 8, image_size=224, num_classes: int = 1000, seed: int = 0,
             target: Target | None = None, name: str | None = None,
             training: bool = False) -> Graph:
    """ResNet-18: BasicBlocks [2, 2, 2, 2]; 11,689,512 parameters at 1000 classes."""
    return resnet("resnet18", batch, image_size, num_classes, seed, target, name, training)


def resnet34(batch: int = 8, image_size=224, num_classes: int = 1000, seed: int = 0,
             target: Target | None = None, name: str | None = None,
             training: bool = False) -> Graph:
    """ResNet-34: BasicBlocks [3, 4, 6, 3]; 21,797,672 parameters, 3.66 GMAC per 224² image."""
    return resnet("resnet34", batch, image_size, num_classes, seed, target, name, training)


def resnet50(batch: int = 8, image_size=224, num_classes: int = 1000, seed: int = 0,
             target: Target | None = None, name: str | None = None,
             training: bool = False) -> Graph:
    """ResNet-50 v1.5: Bottlenecks [3, 4, 6, 3]; 25,557,032 parameters."""
    return resnet("resnet50", batch, image_size, num_classes, seed, target, name, training)


MODELS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
