# Triton kernels run on the CPU through Triton's interpreter when there is no GPU. The flag is read
# when `@triton.jit` decorates a kernel, i.e. when kernels.py is imported: set it before any test does.
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(min(torch.get_num_threads(), 2))  # CI has 2 cores; more threads only thrash
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # flat layout: import model, kernels
