"""Drop-in fused modules: one per Inception-v4 block type, built from a reference block.

A fused block takes an NCHW tensor in any memory format and returns an NCHW tensor stored
channels_last (NHWC in memory), which is what the kernels read and write, so a chain of fused
blocks passes activations along without a single layout copy.
"""

from __future__ import annotations

import torch
from torch import nn

from . import plan as plans
from .backends import get_backend
from .checks import check_inference_input, explain_cuda_moves
from .folding import fold_block
from .graphs import run_graphed
from .plan import AvgPoolBiasRelu, BlockPlan, Conv, block_output_hw

_NO_SCRIPT = (
    "inception_fast's fused modules do not support torch.jit.script; use torch.compile, or "
    "torch.export, or call the module directly"
)


class FusedBlock(nn.Module):
    """Executes a `BlockPlan` on folded weights with the chosen backend (inference only).

    Buffers: `w{i}` / `b{i}` for Conv op i (the bias is zero on `raw` columns, which take it
    later in their AvgPoolBiasRelu op), `b{i}` for AvgPoolBiasRelu op i.
    """

    plan: BlockPlan = None

    def __init__(self, plan: BlockPlan, params: list, backend: str = "torch"):
        super().__init__()
        self.plan = plan
        self.backend = backend
        for i, (op, param) in enumerate(zip(plan.ops, params)):
            if isinstance(op, Conv):
                bias = param.bias.clone()
                col = 0
                for write in op.writes:
                    if write.raw:
                        bias[col : col + write.dst.channels] = 0
                    col += write.dst.channels
                self.register_buffer(f"w{i}", param.weight)
                self.register_buffer(f"b{i}", bias)
            elif isinstance(op, AvgPoolBiasRelu):
                self.register_buffer(f"b{i}", param)
        self.backend_cache = {}  # backend-specific packed weights, dropped on .to()/.half()
        self.eval()  # inference-only: usable as built, without a call to .eval()

    @classmethod
    def from_reference(cls, block: nn.Module, backend: str = "torch", dtype=None):
        """Fold a reference (or timm) block into its fused form."""
        plan = cls.plan_for(block)
        fused = cls(plan, fold_block(block, plan), backend)
        param = next(block.parameters())
        return fused.to(device=param.device, dtype=dtype or param.dtype)

    @classmethod
    def plan_for(cls, block: nn.Module) -> BlockPlan:
        if cls.plan is None:
            raise TypeError("use a block-specific class such as FusedInceptionA")
        if type(block).__name__ != cls.plan.name:
            raise TypeError(f"{cls.__name__} is built from a {cls.plan.name}, got {type(block).__name__}")
        return cls.plan

    def _apply(self, fn, *args, **kwargs):
        self.backend_cache = {}
        with explain_cuda_moves("a fused module"):  # every fused model moves its blocks first
            return super()._apply(fn, *args, **kwargs)

    def __prepare_scriptable__(self):
        raise TypeError(_NO_SCRIPT)

    def op_params(self, i: int):
        return getattr(self, f"w{i}", None), getattr(self, f"b{i}", None)

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        return block_output_hw(self.plan, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_inference_input(self, x, self.plan.in_channels)
        self.output_hw(x.shape[2], x.shape[3])  # raises with the block's name when too small
        return self.run(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Forward without the input checks (the whole-model path checks once)."""
        if x.shape[0] == 0:
            oh, ow = self.output_hw(x.shape[2], x.shape[3])
            return x.new_empty((0, self.plan.out_channels, oh, ow))
        return get_backend(self.backend).run_block(self, x)

    def extra_repr(self) -> str:
        return f"{self.plan.name}, {len(self.plan.stages)} stages, backend={self.backend!r}"


class FusedConvBnRelu(FusedBlock):
    """A lone Conv + BN + ReLU (the stem), as a one-stage plan."""

    @classmethod
    def plan_for(cls, block: nn.Module) -> BlockPlan:
        conv = getattr(block, "conv", None)
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"FusedConvBnRelu is built from a conv+bn module, got {type(block).__name__}")
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
            raise TypeError("FusedConvBnRelu: only square kernels and strides are supported")
        if conv.padding[0] != conv.padding[1] or not isinstance(conv.padding[0], int):
            raise TypeError("FusedConvBnRelu: only symmetric integer padding is supported")
        return plans.conv_bn_relu_plan(
            "ConvBnRelu", conv.in_channels, conv.out_channels, conv.kernel_size[0],
            conv.stride[0], conv.padding[0],
        )


class FusedMixed3a(FusedBlock):
    plan = plans.MIXED_3A


class FusedMixed4a(FusedBlock):
    plan = plans.MIXED_4A


class FusedMixed5a(FusedBlock):
    plan = plans.MIXED_5A


class FusedInceptionA(FusedBlock):
    plan = plans.INCEPTION_A


class FusedReductionA(FusedBlock):
    plan = plans.REDUCTION_A


class FusedInceptionB(FusedBlock):
    plan = plans.INCEPTION_B


class FusedReductionB(FusedBlock):
    plan = plans.REDUCTION_B


class FusedInceptionC(FusedBlock):
    plan = plans.INCEPTION_C


FUSED_BY_NAME = {
    cls.plan.name: cls
    for cls in (
        FusedMixed3a, FusedMixed4a, FusedMixed5a, FusedInceptionA, FusedReductionA,
        FusedInceptionB, FusedReductionB, FusedInceptionC,
    )
}


def fuse_block(block: nn.Module, backend: str = "torch") -> FusedBlock:
    """The fused form of any Inception-v4 block or ConvBnRelu (reference or timm)."""
    cls = FUSED_BY_NAME.get(type(block).__name__)
    if cls is None:
        if hasattr(block, "conv") and hasattr(block, "bn"):
            cls = FusedConvBnRelu
        else:
            raise TypeError(f"no fused form for a {type(block).__name__}")
    return cls.from_reference(block, backend)


class FusedHead(nn.Module):
    """Global average pool + Linear."""

    def __init__(self, linear: nn.Linear, backend: str = "torch"):
        super().__init__()
        self.backend = backend
        self.register_buffer("weight", linear.weight.detach().clone())
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("bias", bias.detach().clone())
        self.backend_cache = {}
        self.eval()  # inference-only: usable as built, without a call to .eval()

    def _apply(self, fn, *args, **kwargs):
        self.backend_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_inference_input(self, x, self.weight.shape[1])
        return self.run(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return x.new_empty((0, self.weight.shape[0]))
        return get_backend(self.backend).run_head(self, x)


class FusedInceptionV4(nn.Module):
    """The whole network on fused blocks; same call signature and logits as the reference."""

    def __init__(self, blocks: list, head: FusedHead, default_cfg: dict | None = None):
        super().__init__()
        self.features = nn.Sequential(*blocks)
        self.head = head
        self.default_cfg = dict(default_cfg or {})
        self.num_classes = head.weight.shape[0]
        self.cuda_graph = False  # whole-forward CUDA graphs (see optimize(cuda_graph=...))
        self.cuda_graph_max_batch = 64
        self.graph_cache = {}

    def _apply(self, fn, *args, **kwargs):
        self.graph_cache = {}
        return super()._apply(fn, *args, **kwargs)

    @property
    def backend(self) -> str:
        return self.head.backend

    def set_backend(self, backend: str) -> FusedInceptionV4:
        get_backend(backend)  # raises when unknown
        for module in self.modules():
            if hasattr(module, "backend_cache"):
                module.backend = backend
        return self

    def min_input_size(self) -> int:
        size = 1
        while True:
            try:
                self.feature_hw(size, size)
                return size
            except ValueError:
                size += 1

    def feature_hw(self, height: int, width: int) -> tuple[int, int]:
        for block in self.features:
            height, width = block.output_hw(height, width)
        return height, width

    def check_input(self, x: torch.Tensor) -> None:
        check_inference_input(self, x, self.features[0].plan.in_channels)
        try:
            self.feature_hw(x.shape[2], x.shape[3])
        except ValueError as err:
            raise ValueError(
                f"FusedInceptionV4: input of {x.shape[2]}x{x.shape[3]} is too small; "
                f"the network needs at least {self.min_input_size()}x{self.min_input_size()} "
                f"({err})"
            ) from None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.run_features(x)

    def run_features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.features:
            x = block.run(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.shape[0] == 0:
            return x.new_empty((0, self.num_classes))
        if (
            self.cuda_graph
            and x.is_cuda
            and x.shape[0] <= self.cuda_graph_max_batch
            and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing()
        ):
            return run_graphed(self, x)
        return self.run_eager(x)

    def run_eager(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.run(self.run_features(x))
