"""Without a CUDA device the triton backend's kernels run in Triton's interpreter on the CPU:
TRITON_INTERPRET=1 must be set before anything imports triton (ipugraph does not; the backend
reads it at its first use)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
