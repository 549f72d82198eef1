"""Model zoo: networks built from the public op functions, with torchvision's variable names."""
from .resnet import MODELS, resnet18, resnet34, resnet50

__all__ = ["MODELS", "resnet18", "resnet34", "resnet50"]
