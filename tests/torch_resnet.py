"""The plain torch.nn ResNets the model tests compare against. The definition lives in
ipugraph.interop.torch_resnet so `ipugraph bench --compare torch` runs the very same network."""
from ipugraph.interop.torch_resnet import (MODELS, BasicBlock, Bottleneck, ResNet, randomize_,
                                           resnet18, resnet34, resnet50)

__all__ = ["MODELS", "BasicBlock", "Bottleneck", "ResNet", "randomize_", "resnet18", "resnet34",
           "resnet50"]
