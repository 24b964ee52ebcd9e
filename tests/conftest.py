# Triton kernels run on the CPU through Triton's interpreter when there is no GPU. The flag is read
# when `@triton.jit` decorates a kernel, i.e. when kernels.py is imported: set it before any test does.
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The test models are tiny: a second thread only adds synchronisation, and thrashes when the CPU is
# shared (several times slower). One thread for the whole suite.
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # flat layout: import model, kernels

if os.environ.get("TRITON_INTERPRET") == "1":
    try:
        from triton.runtime import interpreter
    except ImportError:  # no triton: the Triton tests skip themselves
        interpreter = None
    if interpreter is not None and hasattr(interpreter, "_patch_lang_tensor"):
        # Triton 3.6's interpreter holds scalars as 1-element arrays and int()s them for range() bounds
        # (`for t0 in range(0, T, BT)`), which NumPy >= 2.4 rejects; .item() works with every NumPy.
        _patch_lang_tensor = interpreter._patch_lang_tensor

        def _patch_index(tensor, scope):
            _patch_lang_tensor(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

        interpreter._patch_lang_tensor = _patch_index
