"""layer_census: the convs and Linears a network runs, their work, and the blocks they belong to;
conv_floor: the same convs timed alone and summed per block (on the CPU here, tiny shapes)."""

from __future__ import annotations

import torch
from torch import nn

from inception_fast import conv_floor, layer_census


class Branches(nn.Module):
    """Two branches over the same input: a 1x1, and a 1x1 then a 3x3 (the first two alike)."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.a = nn.Conv2d(channels, 4, 1)
        self.b = nn.Sequential(nn.Conv2d(channels, 4, 1), nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(Branches(), Branches())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


# 17x17 in, 8x8 after the stem: stem 8*8*8 outputs x 3*9; per Branches 2 x (64*4 x 8) + 64*4 x 4*9.
STEM_MACS, BRANCHES_MACS, FC_MACS = 64 * 8 * 27, 2 * 64 * 4 * 8 + 64 * 4 * 36, 80


def test_blocks_descend_into_containers_of_blocks_only():
    paths = [path for path, _ in layer_census.blocks(Tiny())]
    # `stem` (a Sequential of plain layers) stays one block; `blocks` stands for the blocks in it.
    assert paths == ["stem", "blocks.0", "blocks.1", "pool", "fc"]
    assert layer_census.block_of("blocks.1.b.0", paths) == "blocks.1"
    assert layer_census.block_of("blocks.10.a", ["blocks.1", "blocks.10"]) == "blocks.10"


def test_census_counts_every_conv_and_linear_with_its_shape_and_work():
    calls = layer_census.census(Tiny(), 17)
    assert [c.path for c in calls] == ["stem.0", "blocks.0.a", "blocks.0.b.0", "blocks.0.b.1", "blocks.1.a",
                                       "blocks.1.b.0", "blocks.1.b.1", "fc"]
    assert [c.block for c in calls] == ["stem"] + ["blocks.0"] * 3 + ["blocks.1"] * 3 + ["fc"]
    assert calls[0].macs == STEM_MACS and calls[-1].macs == FC_MACS and calls[-1].kind == "linear"
    assert layer_census.macs_per_image(calls) == STEM_MACS + 2 * BRANCHES_MACS + FC_MACS
    stem = calls[0].conv
    assert (stem.in_channels, stem.out_channels, stem.height, stem.width) == (3, 8, 17, 17)
    assert (stem.stride, stem.padding, stem.bias) == ((2, 2), (0, 0), False)
    assert calls[1].conv == calls[2].conv  # the two sibling 1x1s are the same problem
    # The meta-device pass sees what a real one sees.
    assert layer_census.census(Tiny(), 17, on_meta=False) == calls


def test_census_leaves_the_model_as_it_was():
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_census.census(model, 17)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"


def test_smallest_image_size_is_found_from_the_network():
    assert layer_census.smallest_image_size(Tiny(), 64) == 3  # the stem's 3x3 stride-2 conv, no padding


def test_floor_times_each_distinct_conv_once_and_sums_per_block():
    model = Tiny().eval()
    calls = layer_census.census(model, 17)
    paths = [path for path, _ in layer_census.blocks(model)]
    floor = conv_floor.conv_floor(calls, 2, torch.float32, "cpu", budget_ms=2.0,
                                  labels=conv_floor.block_labels(model, None, paths))
    assert [b.block for b in floor.blocks] == ["stem", "blocks.0", "blocks.1"]  # the Linear is no conv
    assert [b.convs for b in floor.blocks] == [1, 3, 3]
    assert [b.macs for b in floor.blocks] == [STEM_MACS, BRANCHES_MACS, BRANCHES_MACS]
    assert [b.label for b in floor.blocks] == ["stem Sequential", "blocks.0 Branches", "blocks.1 Branches"]
    # Three distinct problems (stem, 1x1 run four times, 3x3 run twice), each timed once.
    assert sorted(s["count"] for s in floor.shapes) == [1, 2, 4]
    times = {(s["kernel"][0], s["in_channels"]): s["median_ms"] for s in floor.shapes}
    assert floor.blocks[1].ms == floor.blocks[2].ms == 2 * times[(1, 8)] + times[(3, 4)]
    assert floor.total_ms == sum(b.ms for b in floor.blocks) and floor.total_ms > 0
    assert floor.macs == STEM_MACS + 2 * BRANCHES_MACS


def test_floor_labels_name_the_fused_block_at_the_same_path():
    import inception_fast

    source = Tiny().eval()
    fused = inception_fast.optimize(source, backend="torch")
    labels = conv_floor.block_labels(source, fused, ["stem", "blocks.0", "blocks.1"])
    assert labels["stem"] == "stem Sequential -> 1 stages"
    assert labels["blocks.0"].startswith("blocks.0 Branches -> ") and labels["blocks.0"].endswith("stages")
