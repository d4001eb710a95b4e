"""Shared set-up of the GPU block tests of every backend: the blocks at their network sizes,
realistic inputs and the 2x accuracy rule of the benchmarking guide."""

from __future__ import annotations

import torch

from inception_fast import reference as R
from inception_fast.testing import randomize_batchnorm, relative_l2

BLOCKS = {  # reference block, its input channels and its input size in the network
    "Stem0": (lambda: R.ConvBnRelu(3, 32, 3, stride=2), 3, 299),
    "Stem1": (lambda: R.ConvBnRelu(32, 32, 3), 32, 149),
    "Stem2": (lambda: R.ConvBnRelu(32, 64, 3, padding=1), 32, 147),
    "Mixed3a": (R.Mixed3a, 64, 147),
    "Mixed4a": (R.Mixed4a, 160, 73),
    "Mixed5a": (R.Mixed5a, 192, 71),
    "InceptionA": (R.InceptionA, 384, 35),
    "ReductionA": (R.ReductionA, 384, 35),
    "InceptionB": (R.InceptionB, 1024, 17),
    "ReductionB": (R.ReductionB, 1024, 17),
    "InceptionC": (R.InceptionC, 1536, 8),
}
LOW_PRECISION = (torch.float16, torch.bfloat16)
ABS_SLACK = 1e-3  # relative-L2 slack on top of the 2x rule, for near-exact eager results


def make_block(name, seed=0):
    """(reference block on the GPU with random BN statistics, input channels, input size)."""
    torch.manual_seed(seed)
    factory, cin, size = BLOCKS[name]
    return randomize_batchnorm(factory()).eval().cuda(), cin, size


def block_input(batch, cin, size, dtype=torch.float32, channels_last=False):
    # ReLU'd inputs, like the activations every block after the stem sees
    x = torch.randn(batch, cin, size, size, device="cuda").relu_() + 0.05
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def two_x_rule(fused, eager, ref):
    """The fused result may be at most 2x as far from `ref` as eager PyTorch in its dtype."""
    fused_err, eager_err = relative_l2(fused, ref), relative_l2(eager, ref)
    assert fused_err <= 2 * eager_err + ABS_SLACK, (fused_err, eager_err)
    return fused_err, eager_err


def assert_follows_the_tf32_switch(fused, x, ref):
    """fp32 on a block: full-precision dots (1e-5 of the float64 reference) with
    torch.backends.cudnn.allow_tf32 off, TF32 dots with it on (5e-3, and clearly coarser than
    full precision: a result kept from the other setting, a stale graph, fails); the switch
    restored."""
    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        exact = relative_l2(fused(x), ref)
        assert exact < 1e-5
        torch.backends.cudnn.allow_tf32 = True
        coarse = relative_l2(fused(x), ref)
        assert 4 * exact < coarse < 5e-3, (exact, coarse)
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def on_two_streams(work):
    """`work(tid)` for tid 0 and 1 at once, in two threads, each on a CUDA stream of its own; their
    results by tid, once both streams are done (the first error of either is raised here)."""
    import threading

    results, errors = {}, []

    def worker(tid: int) -> None:
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                found = work(tid)
            stream.synchronize()
            results[tid] = found
        except Exception as err:  # noqa: BLE001 - reported by the calling thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(tid,)) for tid in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    assert sorted(results) == [0, 1]
    return results
