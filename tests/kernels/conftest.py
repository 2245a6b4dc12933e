"""Kernel tests: Triton's interpreter is switched on per test, never for the whole process.

Triton decides interpreted vs compiled when `@triton.jit` runs; restuning loads its kernel
module once per mode (restuning/kernels/triton/_runtime.py) and picks the copy from
TRITON_INTERPRET at each launch. So `monkeypatch.setenv` for the duration of one test is
enough, and other test modules in the same pytest process never see the variable.
The kernels use only Triton builtins, so the interpreted copy works whatever mode Triton's
standard library was decorated in.
"""
from __future__ import annotations

import os

import pytest

# Imported at collection, with TRITON_INTERPRET unset: Triton decorates its own standard
# library once, at import, and the compiled kernels need it compiled (see _runtime.py).
import restuning.kernels.triton._runtime  # noqa: F401
from tests.kernels.kernel_cases import Case


@pytest.fixture
def interpreter(monkeypatch):
    """Run Triton launches of this test through the interpreter (CPU tensors)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
    # monkeypatch restores the previous value after the test


@pytest.fixture
def on_device(request, monkeypatch):
    """For a parametrized `case`: the interpreter for CPU cases; CUDA cases run compiled."""
    case: Case = request.getfixturevalue("case")
    if case.device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return case.device


@pytest.fixture(autouse=True, scope="session")
def _interpreter_not_set_globally():
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), (
        "TRITON_INTERPRET is set for the whole process; the kernel tests switch it per test"
    )
    yield
