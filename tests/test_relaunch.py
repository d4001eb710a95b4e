"""A Triton variant launched before is launched again without Triton's binding
(`kernels/triton/relaunch.py`): only with the same specialization, with every argument in the
kernel's signature order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from inception_fast.kernels.triton import compile_only
from inception_fast.kernels.triton.relaunch import Relauncher


@dataclass
class Param:
    name: str
    default: object = None


class FakeCompiled:
    """A compiled variant: `compiled[grid](*every argument in signature order)`."""

    function = "cu-function"

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("relaunch", (grid[0], grid[1], grid[2]), args))  # as Triton's


class FakeKernel:
    """A JITFunction: binds and launches, returning the compiled variant (None: the interpreter)."""

    def __init__(self, returns_compiled=True):
        self.arg_names = ["x", "n", "BLOCK", "FLAG"]
        self.params = [Param("x"), Param("n"), Param("BLOCK"), Param("FLAG", False)]
        self.log = []
        self.returns_compiled = returns_compiled

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(("bind", grid, args, kwargs))
            return FakeCompiled(self.log) if self.returns_compiled else None

        return launch


def test_a_second_launch_skips_the_binding_with_arguments_in_signature_order():
    kernel = FakeKernel()
    x = torch.zeros(8)
    launcher = Relauncher(kernel)
    launcher[(4,)](x, 3, BLOCK=16, num_warps=4)
    launcher[(5,)](x, 3, BLOCK=16, num_warps=4)
    assert kernel.log[0] == ("bind", (4,), (x, 3), {"BLOCK": 16, "num_warps": 4})
    # constexprs by name, defaults filled in; options (num_warps) are the compiled variant's own
    assert kernel.log[1] == ("relaunch", (5, 1, 1), (x, 3, 16, False))


def test_anything_triton_could_specialize_on_binds_again():
    kernel = FakeKernel()
    x = torch.zeros(64, dtype=torch.float16)
    launcher = Relauncher(kernel)
    launcher[(1,)](x, 3, BLOCK=16)
    launcher[(1,)](x, 16, BLOCK=16)  # another integer value
    launcher[(1,)](x[1:], 3, BLOCK=16)  # an address 2 bytes past 16-byte alignment
    launcher[(1,)](x.float(), 3, BLOCK=16)  # another dtype
    launcher[(1,)](x, 3, BLOCK=32)  # another constexpr
    launcher[(1,)](x, 3, BLOCK=16, num_warps=8)  # another option
    launcher[(1,)](x[8:], 3, BLOCK=16)  # aligned again: the first variant
    assert [entry[0] for entry in kernel.log] == ["bind"] * 6 + ["relaunch"]


def test_nothing_is_kept_where_triton_returns_no_compiled_kernel():
    kernel = FakeKernel(returns_compiled=False)  # TRITON_INTERPRET=1, a compile-only pass
    launcher = Relauncher(kernel)
    for _ in range(3):
        launcher[(2,)](torch.zeros(4), 1, BLOCK=8)
    assert [entry[0] for entry in kernel.log] == ["bind"] * 3


def test_the_switch(monkeypatch):
    kernel = FakeKernel()
    monkeypatch.setenv(compile_only.ENV_RELAUNCH, "0")
    assert compile_only.launcher(kernel) is kernel
    monkeypatch.setenv(compile_only.ENV_RELAUNCH, "1")
    assert isinstance(compile_only.launcher(kernel), Relauncher)
    monkeypatch.setenv(compile_only.ENV_RELAUNCH, "yes")
    with pytest.raises(ValueError, match="INCEPTION_FAST_RELAUNCH='yes': use 1"):
        compile_only.launcher(kernel)


def test_an_argument_of_another_kind_always_binds():
    kernel = FakeKernel()
    launcher = Relauncher(kernel)
    for _ in range(2):
        launcher[(1,)](torch.zeros(4), (torch.zeros(2), 1), BLOCK=8)  # a tuple: not a kind the key knows
        launcher[(1,)](torch.zeros(4), 1, BLOCK=torch.zeros(2))  # a tensor passed by name
    assert [entry[0] for entry in kernel.log] == ["bind", "bind", "bind", "relaunch"]
