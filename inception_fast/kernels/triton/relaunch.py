"""Launching a Triton kernel variant again without Triton's per-call binding.

`kernel[grid](*args, **kwargs)` binds every argument, computes each one's specialization
(dtype, 16-byte alignment, integer divisibility), hashes them into a cache key and checks the
kernel's globals before it launches: about 65 us of host time per launch of the stage kernel
on the GPU machines, more than the kernel itself takes at batch 1, where a call without a CUDA
graph is bound by the host.

A `Relauncher` keys each launch by what Triton could specialize on, more strictly than Triton
does: every non-tensor argument's exact value (the integers, the constexprs, the options), and
each tensor's dtype and whether its address is 16-byte aligned (Triton's pointer
specialization). The first launch with a key goes through Triton (which compiles or finds the
variant, and launches it); it returns the compiled kernel, which later launches with that key
call directly, with the arguments in the kernel's signature order. Where Triton returns no
compiled kernel (the interpreter on the CPU, a compile-only pass) nothing is kept.
Each launch is noted in an active `launch_record` recording.
"""

from __future__ import annotations

import torch

from .. import launch_record


class Relauncher:
    """`relauncher[grid](*args, **kwargs)` launches `kernel` as `kernel[grid](...)` would."""

    def __init__(self, kernel):
        self.kernel = kernel
        self._variants: dict = {}  # launch key -> (compiled kernel, signature names after the positionals)
        names = getattr(kernel, "arg_names", None)
        params = getattr(kernel, "params", None)
        self._names = list(names) if names is not None else None
        self._defaults = {p.name: p.default for p in params} if params is not None else {}

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self._launch(grid, args, kwargs)

    @staticmethod
    def _grid3(grid) -> tuple:
        """A grid of 1-3 dims as the compiled kernel takes it: three sizes."""
        return (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)

    def _launch(self, grid, args: tuple, kwargs: dict) -> None:
        # Triton keeps its variants per current device (each loaded into that device's context).
        device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        try:
            key = (device, len(args), *map(_specialization, args),
                   *[(name, _specialization(value)) for name, value in kwargs.items()])
        except _UnknownKind:  # an argument whose specialization by Triton this does not know
            self.kernel[grid](*args, **kwargs)
            launch_record.note_unreplayable("a Triton launch with an argument of a kind Triton binds itself")
            return
        found = self._variants.get(key)
        if found is None:
            compiled = self.kernel[grid](*args, **kwargs)
            if self._names is not None and hasattr(compiled, "function") and hasattr(compiled, "__getitem__"):
                found = self._variants[key] = (compiled, self._names[len(args):])
                if launch_record.active() is not None:
                    tail = self._tail(found, kwargs)
                    launch_record.note_triton(compiled, self._grid3(grid), (*args, *tail))
            else:
                launch_record.note_unreplayable("a Triton launch that returned no compiled kernel")
            return
        compiled = found[0]
        grid3 = self._grid3(grid)
        args = (*args, *self._tail(found, kwargs))
        compiled[grid3](*args)
        launch_record.note_triton(compiled, grid3, args)

    def _tail(self, found: tuple, kwargs: dict) -> list:
        """The arguments after the positionals, in the signature's order: given, or defaults."""
        return [kwargs[name] if name in kwargs else self._defaults[name] for name in found[1]]


_PLAIN = (int, float, bool, str, type(None), torch.dtype)


class _UnknownKind(Exception):
    """An argument of another kind (a list, a host tensor descriptor...): such launches bind."""


def _specialization(value):
    """What Triton may specialize a launch on, for one argument: a tensor's dtype and 16-byte
    alignment; a plain value itself (a tuple, which Triton unpacks, is another kind)."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if isinstance(value, _PLAIN):
        return value
    raise _UnknownKind
