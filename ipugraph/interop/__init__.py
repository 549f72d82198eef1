"""Interoperability with other frameworks. Importing this package never imports torch;
`ipugraph.interop.torch_resnet` (plain torch.nn ResNets) does."""
from .torch import IncompatibleKeys, StateDictError, load_state_dict, state_dict

__all__ = ["IncompatibleKeys", "StateDictError", "load_state_dict", "state_dict"]
