"""GPU stress: what users do that the per-feature tests do not line up.

- Seeded random cases: any block, batch, input size (odd, non-square, off the network's
  sizes), dtype and memory layout (NCHW, channels_last, a strided view at an odd offset), each
  held to the 2x rule against the float64 reference, with NaN-poisoned outputs.
- CUDA-graph mode over a sequence of changing shapes (new, repeated, above the graph batch
  limit), each result equal to the plain forward's and a fresh tensor.
- Two threads on two streams sharing one model, plain and in CUDA-graph mode.
- The whole model at batch 2048 (activations past 2**31 elements).

Tile timing is switched off (INCEPTION_FAST_AUTOTUNE=0: the shipped or heuristic tiles), so
random shapes do not each tune; the tuning itself is tested elsewhere. Run on a GPU machine:
    python -m pytest tests/test_gpu_stress.py
(well under 3 minutes on an H100 once the CUDA extension is built).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import pytest
import torch
from gpu_blocks import BLOCKS, make_block, on_two_streams, two_x_rule

from inception_fast import fuse_block, optimize
from inception_fast.testing import relative_l2

pytestmark = [pytest.mark.cuda, pytest.mark.slow]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
KERNEL_DTYPES = {"triton": ("fp16", "bf16", "fp32"), "cuda": ("fp16", "bf16")}
SAME_KERNELS = 1e-3  # relative L2 between two runs of the same kernels: equal but for a race


@pytest.fixture(autouse=True)
def shipped_or_heuristic_tiles(monkeypatch):
    monkeypatch.setenv("INCEPTION_FAST_AUTOTUNE", "0")


# --- random cases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    seed: int
    block: str
    batch: int
    height: int
    width: int
    dtype_draw: float  # picks among the dtypes the backend runs
    layout: str

    def dtype(self, backend: str) -> torch.dtype:
        names = KERNEL_DTYPES[backend]
        return DTYPES[names[int(self.dtype_draw * len(names))]]

    def __str__(self) -> str:
        return f"{self.seed}-{self.block}-b{self.batch}-{self.height}x{self.width}-{self.layout}"


def random_cases(count: int = 30, seed: int = 2026) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        name = rng.choice(sorted(BLOCKS))
        _, _, size = BLOCKS[name]
        low = max(8, size // 3)  # every block has an output down to 8x8 inputs
        height, width = rng.randint(low, size + 6), rng.randint(low, size + 6)
        batch = rng.choice((1, 2, 3, 5, 8) if size >= 147 else (1, 2, 3, 5, 8, 17, 32))
        layout = rng.choice(("nchw", "channels_last", "strided"))
        cases.append(Case(i, name, batch, height, width, rng.random(), layout))
    return cases


def case_input(case: Case, cin: int) -> torch.Tensor:
    """ReLU'd activations in float32, NCHW, like those every block after the stem sees."""
    gen = torch.Generator(device="cuda").manual_seed(case.seed)
    shape = (case.batch, cin, case.height, case.width)
    return torch.randn(shape, device="cuda", generator=gen).relu_() + 0.05


def in_layout(x: torch.Tensor, dtype: torch.dtype, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a view at an odd offset into a larger tensor: neither layout, unaligned
        n, c, h, w = x.shape
        view = torch.zeros(n, c, h + 3, w + 5, dtype=dtype, device=x.device)[:, :, 1 : 1 + h, 3 : 3 + w]
        view.copy_(x)
        assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
        return view
    return x.to(dtype)


@pytest.mark.parametrize("case", random_cases(), ids=str)
@torch.no_grad()
def test_random_case_matches_the_float64_reference(backend, case):
    block, cin, _ = make_block(case.block, seed=case.seed)
    dtype = case.dtype(backend)
    x = case_input(case, cin)
    ref = copy.deepcopy(block).double()(x.double())
    eager = copy.deepcopy(block).to(dtype)(in_layout(x, dtype, case.layout))
    fused = fuse_block(block).to(dtype)
    fused.backend = backend
    out = fused(in_layout(x, dtype, case.layout))
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all(), "a channel slice was never written"
    two_x_rule(out, eager, ref)


# --- CUDA graphs over changing shapes -------------------------------------------------------


@torch.no_grad()
def test_cuda_graph_mode_follows_changing_shapes(calibrated_model, backend):
    model = copy.deepcopy(calibrated_model).cuda()
    plain = optimize(model, backend=backend, dtype=torch.float16)
    graphed = optimize(model, backend=backend, dtype=torch.float16, cuda_graph=True, cuda_graph_max_batch=4)
    # New shapes, repeats, a batch above the limit (runs without a graph), other layouts.
    shapes = [(1, 299, 299), (3, 299, 299), (1, 331, 300), (2, 160, 224), (5, 299, 299),
              (1, 299, 299), (3, 299, 299), (2, 160, 224), (1, 75, 75)]
    gen = torch.Generator(device="cuda").manual_seed(7)
    kept = []
    for step, (n, h, w) in enumerate(shapes):
        x = torch.randn(n, 3, h, w, device="cuda", generator=gen).half()
        if step % 3 == 1:
            x = x.contiguous(memory_format=torch.channels_last)
        elif step % 3 == 2:
            x = torch.randn(n, 3, h, w + 1, device="cuda", generator=gen).half()[..., 1:]
        out = graphed(x)
        assert out.shape == (n, 1000)
        assert relative_l2(out, plain(x)) < SAME_KERNELS, (step, n, h, w)
        kept.append((out, out.clone()))
    # Every result is a tensor of its own: later replays did not overwrite it.
    for out, copy_at_the_time in kept:
        assert torch.equal(out, copy_at_the_time)
    ref = copy.deepcopy(model).double()(x.double())
    eager = copy.deepcopy(model).half()(x)
    two_x_rule(graphed(x), eager, ref)


# --- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["plain", "cuda-graph"])
@torch.no_grad()
def test_two_threads_on_two_streams_share_one_model(calibrated_model, backend, cuda_graph):
    """Split-K scratch, CUDA-graph static buffers and caches are shared state: each thread's
    results must equal the single-threaded ones."""
    model = optimize(copy.deepcopy(calibrated_model).cuda(), backend=backend, dtype=torch.float16,
                     cuda_graph=cuda_graph)
    gen = torch.Generator(device="cuda").manual_seed(11)
    inputs = [torch.randn(n, 3, 299, 299, device="cuda", generator=gen).half() for n in (1, 2, 1, 3)]
    expected = [model(x) for x in inputs]  # also tunes, packs and captures every shape first
    torch.cuda.synchronize()

    def work(tid: int) -> list:
        outs = []
        for _ in range(8):
            order = range(len(inputs)) if tid == 0 else reversed(range(len(inputs)))
            outs += [(i, model(inputs[i])) for i in order]
        return outs

    results = on_two_streams(work)
    for tid, outs in results.items():
        for i, out in outs:
            assert relative_l2(out, expected[i]) < SAME_KERNELS, (tid, i)


# --- batch 2048 ------------------------------------------------------------------------------


@torch.no_grad()
def test_whole_model_at_batch_2048(calibrated_model, backend):
    """Stem activations of 2048 x 64 x 147 x 147 = 2.8e9 elements: 64-bit offsets everywhere."""
    model = copy.deepcopy(calibrated_model).cuda()
    fused = optimize(model, backend=backend, dtype=torch.float16)
    x = torch.randn(2048, 3, 299, 299, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
    x = x.half()
    out = fused(x)
    assert out.shape == (2048, 1000)
    assert torch.isfinite(out).all()
    rows = [0, 1, 1023, 2046, 2047]  # the far end is where a 32-bit offset would wrap
    ref = copy.deepcopy(model).double()(x[rows].double())
    eager = copy.deepcopy(model).half()(x[rows])
    two_x_rule(out[rows], eager, ref)
    del out, x
    torch.cuda.empty_cache()
