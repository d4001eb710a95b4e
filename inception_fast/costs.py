"""Work and traffic counted from the block plans: the compute floor and the memory floor of each
block and of the whole network.

Counts are exact functions of the plan (every conv's kernel, channels, stride and padding), so
they follow the plan if it changes. Conventions:

- ``macs`` counts the multiply-accumulates of the convolutions (and of the head's Linear);
  ``flops`` is 2 x macs. Pools and epilogues are a rounding error (< 0.1%) and are left out.
  The avg-pool rewrite does not change the count: its 1x1 conv runs at the same resolution
  over the same input channels as the reference's 1x1 after the pool.
- ``min_bytes`` is the traffic no implementation of a block can avoid: read the block input
  once, write the block output once, read every weight and bias once. Intermediates are
  assumed to stay on chip (a fully fused block).
- ``staged_bytes`` is the traffic of the plan as executed one launch per stage: every op reads
  its source slice once and writes its destination slices once, so intermediates round-trip
  through the ``work`` buffer. The gap between the two is what a persistent block kernel
  could still save.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import BlockPlan, Conv, Pool, block_output_hw, op_output_hw

BIAS_BYTES = 4  # every backend keeps the folded biases in fp32


def _conv_macs(op: Conv, height: int, width: int) -> int:
    oh, ow = op_output_hw(op, height, width)
    kh, kw = op.kernel
    return oh * ow * op.out_channels * op.in_channels * kh * kw


def macs(plan: BlockPlan, height: int, width: int) -> int:
    """Multiply-accumulates of one image through `plan` at input size height x width."""
    return sum(_conv_macs(op, height, width) for op in plan.convs)


def flops(plan: BlockPlan, height: int, width: int) -> int:
    """Floating-point operations (2 per MAC) of one image through `plan`."""
    return 2 * macs(plan, height, width)


def weight_elements(plan: BlockPlan) -> int:
    return sum(op.out_channels * op.in_channels * op.kernel[0] * op.kernel[1] for op in plan.convs)


def bias_elements(plan: BlockPlan) -> int:
    return sum(op.out_channels for op in plan.convs) + sum(
        op.dst.channels for op in plan.ops if isinstance(op, Pool) and op.bias
    )


def _parameter_bytes(plan: BlockPlan, dtype_bytes: int) -> int:
    return weight_elements(plan) * dtype_bytes + bias_elements(plan) * BIAS_BYTES


def min_bytes(plan: BlockPlan, height: int, width: int, dtype_bytes: int, batch: int = 1) -> int:
    """Bytes a batch must move through `plan` at the least: input once, output once, every
    parameter once (weights are read once per launch, not per image)."""
    oh, ow = block_output_hw(plan, height, width)
    activations = batch * (height * width * plan.in_channels + oh * ow * plan.out_channels)
    return activations * dtype_bytes + _parameter_bytes(plan, dtype_bytes)


def staged_bytes(plan: BlockPlan, height: int, width: int, dtype_bytes: int, batch: int = 1) -> int:
    """Bytes moved by the one-launch-per-stage execution: each op reads its source slice and
    writes its destinations once (ideal caching of the kernel window), plus the parameters."""
    elements = 0
    for op in plan.ops:
        oh, ow = op_output_hw(op, height, width)
        elements += height * width * op.src.channels
        if isinstance(op, Conv):
            elements += oh * ow * op.out_channels
        else:
            elements += oh * ow * op.dst.channels
    return batch * elements * dtype_bytes + _parameter_bytes(plan, dtype_bytes)


@dataclass(frozen=True)
class BlockCost:
    index: int  # position among the network's blocks
    name: str
    in_shape: tuple[int, int, int]  # C, H, W
    out_shape: tuple[int, int, int]
    macs: int  # per image
    weight_elements: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def block_costs(plans: list[BlockPlan], height: int, width: int) -> list[BlockCost]:
    """One BlockCost per plan of a chain of blocks, walking the spatial sizes from the input."""
    costs = []
    for index, plan in enumerate(plans):
        oh, ow = block_output_hw(plan, height, width)
        costs.append(BlockCost(
            index, plan.name, (plan.in_channels, height, width), (plan.out_channels, oh, ow),
            macs(plan, height, width), weight_elements(plan),
        ))
        height, width = oh, ow
    return costs


def network_flops(plans: list[BlockPlan], height: int, width: int) -> int:
    """Floating-point operations per image of a chain of blocks (classifier included)."""
    return sum(c.flops for c in block_costs(plans, height, width))


def floor_ms(flop_count: float, byte_count: float, peak_tflops: float, peak_tbps: float) -> dict:
    """The compute floor, the memory floor, and the larger of the two, in milliseconds."""
    compute = flop_count / (peak_tflops * 1e12) * 1e3
    memory = byte_count / (peak_tbps * 1e12) * 1e3
    return {"compute_ms": compute, "memory_ms": memory, "floor_ms": max(compute, memory)}
