"""The block plans are data: check their bookkeeping against itself and against the reference
modules, so a backend that executes a plan faithfully computes the block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inception_fast import plan as plans
from inception_fast import reference
from inception_fast.plan import INPUT, OUTPUT, WORK, AvgPoolBiasRelu, Conv, MaxPool
from inception_fast.testing import relative_l2

BLOCK_PLANS = [
    plans.MIXED_3A, plans.MIXED_4A, plans.MIXED_5A, plans.INCEPTION_A, plans.REDUCTION_A,
    plans.INCEPTION_B, plans.REDUCTION_B, plans.INCEPTION_C,
]
ALL_PLANS = list(plans.STEM) + BLOCK_PLANS


def _ids(plan_list):
    return [p.name for p in plan_list]


def _reads(op):
    return op.src


def _writes(op):
    return [w.dst for w in op.writes] if isinstance(op, Conv) else [op.dst]


def _channels(s):
    return set(range(s.start, s.stop))


@pytest.mark.parametrize("plan", ALL_PLANS, ids=_ids(ALL_PLANS))
def test_every_output_channel_is_written_exactly_once(plan):
    counts = [0] * plan.out_channels
    for op in plan.ops:
        for dst in _writes(op):
            assert 0 <= dst.start < dst.stop, dst
            if dst.buffer == OUTPUT:
                assert dst.stop <= plan.out_channels, dst
                for c in range(dst.start, dst.stop):
                    counts[c] += 1
    assert counts == [1] * plan.out_channels


@pytest.mark.parametrize("plan", ALL_PLANS, ids=_ids(ALL_PLANS))
def test_work_slices_are_disjoint_and_fill_the_work_buffer(plan):
    written = []
    for op in plan.ops:
        for dst in _writes(op):
            if dst.buffer == WORK:
                assert dst.stop <= plan.work_channels, dst
                written += range(dst.start, dst.stop)
    assert len(written) == len(set(written)), "a work channel is written twice"
    # No scratch channel is allocated and left unused.
    assert sorted(written) == list(range(plan.work_channels))


@pytest.mark.parametrize("plan", ALL_PLANS, ids=_ids(ALL_PLANS))
def test_ops_read_only_the_input_or_what_earlier_stages_wrote(plan):
    ready = {WORK: set()}
    for stage in plan.stages:
        assert stage, "empty stage"
        written_now = {WORK: set(), OUTPUT: set()}
        for op in stage:
            src = _reads(op)
            assert src.start < src.stop
            if src.buffer == INPUT:
                assert src.stop <= plan.in_channels, src
            else:
                # Nothing reads the block output; work reads need a finished earlier stage.
                assert src.buffer == WORK, src
                assert _channels(src) <= ready[WORK], f"{op} reads work not yet written"
            for dst in _writes(op):
                assert dst.buffer in (WORK, OUTPUT), dst
                written_now[dst.buffer] |= _channels(dst)
        for op in stage:
            if op.src.buffer == WORK:
                assert not _channels(op.src) & written_now[WORK], f"{op} reads its own stage's writes"
        ready[WORK] |= written_now[WORK]


@pytest.mark.parametrize("plan", ALL_PLANS, ids=_ids(ALL_PLANS))
def test_every_work_slice_written_is_read(plan):
    read = set()
    for op in plan.ops:
        if op.src.buffer == WORK:
            read |= _channels(op.src)
    assert read == set(range(plan.work_channels))


@pytest.mark.parametrize("plan", ALL_PLANS, ids=_ids(ALL_PLANS))
def test_raw_writes_go_through_an_avg_pool_of_the_same_conv(plan):
    raw = {}
    for op in plan.convs:
        for write in op.writes:
            if write.raw:
                assert write.dst.buffer == WORK
                raw[write.dst] = op
    pools = [op for op in plan.ops if isinstance(op, AvgPoolBiasRelu)]
    assert len(pools) == len(raw)
    for pool in pools:
        assert pool.src in raw, "an AvgPoolBiasRelu reads something other than raw conv columns"
        assert pool.source in raw[pool.src].sources
        assert pool.src.channels == pool.dst.channels


def _reference_block(plan):
    """The reference module a plan stands for, on the meta device (geometry only, no init)."""
    with torch.device("meta"):
        if plan.name.startswith("Stem"):
            return reference.InceptionV4().features[int(plan.name[-1])]
        return getattr(reference, plan.name)()


@pytest.mark.parametrize("plan", ALL_PLANS, ids=_ids(ALL_PLANS))
def test_plan_geometry_matches_the_reference_block(plan):
    block = _reference_block(plan)
    used = []
    for op in plan.convs:
        out_channels = 0
        for path in op.sources:
            module = block.get_submodule(path)
            conv = module.conv
            assert tuple(conv.kernel_size) == op.kernel, path
            assert tuple(conv.stride) == (op.stride, op.stride), path
            assert tuple(conv.padding) == op.padding, path
            assert conv.in_channels == op.in_channels, path
            out_channels += conv.out_channels
            used.append(path)
        assert out_channels == op.out_channels, op.sources
    for op in plan.ops:
        if isinstance(op, AvgPoolBiasRelu):
            # The source conv is the 1x1 after an AvgPool(3, 1, 1, count_include_pad=False).
            branch, _, index = op.source.rpartition(".")
            pool = block.get_submodule(branch)[int(index) - 1]
            assert isinstance(pool, nn.AvgPool2d) and not pool.count_include_pad
            assert (pool.kernel_size, pool.stride, pool.padding) == (op.kernel, op.stride, op.padding)
            assert block.get_submodule(op.source).conv.kernel_size == (1, 1)
        if isinstance(op, MaxPool):
            pools = [m for m in block.modules() if isinstance(m, nn.MaxPool2d)]
            assert len(pools) == 1
            assert (pools[0].kernel_size, pools[0].stride, pools[0].padding) == (
                op.kernel, op.stride, op.padding,
            )
    # Every conv of the block is in the plan exactly once.
    if plan.name.startswith("Stem"):
        assert used == [""]
    else:
        all_convs = [name[: -len(".conv")] for name, m in block.named_modules() if isinstance(m, nn.Conv2d)]
        assert sorted(used) == sorted(all_convs)


@pytest.mark.parametrize("plan", ALL_PLANS, ids=_ids(ALL_PLANS))
@pytest.mark.parametrize("hw", [(9, 11), (17, 17)])
def test_block_output_size_matches_the_reference(plan, hw):
    block = _reference_block(plan)
    x = torch.zeros(1, plan.in_channels, *hw, device="meta")
    expected = block(x).shape
    assert (plan.out_channels, *plans.block_output_hw(plan, *hw)) == tuple(expected[1:])


@pytest.mark.parametrize("plan", BLOCK_PLANS, ids=_ids(BLOCK_PLANS))
def test_every_output_op_lands_on_the_same_output_size(plan):
    for hw in ((3, 3), (8, 8), (17, 17), (35, 35), (9, 14)):
        sizes = {plans.op_output_hw(op, *hw) for op in plan.ops if plans.op_writes_output(op)}
        # Ops reading work read it at the input's resolution, so all see `hw`.
        assert len(sizes) == 1, (hw, sizes)


def test_too_small_input_names_the_block():
    with pytest.raises(ValueError, match="ReductionA: input of 2x2 is too small"):
        plans.block_output_hw(plans.REDUCTION_A, 2, 2)


def test_feature_plans_follow_the_reference_network():
    with torch.device("meta"):
        names = [type(b).__name__ for b in reference.InceptionV4().features][3:]
    assert [p.name for p in plans.FEATURE_PLANS][3:] == names
    assert all(a.out_channels == b.in_channels for a, b in zip(plans.FEATURE_PLANS, plans.FEATURE_PLANS[1:]))


def test_stage_counts_and_stacked_gemm_widths():
    # One launch per dependency stage: 75 for the whole network.
    assert sum(len(p.stages) for p in plans.FEATURE_PLANS) == 75
    stages = {p.name: len(p.stages) for p in BLOCK_PLANS}
    assert stages == {
        "Mixed3a": 1, "Mixed4a": 4, "Mixed5a": 1, "InceptionA": 3, "ReductionA": 3,
        "InceptionB": 5, "ReductionB": 4, "InceptionC": 4,
    }
    stage1 = {
        p.name: op.out_channels
        for p in BLOCK_PLANS
        for op in p.stages[0]
        if isinstance(op, Conv) and len(op.sources) > 1
    }
    assert stage1 == {
        "Mixed4a": 128, "InceptionA": 320, "InceptionB": 896, "ReductionB": 448, "InceptionC": 1280,
    }


@pytest.mark.parametrize("channels, cout, hw", [(384, 96, (9, 9)), (64, 7, (5, 13)), (12, 5, (1, 4))])
def test_pool_rewrite_identity(channels, cout, hw):
    """relu(W @ avgpool(x) + b) == relu(avgpool(W @ x) + b) for AvgPool(3, 1, 1,
    count_include_pad=False), borders included: the rewrite the plans rely on."""
    x = torch.randn(2, channels, *hw, dtype=torch.float64)
    weight = torch.randn(cout, channels, 1, 1, dtype=torch.float64)
    bias = torch.randn(cout, dtype=torch.float64)

    def pool(t):
        return F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)

    expected = torch.relu(F.conv2d(pool(x), weight, bias))
    rewritten = torch.relu(pool(F.conv2d(x, weight)) + bias[:, None, None])
    assert relative_l2(rewritten, expected) < 1e-13
    # With count_include_pad=True the borders would differ: check the test can tell.
    padded = torch.relu(F.avg_pool2d(F.conv2d(x, weight), 3, 1, 1) + bias[:, None, None])
    assert relative_l2(padded, expected) > 1e-3
