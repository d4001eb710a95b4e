"""Per block: the eager reference block (cuDNN on a GPU) against the fused block on each backend.

One of each distinct block (the three stem convs, Mixed3a/4a/5a, InceptionA, ReductionA,
InceptionB, ReductionB, InceptionC), fed the activations the calibrated network really
produces at that depth (not random noise), at every batch and dtype of the session. Each row
carries the block's FLOPs and byte floors from `inception_fast.costs`, so the report can put
the measured time next to its compute floor and memory floor.
"""

from __future__ import annotations

import copy

import pytest
import torch
from floors import network_plans
from harness import assert_accurate, judge, measure

from inception_fast import bench, costs
from inception_fast.backends import backend_status
from inception_fast.modules import fuse_block

FEATURE_PLANS = network_plans("inception_v4")[:22]  # the plans of `features`, by index

BLOCK_INPUT_SETS = 2
IMPLEMENTATIONS = ("eager", "torch", "triton", "cuda")  # eager = the reference block (cuDNN on a GPU)


def _distinct_blocks() -> list[tuple[int, str]]:
    seen, blocks = set(), []
    for index, plan in enumerate(FEATURE_PLANS):
        if plan.name not in seen:
            seen.add(plan.name)
            blocks.append((index, plan.name))
    return blocks


BLOCKS = _distinct_blocks()


class _Activations:
    """The fp32 input of block `index` for a few sets of random images; keeps the last one
    (tests run block by block, so one entry is enough and memory stays bounded)."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, reference, index: int, batch: int, image_size: int, device) -> list[torch.Tensor]:
        key = (index, batch, image_size, str(device))
        if key != self.key:
            self.key, self.value = None, None
            prefix = copy.deepcopy(reference.features[:index]).to(device).eval()
            sets = []
            with torch.inference_mode(), bench.tf32(False):
                for k in range(BLOCK_INPUT_SETS):
                    seed = 7919 * k + batch
                    images = bench.make_inputs(batch, image_size, torch.float32, device, seed=seed, sets=1)[0]
                    sets.append(prefix(images).contiguous())
            self.key, self.value = key, sets
        return self.value


_activations = _Activations()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("index, block_name", BLOCKS, ids=[name for _, name in BLOCKS])
def test_block(benchmark, results, reference, device, image_size, budget_ms, block_name, index, impl, batch,
               dtype_name, pytestconfig):
    models = pytestconfig.getoption("--bench-models")
    if models and "inception_v4" not in models.split(","):
        pytest.skip("Inception-v4's blocks: inception_v4 is not among --bench-models")
    image_size = image_size or 299
    if impl not in ("eager", "torch"):
        usable, reason = backend_status(impl, device)
        if not usable:
            pytest.skip(f"backend {impl!r} not usable on {device}: {reason}")
    dtype, tf32_on = bench.DTYPES[dtype_name]
    ref_dtype = bench.reference_dtype(dtype)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    acts = _activations.get(reference, index, batch, image_size, device)
    inputs = [a.to(dtype=dtype, memory_format=fmt) for a in acts]
    block = reference.features[index]

    with torch.inference_mode():
        with bench.tf32(False):
            expected = copy.deepcopy(block).to(device=device, dtype=ref_dtype)(acts[0].to(ref_dtype))
        eager = copy.deepcopy(block).to(device=device, dtype=dtype, memory_format=fmt).eval()
        with bench.tf32(tf32_on):
            eager_error = bench.output_errors(eager(inputs[0]), expected)["rel_l2"]
            if impl == "eager":
                candidate = eager
            else:
                candidate = fuse_block(block).to(device=device, dtype=dtype).eval()
                candidate.backend = impl
            out = candidate(inputs[0])

            plan = FEATURE_PLANS[index]
            _, height, width = acts[0].shape[1:]
            dtype_bytes = torch.finfo(dtype).bits // 8
            row = {
                "suite": "blocks", "config": f"{block_name} {impl}", "block": block_name, "index": index,
                "impl": impl, "kind": "anchor" if impl == "eager" else "fused", "cuda_graph": False,
                "batch": batch, "dtype": dtype_name, "image_size": image_size,
                "in_shape": list(acts[0].shape[1:]), "reference_dtype": str(ref_dtype).replace("torch.", ""),
                "flops": costs.flops(plan, height, width) * batch,
                "min_bytes": costs.min_bytes(plan, height, width, dtype_bytes, batch),
                "staged_bytes": costs.staged_bytes(plan, height, width, dtype_bytes, batch),
            }
            judge(row, out, expected, eager_error, dtype)
            del out, expected
            row = measure(benchmark, results, row, candidate, inputs, budget_ms=budget_ms)
    if row["kind"] == "fused":
        assert_accurate(row)
