"""The CUDA stage kernel's index arithmetic, run on the CPU in float64.

A NumPy model of csrc/conv_stage.cuh and the launch schedule of csrc/bindings.cpp: the same CTA
-> (problem, tile) walk, loader addresses, smem swizzle, pipeline slots, ldmatrix and
mma.sync m16n8k16 fragment layouts (taken from the PTX manual, not from the kernel), epilogue
and pool addressing. Each stage is run on the `cuda` backend's own packing and must match the
`torch` backend to float64 rounding, so an indexing slip fails here without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stage_cases import CASES as STAGE_CASES
from stage_cases import make_case

import inception_fast
from inception_fast.backends import cuda_backend, torch_backend
from inception_fast.modules import fuse_block
from inception_fast.packing import (
    AVG_POOL,
    AVG_POOL_INCLUDE_PAD,
    BUF_INPUT,
    BUF_OUTPUT,
    BUF_WORK,
    CEIL,
    CIN,
    COL_OFF,
    COLS,
    CONV,
    FLAG_RELU,
    FLAG_RESIDUAL,
    FLAG_TO_OUTPUT,
    KH,
    KIND,
    KW,
    MAX_POOL,
    PAD_H,
    PAD_W,
    SRC_BUF,
    SRC_C0,
    STRIDE,
    W_OFF,
)
from inception_fast.reference import InceptionV4
from inception_fast.testing import randomize_batchnorm, relative_l2
from inception_fast.windows import out_size

# Must equal the constants of csrc/conv_stage.cuh and csrc/stage_args.h.
TILE_M, TILE_N, TILE_K, PIPELINE, THREADS, POOL_ITEMS = 128, 128, 32, 4, 256, 256
TILE_ELEMS = TILE_M * TILE_K


def swizzled(row, chunk):
    return row * TILE_K + ((chunk ^ ((row >> 1) & 3)) << 3)


def schedule(rows, dims, batch):
    """The problem descriptors in launch order, as bindings.cpp builds them."""
    descs = []
    for row in rows:
        _, h, w = dims[row[SRC_BUF]]
        oh = out_size(h, row[KH], row[STRIDE], row[PAD_H], bool(row[CEIL]))
        ow = out_size(w, row[KW], row[STRIDE], row[PAD_W], bool(row[CEIL]))
        conv = row[KIND] == CONV
        d = dict(row=row, oh=oh, ow=ow, m=batch * oh * ow, k=row[KH] * row[KW] * row[CIN] if conv else 0)
        d["keeps_size"] = (oh, ow) == dims[BUF_INPUT][1:]
        d["n_tiles"] = -(-row[COLS] // TILE_N) if conv else 1
        descs.append(d)
    order = sorted(range(len(descs)), key=lambda i: (descs[i]["row"][KIND] != CONV, -descs[i]["k"]))
    tiles, out = 0, []
    for i in order:
        d = descs[i]
        d["tile_begin"] = tiles
        if d["row"][KIND] == CONV:
            tiles += -(-d["m"] // TILE_M) * d["n_tiles"]
        else:
            tiles += -(-d["m"] * (d["row"][COLS] // 8) // POOL_ITEMS)
        out.append(d)
    return out, tiles


def ldmatrix_x4(smem, addr):
    """addr[w, lane]: row addresses (matrix i from lanes 8i..8i+7) -> regs[w, lane, i, 2]."""
    lane = np.arange(32)
    regs = np.empty((*addr.shape, 4, 2))
    for i in range(4):
        row_addr = addr[:, 8 * i + lane // 4]  # lane l receives row l // 4 ...
        for e in range(2):
            regs[:, :, i, e] = smem[row_addr + 2 * (lane % 4) + e]  # ... columns 2 (l % 4) + e
    return regs


def mma_m16n8k16(acc, a, b):
    """acc[w, lane, 4] += A @ B with the fragment layouts of the PTX manual:
    A (16x16, regs a[w, lane, 4, 2]): reg r holds row g + 8 (r & 1), cols 2t + 8 (r >> 1) + e;
    B (16x8, regs b[w, lane, 2, 2]): reg r holds rows 2t + 8 r + e, col g;
    C (16x8): elements 2 h + e at row g + 8 h, col 2t + e; with g = lane / 4, t = lane % 4."""
    lane = np.arange(32)
    g, t = lane // 4, lane % 4
    warps = a.shape[0]
    A = np.zeros((warps, 16, 16))
    B = np.zeros((warps, 16, 8))
    for r in range(4):
        for e in range(2):
            A[:, g + 8 * (r & 1), 2 * t + 8 * (r >> 1) + e] = a[:, :, r, e]
    for r in range(2):
        for e in range(2):
            B[:, 2 * t + 8 * r + e, g] = b[:, :, r, e]
    D = A @ B
    for h in range(2):
        for e in range(2):
            acc[:, :, 2 * h + e] += D[:, g + 8 * h, 2 * t + e]


class Emulator:
    def __init__(self, bufs, dims, weights, bias, col_dst, col_flags, batch):
        self.bufs, self.dims, self.batch = bufs, dims, batch  # flat NHWC arrays, (C, H, W)
        self.weights, self.bias, self.col_dst, self.col_flags = weights, bias, col_dst, col_flags

    def store(self, d, j, m, value):
        flags = self.col_flags[j]
        buf = BUF_OUTPUT if flags & FLAG_TO_OUTPUT else BUF_WORK
        if flags & FLAG_RESIDUAL:
            in_c = self.dims[BUF_INPUT][0]
            readable = d["keeps_size"] and self.col_dst[j] < in_c
            value = value + self.bufs[BUF_INPUT][m * in_c + self.col_dst[j]] if readable else np.nan
        if flags & FLAG_RELU:
            value = np.maximum(value, 0.0)
        self.bufs[buf][m * self.dims[buf][0] + self.col_dst[j]] = value

    def run(self, rows):
        descs, tiles = schedule(rows, self.dims, self.batch)
        for cta in range(tiles):
            d = descs[0]
            for cand in descs[1:]:
                if cta >= cand["tile_begin"]:
                    d = cand
            tile = cta - d["tile_begin"]
            (self.conv_tile if d["row"][KIND] == CONV else self.pool_tile)(d, tile)

    def conv_tile(self, d, tile):
        row = d["row"]
        src = self.bufs[row[SRC_BUF]]
        src_c, in_h, in_w = self.dims[row[SRC_BUF]]
        K, ohw = d["k"], d["oh"] * d["ow"]
        m_tile, n_tile = divmod(tile, d["n_tiles"])
        m0, n0 = m_tile * TILE_M, n_tile * TILE_N
        tid = np.arange(THREADS)
        ld_chunk, ld_row = tid & 3, tid >> 2
        a_pixel, a_ih, a_iw, b_row, b_valid = [], [], [], [], []
        for i in range(2):
            m = m0 + ld_row + i * 64
            valid = m < d["m"]
            img, rem = m // ohw, m % ohw
            oh, ow = rem // d["ow"], rem % d["ow"]
            a_pixel.append(np.where(valid, img * in_h * in_w * src_c + row[SRC_C0], 0))
            a_ih.append(np.where(valid, oh * row[STRIDE] - row[PAD_H], -(1 << 24)))
            a_iw.append(np.where(valid, ow * row[STRIDE] - row[PAD_W], -(1 << 24)))
            n = n0 + ld_row + i * 64
            b_valid.append(n < row[COLS])
            b_row.append(row[W_OFF] + np.where(b_valid[-1], n, 0) * K)
        smem = np.full((PIPELINE, 2 * TILE_ELEMS), np.nan)
        eight = np.arange(8)

        def load_stage(kt, slot):
            k = kt * TILE_K + ld_chunk * 8
            k_valid = k < K
            tap, c = k // row[CIN], k % row[CIN]
            dh, dw = tap // row[KW], tap % row[KW]
            for i in range(2):
                ih, iw = a_ih[i] + dh, a_iw[i] + dw
                ok = k_valid & (ih >= 0) & (ih < in_h) & (iw >= 0) & (iw < in_w)
                addr = np.where(ok, a_pixel[i] + (ih * in_w + iw) * src_c + c, 0)
                vals = np.where(ok[:, None], src[addr[:, None] + eight], 0.0)
                smem[slot, swizzled(ld_row + i * 64, ld_chunk)[:, None] + eight] = vals
            for i in range(2):
                ok = k_valid & b_valid[i]
                addr = np.where(ok, b_row[i] + k, 0)
                vals = np.where(ok[:, None], self.weights[addr[:, None] + eight], 0.0)
                smem[slot, TILE_ELEMS + swizzled(ld_row + i * 64, ld_chunk)[:, None] + eight] = vals

        k_tiles = -(-K // TILE_K)
        for s in range(PIPELINE - 1):
            if s < k_tiles:
                load_stage(s, s)
        warp = np.arange(8)[:, None]
        lane = np.arange(32)[None, :]
        warp_m, warp_n = (warp >> 2) * 64, (warp & 3) * 32
        acc = np.zeros((4, 4, 8, 32, 4))
        for kt in range(k_tiles):
            nxt = kt + PIPELINE - 1
            if nxt < k_tiles:
                load_stage(nxt, nxt % PIPELINE)
            tile_smem = smem[kt % PIPELINE]
            for ks in range(TILE_K // 16):
                a = [ldmatrix_x4(tile_smem, swizzled(warp_m + mi * 16 + (lane & 15), ks * 2 + (lane >> 4)))
                     for mi in range(4)]
                b = [None] * 4
                for nj in range(2):
                    rows_n = warp_n + nj * 16 + ((lane >> 4) << 3) + (lane & 7)
                    r = ldmatrix_x4(tile_smem, TILE_ELEMS + swizzled(rows_n, ks * 2 + ((lane >> 3) & 1)))
                    b[2 * nj], b[2 * nj + 1] = r[:, :, 0:2], r[:, :, 2:4]
                for mi in range(4):
                    for ni in range(4):
                        mma_m16n8k16(acc[mi, ni], a[mi], b[ni])
        assert not np.isnan(acc).any(), "the MMA read smem that no load wrote"

        for ni in range(4):
            n = n0 + warp_n + ni * 8 + (lane & 3) * 2  # [8, 32]
            for mi in range(4):
                for half in range(2):
                    m = m0 + warp_m + mi * 16 + (lane >> 2) + half * 8
                    for e in range(2):
                        col = n + e
                        ok = (m < d["m"]) & (col < row[COLS])
                        for w_, l_ in zip(*np.nonzero(ok)):
                            j = row[COL_OFF] + col[w_, l_]
                            value = acc[mi, ni, w_, l_, 2 * half + e] + self.bias[j]
                            self.store(d, j, m[w_, l_], value)

    def pool_tile(self, d, tile):
        row = d["row"]
        groups = row[COLS] // 8
        src = self.bufs[row[SRC_BUF]]
        src_c, in_h, in_w = self.dims[row[SRC_BUF]]
        ohw = d["oh"] * d["ow"]
        for item in range(tile * POOL_ITEMS, min((tile + 1) * POOL_ITEMS, d["m"] * groups)):
            m, group = divmod(item, groups)
            img, rem = divmod(m, ohw)
            oh, ow = divmod(rem, d["ow"])
            pixel0 = img * in_h * in_w * src_c + row[SRC_C0] + group * 8
            is_max = row[KIND] == MAX_POOL
            acc = np.full(8, -np.inf) if is_max else np.zeros(8)
            count = 0
            for dh in range(row[KH]):
                ih = oh * row[STRIDE] - row[PAD_H] + dh
                if not 0 <= ih < in_h:
                    continue
                for dw in range(row[KW]):
                    iw = ow * row[STRIDE] - row[PAD_W] + dw
                    if not 0 <= iw < in_w:
                        continue
                    v = src[pixel0 + (ih * in_w + iw) * src_c + np.arange(8)]
                    count += 1
                    acc = np.maximum(acc, v) if is_max else acc + v
            divisor = row[KH] * row[KW] if row[KIND] == AVG_POOL_INCLUDE_PAD else max(count, 1)
            scale = 1.0 if is_max else 1.0 / divisor
            for i in range(8):
                j = row[COL_OFF] + group * 8 + i
                self.store(d, j, m, acc[i] * scale + self.bias[j])


def emulate_block(block, x: torch.Tensor) -> torch.Tensor:
    """The cuda backend's run_block with the kernel replaced by the emulator (float64, CPU)."""
    plan = block.plan
    n, c, h, w = x.shape
    packed = cuda_backend.packed_block(block, x.device, x.dtype, (h, w))
    oh, ow = block.output_hw(h, w)
    cuda_backend._check_sizes(block, packed, h, w, oh, ow)
    x_nhwc = torch.zeros((n, h, w, packed.in_channels), dtype=torch.float64)
    x_nhwc[..., :c] = x.permute(0, 2, 3, 1)
    bufs = {
        BUF_INPUT: x_nhwc.numpy().reshape(-1),
        BUF_WORK: np.full(n * h * w * plan.work_channels, np.nan),
        BUF_OUTPUT: np.full(n * oh * ow * plan.out_channels, np.nan),  # poisoned: unwritten shows
    }
    dims = {BUF_INPUT: (packed.in_channels, h, w), BUF_WORK: (plan.work_channels, h, w),
            BUF_OUTPUT: (plan.out_channels, oh, ow)}
    for stage in packed.stages:
        p = stage.packed
        Emulator(bufs, dims, p.weights.numpy(), p.bias.double().numpy(), p.col_dst.numpy(),
                 p.col_flags.numpy(), n).run(p.rows)
    out = torch.from_numpy(bufs[BUF_OUTPUT]).view(n, oh, ow, plan.out_channels)
    return out.permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_batchnorm(InceptionV4().eval(), torch.Generator().manual_seed(1))


# (features index, batch, height, width): odd and non-square sizes, M tails, several M tiles.
CASES = [
    (0, 2, 19, 23), (1, 1, 11, 13), (2, 2, 9, 10), (3, 1, 9, 11), (4, 1, 9, 8), (5, 1, 9, 9),
    (6, 3, 7, 6), (10, 1, 9, 7), (11, 1, 6, 7), (18, 1, 9, 9), (19, 2, 3, 4),
]


@pytest.mark.parametrize(("index", "batch", "height", "width"), CASES)
def test_emulated_kernel_matches_torch_backend(model, index, batch, height, width):
    block = fuse_block(model.features[index]).to(torch.float64)
    x = torch.randn(batch, block.plan.in_channels, height, width, dtype=torch.float64)
    ref = torch_backend.run_block(block, x)
    got = emulate_block(block, x)
    assert not torch.isnan(got).any(), "an output channel was never written"
    assert relative_l2(got, ref) < 1e-12


@pytest.mark.parametrize("name", list(STAGE_CASES))
def test_emulated_kernel_runs_the_shared_stage_ops(name):
    """The hand-built stages of `stage_cases` (ceil-mode and include-pad pools, residual
    columns, 1x1 to 7x7 windows) through the emulated kernel, in float64."""
    case = make_case(name)
    n, c, h, w = case.x.shape
    oh, ow = case.out_hw
    bufs = {
        BUF_INPUT: case.x.permute(0, 2, 3, 1).contiguous().numpy().reshape(-1),
        BUF_WORK: np.full(n * h * w * case.work_channels, np.nan),
        BUF_OUTPUT: np.full(n * oh * ow * case.out_channels, np.nan),
    }
    dims = {BUF_INPUT: (c, h, w), BUF_WORK: (case.work_channels, h, w),
            BUF_OUTPUT: (case.out_channels, oh, ow)}
    for p in case.packed("cpu", torch.float64):
        Emulator(bufs, dims, p.weights.numpy(), p.bias.double().numpy(), p.col_dst.numpy(),
                 p.col_flags.numpy(), n).run(p.rows)
    got = torch.from_numpy(bufs[BUF_OUTPUT]).view(n, oh, ow, case.out_channels).permute(0, 3, 1, 2)
    assert not torch.isnan(got).any(), "an output channel was never written"
    assert relative_l2(got, case.expected()) < 1e-12


def test_swizzle_is_a_bank_conflict_free_permutation():
    rows, chunks = np.meshgrid(np.arange(TILE_M), np.arange(TILE_K // 8), indexing="ij")
    offsets = swizzled(rows, chunks).reshape(-1)
    assert sorted(offsets.tolist()) == list(range(0, TILE_ELEMS, 8))
    for first in range(0, TILE_M, 8):  # every ldmatrix phase: 8 rows, one logical chunk
        for chunk in range(TILE_K // 8):
            banks = {(swizzled(r, chunk) * 2 // 16) % 8 for r in range(first, first + 8)}
            assert len(banks) == 8


def test_schedule_puts_deep_convs_first_and_covers_every_tile():
    rows = [
        [MAX_POOL, BUF_INPUT, 0, 64, 64, 3, 3, 2, 0, 0, -1, 0, 0],
        [CONV, BUF_INPUT, 0, 64, 96, 3, 3, 2, 0, 0, 0, 64, 0],
        [AVG_POOL, BUF_WORK, 0, 96, 96, 3, 3, 1, 1, 1, -1, 160, 0],
        [CONV, BUF_INPUT, 0, 64, 200, 1, 1, 1, 0, 0, 0, 256, 0],
    ]
    dims = {BUF_INPUT: (64, 9, 9), BUF_WORK: (96, 9, 9), BUF_OUTPUT: (160, 4, 4)}
    descs, tiles = schedule(rows, dims, 3)
    assert [d["row"][KIND] for d in descs] == [CONV, CONV, MAX_POOL, AVG_POOL]
    assert descs[0]["k"] == 576 and descs[1]["n_tiles"] == 2
    # 48 px x 1 column tile; 243 px x 2 column tiles; 48 px x 8 groups; 243 px x 12 groups
    assert tiles == 1 + 2 * 2 + 2 + 12


@pytest.mark.parametrize("step", [-2, -1], ids=["global-pool", "classifier"])
def test_emulated_head_matches_torch_backend(model, step):
    """The head is two plans like any block: a whole-image average pool, then the Linear as a
    1x1 conv (1000 columns: 7 full column tiles and a tail of 104)."""
    network = inception_fast.optimize(model, backend="torch").double()
    block = network.blocks[step]
    x = torch.randn(3, 1536, 3, 2, dtype=torch.float64) if step == -2 else torch.randn(3, 1536, 1, 1).double()
    got = emulate_block(block, x)
    assert not torch.isnan(got).any()
    assert relative_l2(got, torch_backend.run_block(block, x)) < 1e-12


def _family_block(name: str, path: str):
    """A block of a family network in float64, its biases rounded to fp32 as the packed format
    keeps them (torchvision's small initial weights make the bias dominate the outputs)."""
    from inception_fast import architectures

    torch.manual_seed(2)
    model = randomize_batchnorm(architectures.create(name)).double().eval()
    network = inception_fast.optimize(model, backend="torch")
    block = next(b for b in network.blocks if b.plan.path == path)
    for key, buffer in block.named_buffers():
        if key.startswith("b"):
            buffer.copy_(buffer.float().double())
    return block


@pytest.mark.parametrize(
    ("name", "path", "hw"),
    [
        ("googlenet", "inception3a", (9, 7)),  # max-pool branch, 3x3 "5x5" branch
        ("googlenet", "maxpool1", (14, 11)),  # ceil_mode stride 2
        ("inception_v3", "Mixed_5b", (7, 8)),  # 5x5, include-pad average pool
        ("inception_v3", "Mixed_7c", (5, 6)),  # split 1x3 / 3x1 branches
        ("inception_resnet_v2", "repeat.0", (6, 5)),  # residual with ReLU
        ("inception_resnet_v2", "block8", (4, 5)),  # residual without ReLU
    ],
    ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)),
)
def test_emulated_kernel_runs_family_blocks(name, path, hw):
    block = _family_block(name, path)
    x = torch.randn(2, block.plan.in_channels, *hw, dtype=torch.float64)
    got = emulate_block(block, x)
    assert not torch.isnan(got).any(), "an output channel was never written"
    assert relative_l2(got, torch_backend.run_block(block, x)) < 1e-12
