"""Launch programs on the CPU (`backends.launch_program`, `kernels.launch_record`): what a
recording holds, how a Triton launch's parameters are passed (as Triton's launcher passes them:
constexprs left out, buffers by index, the rest by value), what is refused and why, and when a
block records, replays or keeps launching one by one. The programs themselves run on a GPU
(tests/test_gpu_launch_program.py)."""

from __future__ import annotations

import struct
import types

import pytest
import torch
from test_relaunch import FakeKernel

from inception_fast.backends import gemm_routing, launch_program
from inception_fast.kernels import launch_record
from inception_fast.kernels.triton.relaunch import Relauncher

P = launch_program


def fake_compiled(names, signature, constants=None, **meta):
    metadata = dict(num_warps=4, shared=1024, launch_pdl=True, global_scratch_size=0, profile_scratch_size=0,
                    num_ctas=1, launch_cooperative_grid=False)
    metadata.update(meta)
    src = types.SimpleNamespace(fn=types.SimpleNamespace(arg_names=names), signature=signature,
                                constants=constants or {})
    return types.SimpleNamespace(name="k", metadata=types.SimpleNamespace(**metadata), src=src, function=77)


def buffers():
    return tuple(torch.zeros(1, 8, 2, 2) for _ in range(3))


def test_parameters_as_tritons_launcher_passes_them():
    names = ["x", "w", "out", "none", "n", "big", "scale", "flag", "BLOCK"]
    signature = {"x": "*fp16", "w": "*fp16", "out": "*fp16", "none": "*fp32", "n": "i32", "big": "i64",
                 "scale": "fp32", "flag": "i1", "BLOCK": "constexpr"}
    x, work, out = buffers()
    weight = torch.ones(5)
    kinds, values, keep = P.triton_params(
        fake_compiled(names, signature), (x, weight, out, None, -3, 2**40, 0.5, True, 64), (x, work, out))
    assert kinds == [P.PARAM_BUFFER, P.PARAM_ADDRESS, P.PARAM_BUFFER, P.PARAM_ADDRESS, P.PARAM_INT32,
                     P.PARAM_INT64, P.PARAM_FLOAT32, P.PARAM_INT32]
    half = struct.unpack("<I", struct.pack("<f", 0.5))[0]
    assert values == [0, weight.data_ptr(), 2, 0, -3, 2**40, half, 1]
    assert keep == [weight]  # kept alive by the program


def test_specialized_constants_are_left_out():
    """Triton may specialize an argument (an integer equal to 1) into a constant of the variant:
    its launcher then passes nothing for it."""
    compiled = fake_compiled(["x", "n", "m"], {"x": "*fp16", "n": "i32", "m": "i32"}, constants={(1,): 1})
    x, work, out = buffers()
    kinds, values, _ = P.triton_params(compiled, (x, 1, 7), (x, work, out))
    assert kinds == [P.PARAM_BUFFER, P.PARAM_INT32] and values == [0, 7]


@pytest.mark.parametrize("meta, args, match", [
    ({"global_scratch_size": 64}, None, "scratch memory"),
    ({"num_ctas": 2}, None, "clusters"),
    ({}, "view", "inside a block buffer"),
    ({}, "short", "arguments"),
    ({}, "half", "of type fp16"),
])
def test_what_a_program_refuses(meta, args, match):
    names, signature = ["x", "n"], {"x": "*fp16", "n": "i32"}
    if args == "half":
        signature["n"] = "fp16"
    x, work, out = buffers()
    given = {"view": (out[:, 4:], 3), "short": (x,)}.get(args, (x, 3))
    with pytest.raises(P.Unreplayable, match=match):
        P.triton_params(fake_compiled(names, signature, **meta), given, (x, work, out))


def test_the_relauncher_notes_every_launch_with_its_whole_argument_list():
    kernel = FakeKernel()
    x = torch.zeros(8)
    launcher = Relauncher(kernel)
    with launch_record.recording() as recorded:
        launcher[(4,)](x, 3, BLOCK=16)  # compiles (binds), then
        launcher[(5, 2)](x, 3, BLOCK=16)  # relaunches
    assert [(r.grid, r.args) for r in recorded.launches] == [((4, 1, 1), (x, 3, 16, False)),
                                                            ((5, 2, 1), (x, 3, 16, False))]
    launcher[(4,)](x, 3, BLOCK=16)  # nothing is noted outside a recording
    assert len(recorded.launches) == 2 and launch_record.active() is None


def test_a_launch_triton_binds_itself_makes_the_recording_unreplayable():
    launcher = Relauncher(FakeKernel(returns_compiled=False))
    with launch_record.recording() as recorded:
        launcher[(1,)](torch.zeros(4), 1, BLOCK=8)
    assert recorded.unreplayable and not recorded.launches
    with pytest.raises(P.Unreplayable, match="no compiled kernel"):
        P.build(recorded, buffers())


def test_a_triton_launch_without_the_relauncher_makes_the_recording_unreplayable(monkeypatch):
    """INCEPTION_FAST_RELAUNCH=0: Triton binds the launch and nothing notes it; a program made
    without it would leave that kernel out."""
    from inception_fast.kernels.triton import compile_only

    monkeypatch.setenv(compile_only.ENV_RELAUNCH, "0")
    kernel = FakeKernel()
    with launch_record.recording() as recorded:
        compile_only.launcher(kernel)[(1,)](torch.zeros(4), 1, BLOCK=8)
    assert not recorded.launches and recorded.unreplayable
    with pytest.raises(P.Unreplayable, match="INCEPTION_FAST_RELAUNCH=0"):
        P.build(recorded, buffers())


def test_cutlass_launches_are_noted_in_order():
    noted = []
    launches = [types.SimpleNamespace(run=lambda buffers, side_by_side: noted.append(side_by_side))]
    with launch_record.recording() as recorded:
        gemm_routing.run_launches(launches, {})
    assert noted == [False]
    assert isinstance(recorded.launches[0], launch_record.CutlassLaunches)
    assert recorded.launches[0].launches == launches


class FakeProgram:
    def __init__(self):
        self.calls, self.buffers = [], None

    def set_buffers(self, work, output, fresh_work):
        self.buffers = (work, output, fresh_work)

    def call(self, x):
        self.calls.append(x)
        return "output"


def call_block(cache, bufs, launch_all, fresh_work=True):
    """What a backend does per call: replay, else launch (recording on the second call)."""
    out = P.replay(cache, ("k",), bufs[0])
    if out is None:
        P.run(cache, ("k",), bufs, launch_all, fresh_work)
    return out


def test_a_block_records_on_its_second_call_then_replays(monkeypatch):
    made = []
    monkeypatch.setattr(P, "build", lambda recorded, buffers: made.append(recorded) or FakeProgram())
    cache, calls = {}, []

    def launch_all():
        calls.append(launch_record.active() is not None)
        return True

    bufs = buffers()
    outs = [call_block(cache, bufs, launch_all, fresh_work=False) for _ in range(4)]
    assert calls == [False, True] and outs == [None, None, "output", "output"]  # plain, recorded, replays
    slot = cache["k",]
    assert len(made) == 1 and slot.program.calls == [bufs[0], bufs[0]] and slot.refused is None
    assert slot.program.buffers == (bufs[1], bufs[2], False)  # what `call` allocates, or keeps


@pytest.mark.parametrize("why", ["side by side", "unreplayable"])
def test_a_refused_block_keeps_launching_one_by_one(monkeypatch, why):
    def refuse(recorded, buffers):
        raise P.Unreplayable("a kernel that needs scratch memory")

    monkeypatch.setattr(P, "build", refuse)
    cache, calls = {}, []

    def launch_all():
        calls.append(1)
        return why != "side by side"

    for _ in range(5):
        assert call_block(cache, buffers(), launch_all) is None
    slot = cache["k",]
    assert len(calls) == 5 and slot.program is None
    assert slot.refused == ("a stage ran its launches side by side" if why == "side by side"
                            else "a kernel that needs scratch memory")


def test_no_program_on_a_cpu_or_when_switched_off(monkeypatch):
    assert P.key(torch.zeros(1, 8, 2, 2)) is None  # a CPU tensor
    monkeypatch.setenv(P.ENV, "2")
    with pytest.raises(ValueError, match="INCEPTION_FAST_PROGRAMS"):
        P.enabled()
    monkeypatch.setenv(P.ENV, "0")
    assert not P.enabled()


def test_a_block_keeps_a_bounded_number_of_slots(monkeypatch):
    monkeypatch.setattr(P, "MAX_SLOTS", 3)
    cache, calls = {"other": 1, 7: 2}, []
    for stream in range(5):
        P.run(cache, (P.KEY, stream), buffers(), lambda: calls.append(1) or True)
    slots = sorted(k for k in cache if isinstance(k, tuple))
    assert len(calls) == 5 and slots == [(P.KEY, 0), (P.KEY, 1), (P.KEY, 2)]
