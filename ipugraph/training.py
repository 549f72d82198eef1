"""One training step as one graph: the model's forward pass, the softmax cross-entropy loss,
ig.grad's backward pass and an optimizer's in-place update, so that Engine.run(feeds) is a step.

    g = ig.models.resnet18(batch=8, image_size=64, num_classes=10, training=True)
    step = ig.training.add_training(g, optimizer="sgd", momentum=0.9, weight_decay=1e-4)
    eng = ig.compile(g)
    loss = eng.run({"x": images, "labels": labels, "lr": np.float32(0.1)})["loss"]
"""
from __future__ import annotations

from dataclasses import dataclass

from . import ops, optim
from .autodiff import grad
from .graph import Graph, GraphError, Tensor


@dataclass
class TrainingStep:
    loss: Tensor
    grads: dict[str, Tensor]        # variable name -> gradient
    lr: Tensor                      # the fed learning rate (a scalar input named "lr")
    labels: Tensor


def add_training(g: Graph, logits: str = "logits", optimizer: str = "sgd", momentum: float = 0.9,
                 weight_decay: float = 0.0, output_grads: bool = False) -> TrainingStep:
    """Append labels (input "labels" [N] int64), the loss (output "loss"), the gradients of
    every trainable variable and the optimizer update (sgd or adam) to `g`. The learning rate
    is the fed scalar input "lr". output_grads=True also makes each gradient an output named
    "grad:<variable>"."""
    if logits not in g:
        raise GraphError(f"add_training: graph '{g.name}' has no tensor named '{logits}'")
    z = g[logits]
    if z.ndim != 2:
        raise GraphError(f"add_training: logits '{z.name}' must be [batch, classes], got {z.shape}")
    labels = g.input("labels", (z.shape[0],), "int64")
    loss = ops.cross_entropy(z, labels, name="loss")
    g.output("loss", loss)
    grads = grad(g, loss)
    if output_grads:
        for name, t in grads.items():
            g.output(f"grad:{name}", t)
    lr = g.input("lr", (), z.dtype)
    if optimizer == "sgd":
        optim.sgd(g, grads, lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        optim.adam(g, grads, lr, weight_decay=weight_decay)
    else:
        raise GraphError(f"add_training: unknown optimizer '{optimizer}'; choose sgd or adam")
    return TrainingStep(loss, grads, lr, labels)
