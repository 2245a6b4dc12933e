"""Multi-task bypass kernels: `reference` (PyTorch, any device) and `triton/` (CUDA)."""
from restuning.kernels.weights import ACTIVATION_OF_TYPE, GroupWeights

__all__ = ["ACTIVATION_OF_TYPE", "GroupWeights"]
