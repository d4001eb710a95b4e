"""Launch programs on the GPU (`backends.launch_program`, csrc/launch_program.cpp): a call without
a CUDA graph that replays each block's recorded launches from C++ gives the same bits as the
launches one by one, in every dtype the ops take, at batches 1, 3 and 8; the programs are really
made and used (no launch goes through Python once they are); a program prepares its CUTLASS
launches again when the buffers move; it refuses buffers of another shape; the default
`optimize()` call (backend auto) replays them too. Skipped off Hopper (the CUTLASS ops)."""

from __future__ import annotations

import copy

import pytest
import torch
from gpu_blocks import on_two_streams, two_x_rule

from inception_fast import optimize
from inception_fast.backends import backend_status, gemm_routing, launch_program
from inception_fast.modules import FusedBlock

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def hopper():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the CUTLASS kernels are built for sm_90a (Hopper) only")
    usable, why = backend_status("triton-gemm")
    assert usable, why


def _slots(fused) -> list:
    return [(module.plan.label, slot) for module in fused.modules() if isinstance(module, FusedBlock)
            for key, slot in module.backend_cache.items() if key[0] == launch_program.KEY]


def _counted(monkeypatch, owner, name: str) -> list:
    calls = []
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32],
                         ids=["fp16", "bf16", "tf32"])
@torch.no_grad()
def test_programs_give_the_same_bits(calibrated_model, monkeypatch, batch, dtype):
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(batch, 3, 299, 299, device="cuda")
    fused = optimize(model, backend="triton-gemm", dtype=dtype, cuda_graph=False)
    monkeypatch.setenv(launch_program.ENV, "0")
    expected = fused(x.to(dtype)).clone()
    monkeypatch.setenv(launch_program.ENV, "1")
    first, recorded = fused(x.to(dtype)).clone(), fused(x.to(dtype)).clone()  # the second call records
    slots = _slots(fused)
    assert slots, "no block kept a launch program slot"
    refused = [(label, slot.refused) for label, slot in slots if slot.program is None]
    if batch < 8:
        assert not refused, refused
    else:  # a large stage (Mixed3a's, Mixed4a's at batch 8) runs its launches side by side
        assert all(why == "a stage ran its launches side by side" for _, why in refused), refused
        assert len(refused) < len(slots) / 4, refused
    launched = _counted(monkeypatch, launch_program, "run")  # a block without a program
    launches = _counted(monkeypatch, gemm_routing, "run_launches")
    replays = [fused(x.to(dtype)).clone() for _ in range(3)]
    assert len(launched) == 3 * len(refused), "a block launched through Python although its program was made"
    assert refused or not launches
    for out in (first, recorded, *replays):
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if dtype == torch.float16:
        ref = model(x)
        two_x_rule(replays[-1], copy.deepcopy(model).half()(x.half()), ref)


@torch.no_grad()
def test_a_program_follows_its_buffers(calibrated_model):
    """Buffers at other addresses (outputs kept alive, memory taken in between) make each CUTLASS
    launch prepare again: the same bits."""
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(3, 3, 299, 299, device="cuda", dtype=torch.float16)
    fused = optimize(model, backend="triton-gemm", dtype=torch.float16, cuda_graph=False)
    expected = fused(x).clone()
    kept = [fused(x) for _ in range(3)]
    for size in (1 << 20, 3 << 20, 7 << 20):
        kept.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
        kept.append(fused(x))
        torch.testing.assert_close(kept[-1], expected, rtol=0, atol=0)
    assert all(slot.program is not None for _, slot in _slots(fused))


@torch.no_grad()
def test_a_program_refuses_other_shapes(calibrated_model):
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(1, 3, 299, 299, device="cuda", dtype=torch.float16)
    fused = optimize(model, backend="triton-gemm", dtype=torch.float16, cuda_graph=False)
    for _ in range(3):
        fused(x)
    block = next(m for m in fused.modules() if isinstance(m, FusedBlock) and "InceptionA" in m.plan.label)
    slot = next(slot for key, slot in block.backend_cache.items() if key[0] == launch_program.KEY)
    shape = (2, 384, 35, 35)
    buffers = [torch.empty(shape, dtype=torch.float16, device="cuda", memory_format=torch.channels_last)
               for _ in range(3)]
    with pytest.raises(RuntimeError, match="the program was made for"):
        slot.program.run(*buffers)


@pytest.mark.parametrize("batch", [1, 8])
@torch.no_grad()
def test_the_default_call_replays_programs(calibrated_model, monkeypatch, batch):
    """`optimize(model, dtype=fp16, cuda_graph=False)`: backend auto, whose triton-gemm blocks
    replay programs, the same bits as without."""
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(batch, 3, 299, 299, device="cuda", dtype=torch.float16)
    fused = optimize(model, dtype=torch.float16, cuda_graph=False)
    monkeypatch.setenv(launch_program.ENV, "0")
    expected = fused(x).clone()
    monkeypatch.setenv(launch_program.ENV, "1")
    outs = [fused(x).clone() for _ in range(4)]
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert any(slot.program is not None for _, slot in _slots(fused))


@torch.no_grad()
def test_two_threads_on_two_streams_replay_their_own_programs(calibrated_model):
    """A program belongs to a stream (the split-K scratch of its Triton launches does): two
    threads sharing one model, each on its own stream, get the single-threaded bits."""
    fused = optimize(copy.deepcopy(calibrated_model).cuda(), backend="triton-gemm", dtype=torch.float16,
                     cuda_graph=False)
    gen = torch.Generator(device="cuda").manual_seed(5)
    inputs = [torch.randn(n, 3, 299, 299, device="cuda", generator=gen).half() for n in (1, 3)]
    expected = [fused(x).clone() for x in inputs]
    torch.cuda.synchronize()

    def work(tid: int) -> list:
        return [(i, fused(inputs[i])) for _ in range(6) for i in (range(2) if tid else (1, 0))]

    results = on_two_streams(work)
    for outs in results.values():
        for i, out in outs:
            torch.testing.assert_close(out, expected[i], rtol=0, atol=0)
    assert sum(slot.program is not None for _, slot in _slots(fused)) > 0
