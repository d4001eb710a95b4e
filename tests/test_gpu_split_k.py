"""Split-K in the CUTLASS ops (`cuda_gemm_conv1x1`, `cuda_conv_fprop`: split_k) on a Hopper GPU:
each output tile's K loop cut into ranges whose fp32 partials meet in a per-stream workspace.

- Against float64 at odd batches, fp16 and bf16, 2 to 8 ranges, ReLU on and off, channel slices
  of wider buffers: at most twice cuDNN's own error plus 1e-6; the channels outside the slice
  keep their sentinel; the same bits on every run (the partials are added in split order).
- The workspace's locks stay clear: problems of other sizes and split counts in turn on one
  stream, on a second stream, on a share of the SMs (more splits than the share runs at once),
  inside a CUDA graph captured on a stream that never ran one, and after it.
- The network with INCEPTION_FAST_CUTLASS_SPLIT_K=auto (off by default): Inception-v4 at batch 1
  and 3 (fp16, triton-gemm) splits where the planned share leaves SMs idle, within the 2x rule,
  with the same bits from a CUDA graph as without.
Skipped without the CUTLASS headers or off Hopper."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from gpu_blocks import two_x_rule

from inception_fast import extension, optimize
from inception_fast.backends import gemm_routing
from inception_fast.testing import relative_l2

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(extension.cutlass_include_dir() is None,
                       reason="no CUTLASS headers (pip install nvidia-cutlass)"),
]
SENTINEL = 1234.0
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module", autouse=True)
def hopper():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the CUTLASS kernels are built for sm_90a (Hopper) only")
    extension.load()


class Conv:
    """One k x k conv on a channel slice of a wider input into a slice of a wider output."""

    def __init__(self, batch, size, c, k, window, stride, pad, dtype, seed):
        generator = torch.Generator(device="cuda").manual_seed(seed)
        self.in_c0, self.out_c0, self.k = 8, 40, k
        self.x = torch.randn(batch, size, size, c + 16, device="cuda", generator=generator).relu_().to(dtype)
        fan_in = c * window[0] * window[1]
        self.weight = (torch.randn(k, *window, c, device="cuda", generator=generator) / fan_in**0.5).to(dtype)
        self.bias = torch.randn(k, device="cuda", generator=generator) * 0.1
        self.stride, self.pad = stride, pad
        source = self.x[..., self.in_c0:self.in_c0 + c].permute(0, 3, 1, 2)
        kernel = self.weight.permute(0, 3, 1, 2)
        self.exact = F.conv2d(source.double(), kernel.double(), self.bias.double(), stride, pad)
        cudnn_in = source.contiguous(memory_format=torch.channels_last)
        self.cudnn = F.conv2d(cudnn_in, kernel, self.bias.to(dtype), stride, pad)
        p, q = self.exact.shape[2:]
        self.out = torch.full((batch, p, q, self.out_c0 + k + 24), SENTINEL, device="cuda", dtype=dtype)

    def run(self, relu: bool, split_k: int, sm_limit: int = 0) -> torch.Tensor:
        self.out.fill_(SENTINEL)
        op = torch.ops.inception_fast.cuda_conv_fprop
        op(self.x, self.weight, self.bias, self.out, self.in_c0, self.out_c0, self.stride, *self.pad, relu, 0,
           False, sm_limit, 0, split_k)
        return self.out.clone()

    def result(self, out: torch.Tensor) -> torch.Tensor:
        return out[..., self.out_c0:self.out_c0 + self.k].permute(0, 3, 1, 2)

    def check(self, out: torch.Tensor, relu: bool, case) -> None:
        exact = self.exact.relu() if relu else self.exact
        bound = 2 * relative_l2(self.cudnn.relu() if relu else self.cudnn, exact) + 1e-6
        error = relative_l2(self.result(out), exact)
        assert error <= bound, (case, error, bound)
        assert (out[..., :self.out_c0] == SENTINEL).all(), case
        assert (out[..., self.out_c0 + self.k:] == SENTINEL).all(), case


class Gemm:
    """One 1x1 conv (the GEMM op) into a channel slice of a wider output."""

    def __init__(self, batch, size, k, n, dtype, seed):
        generator = torch.Generator(device="cuda").manual_seed(seed)
        self.col_offset, self.n = 40, n
        self.x = torch.randn(batch, size, size, k, device="cuda", generator=generator).relu_().to(dtype)
        self.weight = (torch.randn(n, k, device="cuda", generator=generator) / k**0.5).to(dtype)
        self.bias = torch.randn(n, device="cuda", generator=generator) * 0.1
        m = self.x.numel() // k
        self.exact = (self.x.reshape(m, k).double() @ self.weight.double().T + self.bias.double())
        cudnn = F.conv2d(self.x.permute(0, 3, 1, 2), self.weight.reshape(n, k, 1, 1), self.bias.to(dtype))
        self.cudnn = cudnn.permute(0, 2, 3, 1).reshape(m, n)
        channels = self.col_offset + n + 24
        self.out = torch.full((batch, size, size, channels), SENTINEL, device="cuda", dtype=dtype)

    def run(self, relu: bool, split_k: int, sm_limit: int = 0) -> torch.Tensor:
        self.out.fill_(SENTINEL)
        op = torch.ops.inception_fast.cuda_gemm_conv1x1
        op(self.x, self.weight, self.bias, self.out, self.col_offset, relu, 0, False, sm_limit, split_k)
        return self.out.clone()

    def check(self, out: torch.Tensor, relu: bool, case) -> None:
        flat = out.reshape(self.exact.shape[0], -1)
        exact = self.exact.relu() if relu else self.exact
        bound = 2 * relative_l2(self.cudnn.relu() if relu else self.cudnn, exact) + 1e-6
        error = relative_l2(flat[:, self.col_offset:self.col_offset + self.n], exact)
        assert error <= bound, (case, error, bound)
        assert (flat[:, :self.col_offset] == SENTINEL).all(), case
        assert (flat[:, self.col_offset + self.n:] == SENTINEL).all(), case


def problems(dtype) -> list:
    """Inception-v4's small-batch problems, at odd batches and sizes."""
    return [
        Conv(1, 17, 192, 224, (1, 7), 1, (0, 3), dtype, seed=1),  # InceptionB, batch 1
        Conv(3, 17, 224, 256, (7, 1), 1, (3, 0), dtype, seed=2),
        Conv(1, 8, 448, 512, (1, 3), 1, (0, 1), dtype, seed=3),  # InceptionC
        Conv(1, 35, 384, 384, (3, 3), 2, (0, 0), dtype, seed=4),  # ReductionA, stride 2
        Conv(2, 13, 64, 96, (5, 5), 1, (2, 2), dtype, seed=5),  # a 5x5 at an odd size
        Gemm(1, 17, 1024, 384, dtype, seed=6),  # InceptionB's 1x1
        Gemm(3, 8, 1536, 256, dtype, seed=7),
        Gemm(1, 9, 1000, 120, dtype, seed=8),  # K not a multiple of the 64-channel k-block
    ]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_split_k_matches_float64_and_repeats_its_bits(dtype):
    for index, problem in enumerate(problems(dtype)):
        for split_k in (2, 3, 5, 8):
            for relu in (False, True):
                case = (index, type(problem).__name__, split_k, relu)
                out = problem.run(relu, split_k)
                problem.check(out, relu, case)
                assert torch.equal(problem.run(relu, split_k), out), case


def test_the_locks_stay_clear_across_problems_streams_shares_and_graphs():
    """One workspace per stream, shared by every split-K launch on it: each launch leaves its
    locks zero for the next, of any size; a capture zeroes them in its own graph."""
    runs = problems(torch.float16)
    expected = {(i, s): p.run(True, s) for i, p in enumerate(runs) for s in (2, 4, 7)}

    def sweep(sm_limit=0):
        for turn in range(3):
            for (i, s), out in expected.items():
                got = runs[i].run(True, s, sm_limit)
                assert torch.equal(got, out), (turn, i, s, sm_limit)

    sweep()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sweep()
        sweep(sm_limit=9)  # more CTAs of splits than 9 SMs hold at once: the same bits, later
    torch.cuda.current_stream().wait_stream(side)
    fresh = torch.cuda.Stream()  # never ran a split-K launch: its workspace is made in the capture
    fresh.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    conv, gemm = runs[0], runs[5]
    with torch.cuda.graph(graph, stream=fresh):
        conv.run(True, 4)
        gemm.run(False, 3)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(conv.out, expected[(0, 4)])
        gemm.check(gemm.out, False, "graph")
    with torch.cuda.stream(fresh):  # outside the capture on that stream: zeroed before its first use
        sweep()
    torch.cuda.synchronize()


def test_split_k_is_refused_where_it_is_not_built():
    conv = Conv(1, 8, 64, 64, (3, 3), 1, (1, 1), torch.float16, seed=0)
    with pytest.raises(RuntimeError, match=r"split_k must be 0 or 1 \(no split\) or 2 to 8"):
        conv.run(True, 9)
    gemm = torch.ops.inception_fast.cuda_gemm_conv1x1
    x, weight, bias = (torch.zeros(shape, device="cuda") for shape in ((1, 8, 8, 64), (64, 64), (64,)))
    with pytest.raises(RuntimeError, match="split-K is built for fp16 and bf16 in 128 x 64 tiles; got Float"):
        gemm(x, weight, bias, torch.zeros_like(x), 0, True, 0, True, 0, 2)
    with pytest.raises(RuntimeError, match="got Half with tile_m 0, tile_n 128"):
        gemm(x.half(), weight.half(), bias, torch.zeros_like(x).half(), 0, True, 128, False, 0, 2)


@pytest.mark.parametrize("batch", [1, 3])
@torch.no_grad()
def test_the_network_splits_at_small_batches_with_the_same_bits_in_a_graph(calibrated_model, monkeypatch,
                                                                           batch):
    monkeypatch.setenv(gemm_routing.ENV_SPLIT_K, "auto")
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(batch, 3, 299, 299, device="cuda")
    ref = model(x)
    eager = copy.deepcopy(model).half()(x.half())
    splits = []
    names = ("cuda_conv_fprop", "cuda_gemm_conv1x1")
    real = {name: getattr(torch.ops.inception_fast, name).default for name in names}

    def counted(name):
        def op(*args):
            splits.append(args[-1])
            return real[name](*args)
        return type("Op", (), {"default": staticmethod(op)})

    plain = optimize(model, backend="triton-gemm", dtype=torch.float16, cuda_graph=False)
    for name in real:
        monkeypatch.setattr(torch.ops.inception_fast, name, counted(name))
    monkeypatch.setenv("INCEPTION_FAST_PROGRAMS", "0")  # every launch through the ops, to count them
    out = plain(x.half())
    two_x_rule(out, eager, ref)
    assert max(splits) > 1, "no launch was split at this batch"
    graphed = optimize(model, backend="triton-gemm", dtype=torch.float16, cuda_graph=True)
    for _ in range(2):  # capture, then replay
        torch.testing.assert_close(graphed(x.half()), out, rtol=0, atol=0)
