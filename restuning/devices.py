"""Device and dtype names as users write them ("auto", "cuda:1", "bf16") turned into torch objects, in one place."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from restuning.errors import ConfigError, choices

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
DTYPE_CHOICES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None): CUDA when present, else the CPU; anything else as torch reads it."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """'auto' (or None): float16 on CUDA (what inference runs in there), float32 on the CPU (no fast half path)."""
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {choices(['auto', *DTYPES])}")
    return DTYPES[name]


def cpu_model() -> str:
    """The CPU's model name, as results and training records name the machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
