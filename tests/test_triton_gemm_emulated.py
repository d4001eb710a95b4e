"""The `triton-gemm` backend on the CPU: which of the `triton` backend's packed problems go to
the CUTLASS GEMM op and what is left for the stage kernel (a fresh tuning signature and launch
state), and its real run_block in float64 with both ops emulated (the GEMM op by its contract,
the stage kernel by test_cuda_kernel_emulation's model of it) against the `torch` backend, so
the buffers, channel offsets, weight rows and launch order are checked without a GPU. The GPU
runs the real ops in test_gpu_cuda_gemm.py."""

from __future__ import annotations

import pytest
import torch
from test_cuda_gemm_emulated import V4_CASES, EmulatedGemm, assert_tf32_values, emulated_stage
from test_cuda_kernel_emulation import _family_block
from torch import nn

pytest.importorskip("triton")

from inception_fast import packing as pk
from inception_fast import reference as R
from inception_fast import side_streams
from inception_fast.backends import gemm_routing, torch_backend, triton_backend
from inception_fast.backends import triton_gemm_backend as tg
from inception_fast.kernels.triton import ops as triton_ops
from inception_fast.kernels.triton.launch_state import round_to_tf32
from inception_fast.modules import fuse_block
from inception_fast.reference import InceptionV4
from inception_fast.testing import randomize_batchnorm, relative_l2


def triton_stages(block, dtype=torch.float16):
    padded = triton_backend.padded_channels(block.plan)
    size = (8, 8) if pk.sized(block.plan) else (None, None)
    packed = pk.pack_block(block, "cpu", dtype, padded, *size)
    return [(stage, pk.stage_signature(stage), None) for stage in packed], padded or block.plan.in_channels


def reference_block(factory):
    torch.manual_seed(0)
    return fuse_block(randomize_batchnorm(factory()).eval())


def test_inception_a_first_stage_goes_whole_to_the_gemm_op_the_others_stay():
    block = reference_block(R.InceptionA)
    stages, channels = triton_stages(block)
    splits = tg.split_stages(block, stages, channels)
    assert splits[0].rest is None and len(splits[0].launches) == 3
    for split, stage in zip(splits[1:], stages[1:]):
        assert split.launches == [] and split.rest is stage  # untouched: the triton backend's own


def test_a_stages_op_launches_share_the_sms_by_their_work(monkeypatch):
    monkeypatch.delenv("INCEPTION_FAST_SIDE_STREAMS", raising=False)
    monkeypatch.delenv("INCEPTION_FAST_SM_SHARES", raising=False)
    block = reference_block(R.InceptionA)
    stages, channels = triton_stages(block)

    def limits(**kwargs):
        return [launch.sm_limit for launch in tg.split_stages(block, stages, channels, **kwargs)[0].launches]

    assert limits(sm_count=132) == [40, 52, 40]  # stage 0: 96, 128 and 96 columns over 384 channels
    assert limits() == [0, 0, 0]
    monkeypatch.setenv("INCEPTION_FAST_SM_SHARES", "0")
    assert limits(sm_count=132) == [0, 0, 0]


def test_a_small_stage_shares_the_sms_among_every_launch(monkeypatch):
    """ReductionA's first stage: its 3x3/2 conv and its 1x1 GEMM both read the block input. In a
    large stage each takes every SM (they read different sources' worth of work: no shares); in
    a small one they share by multiply-adds per input pixel (the conv's over its stride's 4)."""
    monkeypatch.delenv("INCEPTION_FAST_SIDE_STREAMS", raising=False)
    monkeypatch.delenv("INCEPTION_FAST_SM_SHARES", raising=False)
    block = reference_block(R.ReductionA)
    stages, channels = triton_stages(block)
    launches = tg.split_stages(block, stages, channels, kxk=True, sm_count=132)[0].launches
    kinds = [type(launch).__name__ for launch in launches]
    assert sorted(kinds) == ["ConvLaunch", "GemmLaunch"]
    gemm = launches[kinds.index("GemmLaunch")]
    conv = launches[kinds.index("ConvLaunch")]
    assert gemm.sm_limit == 0  # alone in its source's group
    assert (conv.work, gemm.work) == (384 * 9 * 384 // 4, 192 * 384)
    assert (conv.small_stage_sm_limit, gemm.small_stage_sm_limit) == (108, 24)


def test_a_stage_is_small_while_each_launch_makes_at_most_1_9_waves_of_tiles():
    """InceptionA's first stage: 96, 64 and 64 columns, one 128 x 128 tile per 128 pixels each;
    1.9 waves over 132 SMs are 250.8 tiles: 26 images at 35 x 35 (249 tiles; 27 make 259)."""
    block = reference_block(R.InceptionA)
    stages, channels = triton_stages(block)
    launches = tg.split_stages(block, stages, channels, sm_count=132)[0].launches
    plan = block.plan

    def buffers(batch):
        widths = {pk.BUF_INPUT: channels, pk.BUF_WORK: plan.work_channels, pk.BUF_OUTPUT: plan.out_channels}
        return {buffer: torch.empty(batch, 35, 35, width, device="meta") for buffer, width in widths.items()}

    assert gemm_routing.stage_is_small(launches, buffers(1), 132)
    assert gemm_routing.stage_is_small(launches, buffers(26), 132)
    assert not gemm_routing.stage_is_small(launches, buffers(27), 132)
    assert not gemm_routing.stage_is_small(launches, buffers(1), 0)  # no GPU: no SMs to share


def test_each_launch_hands_its_sm_share_to_the_op_only_side_by_side(emulated):
    block = reference_block(R.InceptionA)
    stages, channels = triton_stages(block, torch.float64)
    launches = tg.split_stages(block, stages, channels, sm_count=132)[0].launches
    plan = block.plan
    widths = {pk.BUF_INPUT: channels, pk.BUF_WORK: plan.work_channels, pk.BUF_OUTPUT: plan.out_channels}
    buffers = {buffer: torch.randn(2, 5, 5, width, dtype=torch.float64) for buffer, width in widths.items()}
    for launch in launches:  # as run_side_by_side calls them
        launch.run(buffers)
    assert emulated.sm_limits == [40, 52, 40]
    emulated.sm_limits.clear()
    gemm_routing.run_launches(launches, buffers)  # one after another (cuda-gemm): every SM each
    assert emulated.sm_limits == [0, 0, 0]


def test_reduction_a_mixed_stage_leaves_its_other_rows_to_a_stage_of_their_own():
    block = reference_block(R.ReductionA)
    stages, channels = triton_stages(block)
    whole = stages[0][0]
    split = tg.split_stages(block, stages, channels)[0]
    rest, signature, state = split.rest
    assert [(r[pk.KIND], r[pk.KH]) for r in whole.rows] == [(pk.CONV, 3), (pk.CONV, 1), (pk.MAX_POOL, 3)]
    assert len(split.launches) == 1 and rest.rows == [whole.rows[0], whole.rows[2]]
    assert rest.problems.tolist() == rest.rows and rest.weights is whole.weights
    assert signature == pk.stage_signature(rest) != stages[0][1]  # tuned as the stage it is
    assert state is not None and not state.configs


def test_without_the_op_every_stage_runs_whole():
    block = reference_block(R.InceptionB)
    stages, channels = triton_stages(block)
    assert all(s.launches == [] and s.rest is stage
               for s, stage in zip(tg.split_stages(block, stages, channels, use_gemm=False), stages))


@pytest.fixture
def emulated(monkeypatch):
    """run_block of triton-gemm in float64 on the emulated ops; returns the GEMM op."""
    gemm_op = EmulatedGemm()

    def stage_kernel(stage, state, x, work, out, key):
        problems = [v for row in stage.rows for v in row]
        nhwc = [t.permute(0, 2, 3, 1) for t in (x, work, out)]
        emulated_stage(*nhwc, problems, stage.weights, stage.bias, stage.col_dst, stage.col_flags)

    def to_nhwc_padded(x, out, round_tf32):
        out.zero_()
        out[:, : x.shape[1]] = x

    monkeypatch.setattr(gemm_routing, "DTYPES", (torch.float64,))
    monkeypatch.setattr(tg, "availability", lambda device=None: (True, "emulated"))
    monkeypatch.setattr(tg, "_kxk_usable", lambda device: False)
    monkeypatch.setattr(triton_backend, "_run_stage", stage_kernel)
    monkeypatch.setattr(triton_ops, "triton_to_nhwc_padded", to_nhwc_padded)
    monkeypatch.setattr(torch.ops.inception_fast, "cuda_gemm_conv1x1",
                        type("Op", (), {"default": gemm_op}), raising=False)
    monkeypatch.setenv("INCEPTION_FAST_POISON", "1")  # a channel never written shows as NaN
    return gemm_op


class EmulatedConv:
    """The k x k conv op's checks (bindings.cpp: check_conv_fprop) and result, counting its calls."""

    def __init__(self):
        self.calls = 0
        self.tiles = set()
        self.split_k = set()

    def __call__(self, x, weight, bias, out, in_c0, out_c0, stride, pad_h, pad_w, relu, tile_n=0, tf32=False,
                 sm_limit=0, tile_m=0, split_k=0):
        k, _, _, c = weight.shape
        assert sm_limit >= 0
        assert 0 <= split_k <= 8
        assert split_k < 2 or (not tf32 and tile_m in (0, 128) and tile_n in (0, 64)), "split-K: 128 x 64"
        assert tf32 == (x.dtype == torch.float32), "fp32 runs on TF32 only, and only fp32 does"
        if tf32:
            assert_tf32_values(weight)
        assert tile_n in (0, 64, 96, 128) and tile_m in (0, 64, 128, 256)
        assert tile_m != 256 or (tile_n in (0, 96, 128) and not tf32), "256-row tiles: 96 or 128, no TF32"
        assert tile_m != 64 or (tile_n in (0, 64) and not tf32), "64-row tiles: 64 wide, no TF32"
        self.tiles.add((tile_m, tile_n))
        self.split_k.add(split_k)
        assert x.is_contiguous() and weight.is_contiguous() and out.is_contiguous() and bias.is_contiguous()
        assert bias.shape == (k,) and bias.dtype == torch.float32 and weight.dtype == x.dtype == out.dtype
        assert c % 8 == 0 and k % 8 == 0 and in_c0 % 8 == 0 and out_c0 % 8 == 0
        assert x.shape[3] % 8 == 0 and out.shape[3] % 8 == 0
        assert in_c0 + c <= x.shape[3] and out_c0 + k <= out.shape[3]
        source = x[..., in_c0:in_c0 + c].permute(0, 3, 1, 2)
        kernel = weight.permute(0, 3, 1, 2)
        value = torch.nn.functional.conv2d(source.double(), kernel.double(), bias.double(), stride,
                                           (pad_h, pad_w))
        assert value.shape[0] == out.shape[0] and value.shape[2:] == out.shape[1:3], "out: [N, P, Q, C]"
        value = (value.clamp_min(0) if relu else value).permute(0, 2, 3, 1)
        out[..., out_c0:out_c0 + k] = round_to_tf32(value.float()) if tf32 else value
        self.calls += 1


@pytest.fixture
def emulated_kxk(emulated, monkeypatch):
    """As `emulated`, with the k x k convs on the emulated conv op; returns (gemm op, conv op)."""
    conv_op = EmulatedConv()
    monkeypatch.setattr(tg, "_kxk_usable", lambda device: True)
    monkeypatch.setattr(torch.ops.inception_fast, "cuda_conv_fprop", type("Op", (), {"default": conv_op}),
                        raising=False)
    return emulated, conv_op


def check(block, x, gemm_op, min_launches=1):
    got = tg.run_block(block, x)
    assert not torch.isnan(got).any(), "an output channel was never written"
    assert relative_l2(got, torch_backend.run_block(block, x)) < 1e-12
    planned = sum(len(s.launches) for key, splits in block.backend_cache.items() if key[0] == "triton-gemm"
                  for s in splits)
    assert gemm_op.calls == planned >= min_launches


@pytest.fixture(scope="module")
def v4():
    torch.manual_seed(0)
    return randomize_batchnorm(InceptionV4().eval(), torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("index", "batch", "height", "width"), V4_CASES)
def test_inception_v4_blocks(v4, emulated, index, batch, height, width):
    block = fuse_block(v4.features[index]).to(torch.float64)
    check(block, torch.randn(batch, block.plan.in_channels, height, width, dtype=torch.float64), emulated)


def test_inception_v4_classifier(v4, emulated):
    """The head: global average pool, then the classifier as a 1x1 conv on the GEMM op."""
    from inception_fast import optimize

    block = optimize(v4, backend="torch").double().blocks[-1]
    check(block, torch.randn(3, 1536, 5, 4, dtype=torch.float64), emulated)


@pytest.mark.parametrize(("name", "path", "hw"), [
    ("inception_resnet_v2", "repeat.0", (6, 5)),  # the residual 1x1 stays on the stage kernel
    ("googlenet", "inception3a", (9, 7)),
    ("inception_v3", "Mixed_7c", (5, 6)),
])
def test_family_blocks(emulated, name, path, hw):
    block = _family_block(name, path)
    check(block, torch.randn(2, block.plan.in_channels, *hw, dtype=torch.float64), emulated)


def check_kxk(block, x, ops, min_convs=1):
    """Every fitting conv on the emulated ops, the rest on the emulated stage kernel."""
    gemm_op, conv_op = ops
    got = tg.run_block(block, x)
    assert not torch.isnan(got).any(), "an output channel was never written"
    assert relative_l2(got, torch_backend.run_block(block, x)) < 1e-12
    launches = [launch for key, splits in block.backend_cache.items() if key[0] == "triton-gemm"
                for s in splits for launch in s.launches]
    convs = sum(isinstance(launch, gemm_routing.ConvLaunch) for launch in launches)
    assert conv_op.calls == convs >= min_convs
    assert gemm_op.calls == len(launches) - convs


@pytest.mark.parametrize(("index", "batch", "height", "width"), V4_CASES)
def test_inception_v4_blocks_with_the_kxk_convs_on_the_conv_op(v4, emulated_kxk, index, batch, height, width):
    block = fuse_block(v4.features[index]).to(torch.float64)
    x = torch.randn(batch, block.plan.in_channels, height, width, dtype=torch.float64)
    check_kxk(block, x, emulated_kxk)


@pytest.mark.parametrize(("name", "path", "hw"), [
    ("inception_resnet_v2", "repeat.0", (6, 5)),
    ("googlenet", "inception3a", (9, 7)),
    ("inception_v3", "Mixed_7c", (5, 6)),  # the split 1x3 / 3x1 branches
    ("inception_v3", "Mixed_6a", (9, 9)),  # 3x3 stride 2
])
def test_family_blocks_with_the_kxk_convs_on_the_conv_op(emulated_kxk, name, path, hw):
    block = _family_block(name, path)
    check_kxk(block, torch.randn(2, block.plan.in_channels, *hw, dtype=torch.float64), emulated_kxk)


@pytest.mark.parametrize(("setting", "tile"), [
    (None, (0, 0)), ("128", (128, 128)), ("96", (128, 96)), ("64", (128, 64)), ("64x64", (64, 64)),
    ("256x128", (256, 128)),
    ("256x96", (256, 96)), ("128xauto", (128, 0)), ("256xauto", (256, 0)), ("auto", (0, 0)),
])
def test_the_conv_tile_setting_reaches_the_op(v4, emulated_kxk, monkeypatch, setting, tile):
    """INCEPTION_FAST_CUTLASS_CONV_TILE: the op's own choice unless set, else 128-row tiles 128,
    96 or 64 wide, 64 x 64 tiles, or 256-row tiles 128 or 96 wide."""
    if setting is None:
        monkeypatch.delenv(gemm_routing.ENV_CONV_TILE, raising=False)
    else:
        monkeypatch.setenv(gemm_routing.ENV_CONV_TILE, setting)
    block = fuse_block(v4.features[6]).to(torch.float64)  # InceptionA: 3x3 convs of 96 channels
    check_kxk(block, torch.randn(2, block.plan.in_channels, 5, 5, dtype=torch.float64), emulated_kxk)
    assert emulated_kxk[1].tiles == {tile}


@pytest.mark.parametrize(("setting", "tile_m"), [(None, 0), ("auto", 0), ("128", 128), ("64x64", 64)])
def test_the_gemm_tile_setting_reaches_the_op(v4, emulated_kxk, monkeypatch, setting, tile_m):
    """INCEPTION_FAST_CUTLASS_GEMM_TILE: the GEMM op's own choice unless set, else 128-row tiles
    (the op's width) or 64 x 64 tiles."""
    if setting is None:
        monkeypatch.delenv(gemm_routing.ENV_GEMM_TILE, raising=False)
    else:
        monkeypatch.setenv(gemm_routing.ENV_GEMM_TILE, setting)
    block = fuse_block(v4.features[6]).to(torch.float64)  # InceptionA: a stacked 1x1 GEMM
    check_kxk(block, torch.randn(2, block.plan.in_channels, 5, 5, dtype=torch.float64), emulated_kxk)
    assert emulated_kxk[0].tile_m == {tile_m}


def test_a_gemm_tile_setting_it_cannot_take_is_refused(monkeypatch):
    monkeypatch.setenv(gemm_routing.ENV_GEMM_TILE, "256")
    with pytest.raises(ValueError, match="CUTLASS_GEMM_TILE='256': choose one of auto, 128, 64x64"):
        gemm_routing.gemm_tile()
    monkeypatch.setenv(gemm_routing.ENV_GEMM_TILE, "64x64")
    with pytest.raises(ValueError, match="'64x64': 64-row tiles are built for fp16 and bf16"):
        gemm_routing._gemm_launches(None, None, None, None, None, tf32=True)
    monkeypatch.setenv(gemm_routing.ENV_SPLIT_K, "2")
    with pytest.raises(ValueError, match=r"=2: split-K runs .* 128 x 64 tiles; set "
                                         r"INCEPTION_FAST_CUTLASS_GEMM_TILE to auto or 128"):
        gemm_routing._gemm_launches(None, None, None, None, None, tf32=False)


@pytest.mark.parametrize(("setting", "split_k"), [(None, 1), ("auto", 1), ("off", 1), ("2", 2), ("8", 8)])
def test_the_split_k_setting_reaches_the_ops(v4, emulated_kxk, monkeypatch, setting, split_k):
    """INCEPTION_FAST_CUTLASS_SPLIT_K: off unless set; `auto`: split_k_count (no SMs here: no
    split); else that many ranges, on both ops."""
    if setting is None:
        monkeypatch.delenv(gemm_routing.ENV_SPLIT_K, raising=False)
    else:
        monkeypatch.setenv(gemm_routing.ENV_SPLIT_K, setting)
    block = fuse_block(v4.features[6]).to(torch.float64)
    check_kxk(block, torch.randn(2, block.plan.in_channels, 5, 5, dtype=torch.float64), emulated_kxk)
    assert emulated_kxk[1].split_k == {split_k}
    assert set(emulated_kxk[0].split_k) == {split_k}


@pytest.mark.parametrize(("env", "message"), [
    ({"INCEPTION_FAST_CUTLASS_SPLIT_K": "9"}, r"'9': choose auto, off, or a count of 2 to 8"),
    ({"INCEPTION_FAST_CUTLASS_SPLIT_K": "1"}, r"'1': choose auto, off, or a count of 2 to 8"),
    ({"INCEPTION_FAST_CUTLASS_SPLIT_K": "4", "INCEPTION_FAST_CUTLASS_CONV_TILE": "128"},
     r"=4: split-K runs fp16 and bf16 launches in 128 x 64 tiles"),
])
def test_a_split_k_setting_it_cannot_take_is_refused(monkeypatch, env, message):
    """Named when the launches are planned, not mid-run by the op."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        gemm_routing._conv_launches(None, None, None, None, None, tf32=False)


def test_split_k_is_refused_for_tf32(monkeypatch):
    monkeypatch.setenv(gemm_routing.ENV_SPLIT_K, "2")
    with pytest.raises(ValueError, match="=2: split-K runs fp16 and bf16 launches"):
        gemm_routing._conv_launches(None, None, None, None, None, tf32=True)
    with pytest.raises(ValueError, match="=2: split-K runs fp16 and bf16 launches"):
        gemm_routing._gemm_launches(None, None, None, None, None, tf32=True)


@pytest.mark.parametrize(("setting", "rows"), [("256x128", 256), ("64x64", 64)])
def test_64_and_256_row_conv_tiles_are_refused_for_tf32(monkeypatch, setting, rows):
    """They are built for fp16 and bf16 only: planning TF32 launches names the setting (before
    it reads the row), rather than passing the op a tile it refuses mid-run."""
    monkeypatch.setenv(gemm_routing.ENV_CONV_TILE, setting)
    with pytest.raises(ValueError, match=rf"'{setting}': {rows}-row tiles are built for fp16 and bf16"):
        gemm_routing._conv_launches(None, None, None, None, None, tf32=True)


def test_a_batch_past_the_ops_32_bit_indexing_runs_whole_on_the_stage_kernel(v4, emulated_kxk, monkeypatch):
    """Buffers of 2^31 elements or more (Inception-v4's stem from batch 2048) stay on the stage
    kernel, whose wide-index variant takes them; the batch below the limit uses the ops."""
    gemm_op, conv_op = emulated_kxk
    block = fuse_block(v4.features[6]).to(torch.float64)
    x = torch.randn(2, block.plan.in_channels, 5, 5, dtype=torch.float64)
    monkeypatch.setattr(gemm_routing, "MAX_ELEMENTS", x.numel())  # as if this input were that large
    assert relative_l2(tg.run_block(block, x), torch_backend.run_block(block, x)) < 1e-12
    assert gemm_op.calls == conv_op.calls == 0
    tg.run_block(block, x[:1])
    assert gemm_op.calls > 0 and conv_op.calls > 0


def test_a_conv_tile_setting_it_cannot_take_is_refused(monkeypatch):
    monkeypatch.setenv(gemm_routing.ENV_CONV_TILE, "256")
    choices = "choose one of 128, 96, 64, 64x64, 256x128, 256x96, 128xauto, 256xauto, auto"
    with pytest.raises(ValueError, match=f"CUTLASS_CONV_TILE='256': {choices}"):
        gemm_routing.conv_tile()


def _conv_row(kernel=(3, 3), stride=1, pad=(1, 1), cin=16, cols=16, src_c0=0, src=pk.BUF_INPUT):
    return [pk.CONV, src, src_c0, cin, cols, *kernel, stride, *pad, 0, 0, 0]


RELU_OUT = pk.FLAG_RELU | pk.FLAG_TO_OUTPUT


@pytest.mark.parametrize(("row", "dst", "reason"), [
    (_conv_row(), list(range(16)), None),
    (_conv_row(kernel=(1, 7), pad=(0, 3), src=pk.BUF_WORK, src_c0=8), list(range(16)), None),  # a slice
    (_conv_row(stride=2, pad=(0, 0)), list(range(16)), None),
    (_conv_row(src=pk.BUF_WORK, src_c0=4), list(range(16)), "not multiples of 8"),
    (_conv_row(cin=12), list(range(16)), "not multiples of 8"),
    (_conv_row(kernel=(1, 1), pad=(1, 1)), list(range(16)), "pads as wide as its window"),
    (_conv_row(), list(range(4, 20)), "not multiples of 8"),  # the output channels
], ids=["3x3", "1x7-slice", "stride2", "unaligned-slice", "12-channels", "wide-pad", "unaligned-dst"])
def test_kxk_routing_keeps_what_the_conv_op_cannot_address(row, dst, reason):
    channels = {pk.BUF_INPUT: 16, pk.BUF_WORK: 32, pk.BUF_OUTPUT: 64}
    found = gemm_routing.conv_row_reason(row, dst, [RELU_OUT] * 16, channels)
    assert (found is None) if reason is None else (found is not None and reason in found), found


def test_padded_network_input(emulated):
    """The 3-channel input is padded to 8 channels: the GEMM reads all 8 (zeros after 3)."""
    torch.manual_seed(0)
    block = fuse_block(nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU()).eval()).double()
    check(block, torch.randn(2, 3, 5, 7, dtype=torch.float64), emulated)


def test_a_broken_relu_flag_fails_the_check(emulated, monkeypatch):
    """The emulated comparison can fail: a launch that drops its ReLU differs from the torch backend."""
    block = reference_block(R.InceptionA).double()
    x = torch.randn(1, 384, 5, 5, dtype=torch.float64)
    real_split = gemm_routing.split_rows

    def without_relu(packed, channels, *args):
        split = real_split(packed, channels, *args)
        for launch in split.launches:
            launch.relu = False
        return split

    monkeypatch.setattr(gemm_routing, "split_rows", without_relu)
    with pytest.raises(AssertionError):
        check(block, x, emulated)


def test_exact_fp32_runs_as_the_triton_backend(monkeypatch):
    calls = []
    monkeypatch.setattr(triton_backend, "run_block", lambda block, x: calls.append(x.dtype) or x)
    block = reference_block(R.InceptionA)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        tg.run_block(block, torch.randn(1, 384, 5, 5))
    assert calls == [torch.float32]


def test_tf32_launches_read_weights_rounded_to_tf32():
    block = reference_block(R.InceptionA)
    stages, channels = triton_stages(block, torch.float32)
    tf32 = tg.split_stages(block, stages, channels, tf32=True)[0]
    exact = tg.split_stages(block, stages, channels)[0]
    assert tf32.launches and len(tf32.launches) == len(exact.launches)
    for rounded, plain in zip(tf32.launches, exact.launches):
        assert rounded.tf32 and not plain.tf32
        assert torch.equal(rounded.weight, round_to_tf32(plain.weight))
        assert not torch.equal(rounded.weight, plain.weight)  # random weights need rounding


def test_tf32_ops_and_the_rest_share_the_stage_kernel_rounded_weights():
    """One rounded copy per stage: the `triton` backend's, read by the launches and the rest."""
    from inception_fast.kernels.triton.launch_state import StageLaunchState

    block = reference_block(R.ReductionA)
    stages, channels = triton_stages(block, torch.float32)
    stages = [(packed, signature, StageLaunchState()) for packed, signature, _ in stages]
    split = tg.split_stages(block, stages, channels, tf32=True)[0]
    rounded = stages[0][2].tf32_weights
    assert rounded is not None and split.launches and split.rest is not None
    assert all(launch.weight.untyped_storage().data_ptr() == rounded.untyped_storage().data_ptr()
               for launch in split.launches)
    assert split.rest[2].tf32_weights is rounded


@pytest.mark.parametrize("kxk", [False, True], ids=["gemm", "gemm+kxk"])
def test_tf32_blocks_on_the_emulated_ops(emulated_kxk, monkeypatch, kxk):
    """fp32 with TF32 on: the ops get tf32=True and rounded weights, and the block is within
    TF32's error of the torch backend's exact fp32."""
    gemm_op, conv_op = emulated_kxk
    monkeypatch.setattr(tg, "_kxk_usable", lambda device: kxk)
    torch.manual_seed(0)
    for factory, cin, size in ((R.InceptionA, 384, 5), (R.InceptionB, 1024, 5), (R.ReductionA, 384, 7)):
        block = reference_block(factory)
        x = torch.randn(2, cin, size, size).relu_()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
            got = tg.run_block(block, x)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            exact = torch_backend.run_block(block, x)
        assert not torch.isnan(got).any()
        assert 1e-6 < relative_l2(got, exact) < 2e-3
    assert gemm_op.tf32 == {True} and (conv_op.calls > 0) == kxk


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_says_why_it_is_unusable_without_a_gpu():
    from inception_fast.backends import backend_status

    usable, reason = backend_status("triton-gemm", "cpu")
    assert not usable and reason


def test_a_default_candidate_of_auto_and_a_bench_row_where_named():
    from inception_fast import bench
    from inception_fast.backends import BACKENDS, EXPERIMENTAL, auto_backend

    assert "triton-gemm" in BACKENDS and "triton-gemm" not in EXPERIMENTAL
    assert auto_backend.candidates(None) == ("triton", "triton-gemm", "cuda", "torch")
    with pytest.raises(ValueError, match="triton-gemm is not an experimental backend"):
        auto_backend.candidates("triton-gemm")
    assert {"fused-triton-gemm", "fused-triton-gemm-graph"} <= set(bench.EXPERIMENTAL_IDS)


@pytest.mark.parametrize("capture", [False, True])
def test_a_small_stage_runs_side_by_side_only_inside_a_graph_capture(emulated, monkeypatch, capture):
    """Launched one by one, a small stage's kernels take less GPU time than the host needs to
    issue them, and streams add host work: outside a capture its launches run one after another
    on every SM; captured, side by side with the small-stage shares (InceptionA's stage 0 on 132
    SMs: 40, 52 and 40)."""
    block = reference_block(R.InceptionA).to(torch.float64)
    x = torch.randn(2, 384, 5, 5, dtype=torch.float64)
    stages = triton_backend._packed_block(block, x)
    key = ("triton-gemm", x.device, x.dtype, False, None)
    block.backend_cache[key] = tg.split_stages(block, stages, 384, sm_count=132)
    monkeypatch.setattr(gemm_routing, "stage_is_small", lambda launches, buffers, sm_count: True)
    monkeypatch.setattr(tg, "capturing", lambda: capture)
    together = []
    monkeypatch.setattr(side_streams, "run_side_by_side",
                        lambda device, launches: (together.append(len(launches)), [f() for f in launches]))
    got = tg.run_block(block, x)
    assert relative_l2(got, torch_backend.run_block(block, x)) < 1e-12
    assert emulated.sm_limits == ([40, 52, 40] if capture else [0, 0, 0])
    assert together == ([3, 1, 1] if capture else [])  # stage 0: three GEMMs; 1 and 2: the stage kernel


class EmulatedOpLaunches:
    """The grouped op `cuda_op_launches` (bindings.cpp): each row of its params
    decoded by gemm_routing.LAUNCH_FIELDS and run on the (emulated) single op, every SM each."""

    def __init__(self):
        self.calls = []  # launches per call

    def __call__(self, x, work, out, weights, biases, params):
        fields = len(gemm_routing.LAUNCH_FIELDS)
        assert len(weights) == len(biases) and len(params) == fields * len(weights)
        buffers = (x, work, out)
        for i, (weight, bias) in enumerate(zip(weights, biases)):
            row = dict(zip(gemm_routing.LAUNCH_FIELDS, params[i * fields:(i + 1) * fields]))
            assert row["src"] in (0, 1, 2) and row["dst"] in (1, 2)
            src, dst = buffers[row["src"]], buffers[row["dst"]]
            relu, tf32 = bool(row["relu"]), bool(row["tf32"])
            ops, at = torch.ops.inception_fast, [row["in_c0"], row["out_c0"]]
            if row["kind"] == gemm_routing.LAUNCH_GEMM:
                ops.cuda_gemm_conv1x1.default(src, weight, bias, dst, at[1], relu, row["tile_n"], tf32, 0,
                                              row["split_k"])
            else:
                assert row["kind"] == gemm_routing.LAUNCH_CONV
                window = [row["stride"], row["pad_h"], row["pad_w"]]
                tiles = [row["tile_n"], tf32, 0, row["tile_m"], row["split_k"]]
                ops.cuda_conv_fprop.default(src, weight, bias, dst, *at, *window, relu, *tiles)
        self.calls.append(len(weights))


def test_the_launch_fields_are_the_extensions():
    """gemm_routing.LAUNCH_FIELDS and its kinds in the order of bindings.cpp's LaunchField."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "csrc" / "bindings.cpp").read_text()
    names = re.search(r"enum LaunchField : int \{([^}]*)\}", text).group(1).replace("\n", " ").split(",")
    names = [name.strip().removeprefix("kLaunch") for name in names]
    assert names[-1] == "Fields"
    assert [name.lower() for name in names[:-1]] == [f.replace("_", "") for f in gemm_routing.LAUNCH_FIELDS]
    kinds = re.search(r"constexpr int64_t kLaunchGemm = (\d+), kLaunchConv = (\d+);", text).groups()
    assert tuple(map(int, kinds)) == (gemm_routing.LAUNCH_GEMM, gemm_routing.LAUNCH_CONV)


@pytest.mark.parametrize("factory", [R.InceptionA, R.ReductionA, R.InceptionB])
def test_op_groups_run_a_small_stages_launches_in_one_call(emulated_kxk, monkeypatch, factory):
    """INCEPTION_FAST_OP_GROUPS=1, a small stage outside a capture: one call of the grouped op for a
    stage of several launches, the op itself for one; the same bits as a call per launch."""
    gemm_op, conv_op = emulated_kxk
    grouped = EmulatedOpLaunches()
    monkeypatch.setattr(torch.ops.inception_fast, "cuda_op_launches", type("Op", (), {"default": grouped}),
                        raising=False)
    monkeypatch.setattr(gemm_routing, "stage_is_small", lambda launches, buffers, sm_count: True)
    block = reference_block(factory).to(torch.float64)
    x = torch.randn(2, block.plan.in_channels, 9, 7, dtype=torch.float64)
    monkeypatch.setenv(gemm_routing.ENV_OP_GROUPS, "0")
    one_by_one = tg.run_block(block, x)
    assert grouped.calls == []
    monkeypatch.setenv(gemm_routing.ENV_OP_GROUPS, "1")
    got = tg.run_block(block, x)
    assert torch.equal(got, one_by_one) and relative_l2(got, torch_backend.run_block(block, x)) < 1e-12
    splits = next(s for key, s in block.backend_cache.items() if key[0] == "triton-gemm")
    assert grouped.calls == [len(s.launches) for s in splits if len(s.launches) > 1] != []
    assert gemm_op.calls + conv_op.calls == 2 * sum(len(s.launches) for s in splits)


def test_the_op_groups_setting_is_checked(monkeypatch):
    monkeypatch.setenv(gemm_routing.ENV_OP_GROUPS, "yes")
    with pytest.raises(ValueError, match="INCEPTION_FAST_OP_GROUPS='yes': use 1"):
        gemm_routing.op_groups()
