"""The TMA conv path's host side on the CPU: which problems it takes, how a mixed stage splits,
the switch and config parsing. The kernel itself runs in test_tma_conv_interpreter.py (CPU)
and test_gpu_tma_conv.py (GPU)."""

from __future__ import annotations

import pytest
import torch
from stage_cases import make_case

from inception_fast import packing as pk
from inception_fast import reference as R
from inception_fast.kernels.triton import tma_conv
from inception_fast.kernels.triton.tma_conv import TmaConfig
from inception_fast.modules import fuse_block


def _row(kind=pk.CONV, kernel=(1, 1), stride=1, pad=(0, 0), cin=16, cols=16, src_c0=0):
    return [kind, pk.BUF_INPUT, src_c0, cin, cols, *kernel, stride, *pad, 0, 0, 0]


@pytest.mark.parametrize(
    "row,takes",
    [
        (_row(), True),
        (_row(kernel=(3, 3), pad=(1, 1)), True),
        (_row(kernel=(1, 7), pad=(0, 3)), True),
        (_row(kernel=(3, 3), pad=(0, 0)), True),  # a valid conv: the output is smaller
        (_row(kernel=(3, 3), stride=2), False),
        (_row(kind=pk.MAX_POOL, kernel=(3, 3), pad=(1, 1)), False),
        (_row(kernel=(3, 3), pad=(2, 2)), False),  # the output would be wider than the input
        (_row(src_c0=4), False),
    ],
    ids=["1x1", "3x3p1", "1x7p3", "3x3p0", "3x3s2", "maxpool", "3x3p2", "unaligned"],
)
def test_row_reason(row, takes):
    reason = tma_conv.row_reason(row)
    assert (reason is None) == takes, reason


def _stage_of(name, index):
    return make_case(name).packed("cpu", torch.float32)[index]


def test_plan_of_a_conv_stage():
    tma = tma_conv.plan_stage(_stage_of("asymmetric_windows", 0))
    assert tma.rest is None and len(tma.rows) == 4
    assert (tma.has_gemm, tma.has_taps, tma.tap_mask, tma.has_residual) == (False, True, True, False)
    # BOX tiles zero-fill both axes, ROWS tiles mask windows that keep the size: no masked
    # FLAT loop left
    assert tma.kernel_flags(TmaConfig(box_w=16)) == (False, True, False, False)
    assert tma.kernel_flags(TmaConfig(rows=1)) == (False, True, False, False)
    assert tma.kernel_flags(TmaConfig()) == (False, True, True, False)
    residual = tma_conv.plan_stage(_stage_of("residual_relu", 0))
    assert (residual.has_gemm, residual.has_taps, residual.has_residual) == (True, False, True)


def test_pool_stages_stay_on_the_stage_kernel():
    assert tma_conv.plan_stage(_stage_of("three_pools_s1", 0), allow_split=True) is None
    assert tma_conv.plan_stage(_stage_of("conv7x7_s2_pad3_rgb", 0), allow_split=True) is None


def test_mixed_stage_splits_only_when_allowed():
    torch.manual_seed(0)
    stage = pk.pack_block(fuse_block(R.InceptionB().eval()), "cpu", torch.float32)[1]  # 1x7, 7x1, avg pool
    assert tma_conv.plan_stage(stage) is None
    tma = tma_conv.plan_stage(stage, allow_split=True)
    kinds = [row[pk.KIND] for row in stage.rows]
    assert [row[pk.KIND] for row in tma.rows] == [pk.CONV, pk.CONV]
    assert [row[pk.KIND] for row in tma.rest.rows] == [k for k in kinds if k != pk.CONV]
    # the device tables hold the same rows, which keep their weight and column offsets
    assert tma.problems.tolist() == tma.rows and tma.rest.problems.tolist() == tma.rest.rows
    assert tma.rest.weights is stage.weights and tma.rest.col_dst is stage.col_dst
    assert tma.rest_signature == pk.stage_signature(tma.rest) and not tma.rest.residual
    assert tma.rest_state is not None and not tma.rest_state.configs  # its own launch state
    assert tma.tap_mask  # the 1x7 conv pads its width


def test_mode_switch(monkeypatch):
    monkeypatch.delenv(tma_conv.ENV_MODE, raising=False)
    assert tma_conv.mode() is None
    for value, expected in (("0", None), ("1", "1"), ("split", "split")):
        monkeypatch.setenv(tma_conv.ENV_MODE, value)
        assert tma_conv.mode() == expected
    monkeypatch.setenv(tma_conv.ENV_MODE, "yes")
    with pytest.raises(ValueError, match="INCEPTION_FAST_TMA='yes'"):
        tma_conv.mode()


def test_config_override_and_checks(monkeypatch):
    tma = tma_conv.plan_stage(_stage_of("residual_relu", 0))  # 16 input channels
    monkeypatch.delenv(tma_conv.ENV_CONFIG, raising=False)
    assert tma_conv.default_config(tma, 2).block_k == 32  # a 64-wide step would be mostly zeros
    monkeypatch.setenv(tma_conv.ENV_CONFIG, "128,256,64,8,3,16")
    assert tma_conv.default_config(tma, 2) == TmaConfig(128, 256, 64, 8, 3, 16, 1, 1)
    monkeypatch.setenv(tma_conv.ENV_CONFIG, "128,x")
    with pytest.raises(ValueError, match="as integers"):
        tma_conv.default_config(tma, 2)
    with pytest.raises(ValueError, match="block_n must be a power of two"):
        tma_conv.check_config(TmaConfig(block_n=96))
    with pytest.raises(ValueError, match="box_w=48"):
        tma_conv.check_config(TmaConfig(box_w=48))
    with pytest.raises(ValueError, match="exclude each other"):
        tma_conv.check_config(TmaConfig(box_w=16, rows=1))


def test_tiles_and_waste():
    row = _row(kernel=(7, 1), pad=(3, 0), cols=192)  # InceptionB's 7x1 on a 17x17 map
    flat = TmaConfig(block_m=128, block_n=128)
    # FLAT: ceil(289 / 128) = 3 pixel tiles per image, 2 column tiles
    assert tma_conv.tma_tiles([row], 2, 17, 17, flat) == 2 * 3 * 2
    assert tma_conv.computed_fraction([row], 2, 17, 17, flat) == pytest.approx(289 / 384)
    box = flat._replace(box_w=16)  # 8 x 16 boxes: 3 x 2 per image
    assert tma_conv.tma_tiles([row], 2, 17, 17, box) == 2 * 6 * 2
    assert tma_conv.computed_fraction([row], 2, 17, 17, box) == pytest.approx(289 / 768)
    gemm = _row(cols=320)  # 1x1: tiles run across images
    assert tma_conv.tma_tiles([gemm], 2, 17, 17, flat) == 5 * 3
    rows = flat._replace(rows=1)  # ROWS: a window that keeps the size tiles as a 1x1 does
    assert tma_conv.tma_tiles([row], 2, 17, 17, rows) == 5 * 2
    assert tma_conv.computed_fraction([row], 2, 17, 17, rows) == pytest.approx(578 / 640)
    # no padding: the map shrinks, so FLAT tiles per image over its 15 rows of 17 columns
    valid = _row(kernel=(3, 3), cols=64)
    assert tma_conv.tma_tiles([valid], 2, 17, 17, rows) == 2 * 2
    assert tma_conv.tma_tiles([valid], 2, 17, 17, flat) == 2 * 2


def test_buffers_reason():
    x = torch.zeros(2, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    assert tma_conv.buffers_reason(x) is None
    odd = torch.zeros(2, 12, 3, 3, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    assert tma_conv.buffers_reason(x, odd) is not None  # 24-byte pixel stride
    shifted = torch.zeros(2 * 16 * 9 + 1)[1:].view(2, 3, 3, 16).permute(0, 3, 1, 2)
    assert tma_conv.buffers_reason(shifted) is not None  # base 4 bytes past an aligned address
