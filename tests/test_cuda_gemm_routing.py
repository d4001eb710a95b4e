"""The `cuda-gemm` backend's host side on the CPU: which packed problems go to the CUTLASS GEMM
op and which stay on the stage kernel, on the `cuda` backend's own packing of real blocks of
the four family networks; that the split covers every row once and that its GEMM launches
compute what the packed rows describe; the registry and availability off a GPU. The launches
themselves run in test_gpu_cuda_gemm.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from inception_fast import architectures, bench, optimize
from inception_fast import packing as pk
from inception_fast import reference as R
from inception_fast.backends import (
    BACKENDS,
    EXPERIMENTAL,
    auto_backend,
    backend_status,
    cuda_backend,
    gemm_routing,
)
from inception_fast.backends import cuda_gemm_backend as gemm
from inception_fast.modules import fuse_block
from inception_fast.testing import randomize_batchnorm

NETWORKS = ["inception_v4", "inception_v3", "inception_resnet_v2", "googlenet"]


def packed_of(block, dtype=torch.float16):
    size = (8, 8) if pk.sized(block.plan) else None  # the head's global pool: any size routes alike
    return cuda_backend._pack(block, "cpu", dtype, size)


def split_of(block):
    packed = packed_of(block)
    return packed, gemm.split_block(block, packed)


def reference_block(factory, seed=0):
    torch.manual_seed(seed)
    return fuse_block(randomize_batchnorm(factory()).eval())


@pytest.fixture(scope="module")
def network_blocks():
    """name -> the distinct fused blocks of that network (fp32, CPU)."""
    found = {}

    def get(name):
        if name not in found:
            torch.manual_seed(0)
            fused = optimize(architectures.create(name).eval(), backend="torch")
            distinct = {}
            for block in fused.blocks:
                distinct.setdefault(block.plan, block)
            found[name] = list(distinct.values())
        return found[name]

    return get


def _row(kind=pk.CONV, kernel=(1, 1), stride=1, pad=(0, 0), cin=16, cols=16, src_c0=0,
         src=pk.BUF_INPUT):
    return [kind, src, src_c0, cin, cols, *kernel, stride, *pad, 0, 0, 0]


RELU_OUT = pk.FLAG_RELU | pk.FLAG_TO_OUTPUT


@pytest.mark.parametrize(
    "row,dst,flags,takes",
    [
        (_row(), list(range(16)), [RELU_OUT] * 16, True),
        (_row(src=pk.BUF_WORK, cin=32), list(range(8, 24)), [pk.FLAG_RELU] * 16, True),
        (_row(), list(range(8)) + list(range(32, 40)), [RELU_OUT] * 8 + [0] * 8, True),  # two runs
        (_row(kernel=(3, 3), pad=(1, 1)), list(range(16)), [RELU_OUT] * 16, False),
        (_row(kernel=(1, 7), pad=(0, 3)), list(range(16)), [RELU_OUT] * 16, False),
        (_row(stride=2), list(range(16)), [RELU_OUT] * 16, False),
        (_row(pad=(1, 1)), list(range(16)), [RELU_OUT] * 16, False),
        (_row(kind=pk.AVG_POOL, kernel=(1, 1)), list(range(16)), [pk.FLAG_TO_OUTPUT] * 16, False),
        (_row(cin=8), list(range(16)), [RELU_OUT] * 16, False),  # half of the input
        (_row(src=pk.BUF_WORK, cin=16, src_c0=16), list(range(16)), [RELU_OUT] * 16, False),
        (_row(), list(range(16)), [RELU_OUT | pk.FLAG_RESIDUAL] * 16, False),
        (_row(), list(range(4, 20)), [RELU_OUT] * 16, False),  # channel offset not a multiple of 8
        (_row(), list(range(4)) + list(range(8, 20)), [RELU_OUT] * 16, False),  # a run of 4 columns
    ],
    ids=["1x1-input", "1x1-whole-work", "two-runs", "3x3", "1x7", "stride2", "padded", "pool", "input-slice",
         "work-slice", "residual", "unaligned-dst", "short-run"],
)
def test_row_reason(row, dst, flags, takes):
    channels = {pk.BUF_INPUT: 16, pk.BUF_WORK: 32, pk.BUF_OUTPUT: 64}
    reason = gemm_routing.row_reason(row, dst, flags, channels)
    assert (reason is None) == takes, reason


def test_buffers_of_unaligned_width_are_refused():
    """The op's TMA rows are whole buffers: a source or destination buffer whose channel count
    is not a multiple of 8 keeps the problem on the stage kernel."""
    row = _row(src=pk.BUF_WORK, cin=20)
    reason = gemm_routing.row_reason(row, list(range(16)), [RELU_OUT] * 16,
                                     {pk.BUF_INPUT: 16, pk.BUF_WORK: 20, pk.BUF_OUTPUT: 64})
    assert reason == "reads 20 channels, not a multiple of 8"
    reason = gemm_routing.row_reason(_row(), list(range(16)), [RELU_OUT] * 16,
                                     {pk.BUF_INPUT: 16, pk.BUF_WORK: 32, pk.BUF_OUTPUT: 60})
    assert reason == "writes a buffer of 60 channels, not a multiple of 8"


def test_inception_a_stacked_1x1_stage_is_taken_its_3x3_and_pool_stages_are_not():
    block = reference_block(R.InceptionA)
    packed, stages = split_of(block)
    first = stages[0]
    assert first.taken == [0] and first.rest is None
    # one stacked problem, one launch per branch: out[0:96] with ReLU, work[0:128] with ReLU,
    # and the pool branch's 1x1 raw into work[128:224] (its bias and ReLU come after the pool)
    assert [(g.src, g.dst, g.col_offset, g.weight.shape[0], g.relu) for g in first.launches] == [
        (pk.BUF_INPUT, pk.BUF_OUTPUT, 0, 96, True),
        (pk.BUF_INPUT, pk.BUF_WORK, 0, 128, True),
        (pk.BUF_INPUT, pk.BUF_WORK, 128, 96, False),
    ]
    for later, stage in zip(stages[1:], packed.stages[1:]):
        assert later.taken == [] and later.launches == [] and later.rest is stage  # untouched, no copy


def test_reduction_a_mixed_stage_splits():
    """Stage 0 holds a 3x3/s2 conv, the 1x1 and a max pool: the 1x1 goes to the GEMM op, the
    others stay on the stage kernel with their weight and column offsets."""
    block = reference_block(R.ReductionA)
    packed, stages = split_of(block)
    stage, split = packed.stages[0], stages[0]
    kinds = [(row[pk.KIND], row[pk.KH]) for row in stage.packed.rows]
    assert kinds == [(pk.CONV, 3), (pk.CONV, 1), (pk.MAX_POOL, 3)]
    assert split.taken == [1]
    rest = split.rest.packed
    assert rest.rows == [stage.packed.rows[0], stage.packed.rows[2]]
    assert rest.problems.tolist() == rest.rows
    assert split.rest.problems == [v for row in rest.rows for v in row]
    assert split.rest.destinations == [stage.destinations[0], stage.destinations[2]]
    assert rest.weights is stage.packed.weights and rest.bias is stage.packed.bias
    assert rest.col_dst is stage.packed.col_dst and rest.col_flags is stage.packed.col_flags


def test_padded_block_input_counts_as_the_whole_input():
    """A 1x1 conv on a 3-channel input reads the 8 channels of the zero-padded input that the
    cuda backend hands the kernels: the GEMM takes it, with K = 8."""
    torch.manual_seed(0)
    block = fuse_block(nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU()).eval())
    packed, stages = split_of(block)
    assert packed.in_channels == 8 and stages[0].taken == [0]
    (launch,) = stages[0].launches
    assert launch.weight.shape == (16, 8) and not launch.weight[:, 3:].any()


def _residual_rows(stage: pk.PackedStage) -> list[int]:
    flags = stage.col_flags.tolist()
    columns = [range(row[pk.COL_OFF], row[pk.COL_OFF] + row[pk.COLS]) for row in stage.rows]
    return [p for p, cols in enumerate(columns) if any(flags[j] & pk.FLAG_RESIDUAL for j in cols)]


def test_resnet_residual_1x1_stays_on_the_stage_kernel(network_blocks):
    residual = 0
    for block in network_blocks("inception_resnet_v2"):
        packed, stages = split_of(block)
        for stage, split in zip(packed.stages, stages):
            rows = _residual_rows(stage.packed)
            residual += len(rows)
            assert not set(rows) & set(split.taken), block.plan.label
            if rows:
                assert split.rest is not None and split.rest.packed.residual
    assert residual >= 3  # Block35, Block17, Block8


def _views_of(view: torch.Tensor, base: torch.Tensor) -> bool:
    return view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()


def _run_row(row, source, col_dst, col_flags, packed, buffers):
    """A 1x1 conv row as the packed format defines it (float64): acc + bias, ReLU per column,
    each column to its destination channel."""
    k, cols = row[pk.CIN], row[pk.COLS]
    weight = packed.weights[row[pk.W_OFF]:row[pk.W_OFF] + cols * k].view(cols, k).double()
    acc = source @ weight.T + packed.bias[row[pk.COL_OFF]:row[pk.COL_OFF] + cols].double()
    for n in range(cols):
        j = row[pk.COL_OFF] + n
        value = acc[:, n].relu() if col_flags[j] & pk.FLAG_RELU else acc[:, n]
        buffers[pk.BUF_OUTPUT if col_flags[j] & pk.FLAG_TO_OUTPUT else pk.BUF_WORK][:, col_dst[j]] = value


@pytest.mark.parametrize("name", NETWORKS)
def test_split_covers_every_row_once_and_launches_compute_the_rows(network_blocks, name):
    taken_rows = 0
    for block in network_blocks(name):
        packed, stages = split_of(block)
        channels = gemm.buffer_channels(block, packed)
        for stage, split in zip(packed.stages, stages):
            rows = stage.packed.rows
            rest_rows = split.rest.packed.rows if split.rest is not None else []
            left = [p for p in range(len(rows)) if p not in split.taken]
            assert sorted(rows.index(r) for r in rest_rows) == left
            assert len(split.taken) + len(rest_rows) == len(rows)
            col_dst, col_flags = stage.packed.col_dst.tolist(), stage.packed.col_flags.tolist()
            taken_rows += len(split.taken)
            launches = iter(split.launches)
            for p in split.taken:
                row = rows[p]
                assert gemm_routing.row_reason(row, col_dst, col_flags, channels) is None
                runs = gemm_routing.column_runs(row, col_dst, col_flags)
                mine = [next(launches) for _ in runs]
                assert sum(g.weight.shape[0] for g in mine) == row[pk.COLS]
                for g in mine:
                    assert _views_of(g.weight, stage.packed.weights) and _views_of(g.bias, stage.packed.bias)
                    assert g.weight.is_contiguous() and g.weight.shape[1] == channels[row[pk.SRC_BUF]]
                    assert g.bias.dtype == torch.float32
                # the launches write what the row describes, and nothing else
                gen = torch.Generator().manual_seed(p)
                source = torch.randn(5, row[pk.CIN], generator=gen, dtype=torch.float64)
                width = {pk.BUF_WORK: block.plan.work_channels, pk.BUF_OUTPUT: block.plan.out_channels}
                expected = {b: torch.full((5, c), float("nan"), dtype=torch.float64)
                            for b, c in width.items()}
                got = {b: t.clone() for b, t in expected.items()}
                _run_row(row, source, col_dst, col_flags, stage.packed, expected)
                for g in mine:
                    value = source @ g.weight.double().T + g.bias.double()
                    columns = slice(g.col_offset, g.col_offset + g.weight.shape[0])
                    got[g.dst][:, columns] = value.relu() if g.relu else value
                for b in width:
                    torch.testing.assert_close(got[b], expected[b], equal_nan=True)
            assert next(launches, None) is None
    assert taken_rows > 0


def test_inception_v4_routing(network_blocks):
    """Every Inception-v4 block's first stage of stacked 1x1 convs on the block input goes to
    the GEMM op; no kxk conv, strided conv or pool does."""
    taken = {}
    for block in network_blocks("inception_v4"):
        _, stages = split_of(block)
        taken[block.plan.label] = [len(s.taken) for s in stages]
    for label, counts in taken.items():
        if label.startswith(("InceptionA", "InceptionB", "InceptionC")):
            assert counts[0] == 1 and not any(counts[1:]), (label, counts)
    assert sum(map(sum, taken.values())) >= 7, taken


def test_no_gemm_leaves_every_stage_whole():
    block = reference_block(R.InceptionB)
    packed = packed_of(block)
    stages = gemm.split_block(block, packed, use_gemm=False)
    assert all(s.taken == [] and s.rest is stage for s, stage in zip(stages, packed.stages))


def test_registered_as_an_experiment_auto_weighs_only_when_named():
    assert "cuda-gemm" in BACKENDS
    assert "cuda-gemm" in EXPERIMENTAL
    assert "cuda-gemm" not in auto_backend.candidates(None)
    assert auto_backend.candidates("cuda-gemm") == ("triton", "triton-gemm", "cuda", "cuda-gemm", "torch")
    assert {"fused-cuda-gemm", "fused-cuda-gemm-graph"} <= set(bench.EXPERIMENTAL_IDS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_says_why_it_is_unusable_without_a_gpu():
    usable, reason = backend_status("cuda-gemm", "cpu")
    assert not usable and reason


def test_fp32_runs_like_the_cuda_backend(monkeypatch):
    """float32 is not the GEMM op's: the block goes where the cuda backend sends it (PyTorch ops)."""
    block = reference_block(R.InceptionA)
    x = torch.randn(1, 384, 5, 5)
    monkeypatch.setattr(cuda_backend, "_explain_once", lambda message: None)
    expected = block(x)
    block.backend = "cuda-gemm"
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


def test_loading_every_backend_imports_no_dynamo():
    """Loading the backends (a first call does) must not import torch._dynamo: seconds of every
    process's first inference. The CUTLASS ops' question is therefore not
    `torch.compiler.disable`d but asked before a trace (`resolve_backend`)."""
    import subprocess
    import sys

    script = ("import sys\nfrom inception_fast.backends import BACKENDS, get_backend\n"
              "[get_backend(name) for name in BACKENDS]\nprint('torch._dynamo' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_the_cutlass_question_first_asked_inside_a_trace_answers_no(monkeypatch):
    monkeypatch.setattr(gemm_routing, "_asked", {})
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    ok, reason = gemm_routing._compiled_in("cuda_conv_fprop", "cuda:0")
    assert not ok and "inside a torch.compile trace" in reason
    assert gemm_routing._asked == {}  # not kept: asked again outside a trace


@pytest.mark.parametrize(("m", "n", "k_blocks", "sms", "splits"), [
    (289, 256, 28, 132, 3),  # InceptionB's 7x1 224-to-256 conv at batch 1: 12 tiles, 3 ranges
    (289, 224, 21, 132, 1),  # its 1x7 192-to-224: splitting would gain less than it costs
    (289, 384, 54, 132, 4),  # ReductionA's 3x3/2 conv: 18 tiles of 54 k-blocks
    (2312, 256, 28, 132, 1),  # batch 8: 76 tiles keep more than a quarter of the SMs busy
    (289, 256, 28, 40, 1),  # a share of 40 SMs: 12 tiles are more than a quarter of it
    (64, 64, 100, 132, 5),  # one tile, a long K loop
    (289, 256, 28, 0, 1),  # no GPU
])
def test_split_k_count_splits_only_where_the_tiles_leave_most_sms_idle(m, n, k_blocks, sms, splits):
    """At the count of least cost (the longest range, plus the costs of splitting), in one wave."""
    assert gemm_routing.split_k_count(m, n, k_blocks, sms) == splits


def test_a_launch_splits_by_its_planned_share_not_by_the_sms_it_runs_on():
    """With split-K on (`auto`), the small-stage share decides, whether the stage runs side by side
    in it or one launch after another on every SM: the same count, so the same bits, with a CUDA
    graph and without."""
    weight = torch.zeros(384, 1536, dtype=torch.float16)  # InceptionC's 1x1 at batch 1
    buffers = {pk.BUF_INPUT: torch.zeros(1, 8, 8, 1536, dtype=torch.float16)}
    launch = gemm_routing.GemmLaunch(src=pk.BUF_INPUT, dst=pk.BUF_OUTPUT, col_offset=0, relu=True,
                                     weight=weight, bias=torch.zeros(384), split_k=0)  # auto
    assert launch.splits(buffers) == 1  # not planned: no SM count
    gemm_routing.share_sms([launch], 132)
    assert launch.small_stage_sm_limit == 0 and launch.splits(buffers) == 1  # cached for these rows
    launch.splits_by_rows.clear()
    assert launch.splits(buffers) == 3  # 64 x 384: 6 tiles of 24 k-blocks on 132 SMs
    launch.splits_by_rows.clear()
    launch.small_stage_sm_limit = 20
    assert launch.splits(buffers) == 1  # 6 tiles fill more than a quarter of a 20-SM share
    fp32 = dataclasses.replace(launch, weight=weight.float(), tf32=True, splits_by_rows={})
    fp32.small_stage_sm_limit = 0
    assert fp32.splits(buffers) == 1  # split-K is fp16 and bf16 only
    conv = gemm_routing.ConvLaunch(src=pk.BUF_INPUT, dst=pk.BUF_OUTPUT, in_c0=0, out_c0=0, relu=True,
                                   weight=torch.zeros(256, 7, 1, 224, dtype=torch.float16),
                                   bias=torch.zeros(256), stride=1, pad_h=3, pad_w=0, tile_n=0, sm_count=132,
                                   split_k=0)
    buffers[pk.BUF_OUTPUT] = torch.zeros(1, 17, 17, 448, dtype=torch.float16)
    assert conv.splits(buffers) == 3  # 12 tiles of 4 x 7 k-blocks
    assert dataclasses.replace(conv, tile_n=96, splits_by_rows={}).splits(buffers) == 1  # a tile asked for
    assert dataclasses.replace(conv, split_k=3, splits_by_rows={}).splits(buffers) == 3  # the setting
