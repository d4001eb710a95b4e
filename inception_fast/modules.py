"""Drop-in fused modules: a `FusedBlock` runs one block plan; a `FusedNetwork` runs a whole
compiled model (blocks, and the PyTorch steps of its input preprocessing) with the source
model's call signature and outputs, and timm's model API.

A fused block takes an NCHW tensor in any memory format and returns an NCHW tensor stored
channels_last (NHWC in memory), which is what the kernels read and write, so a chain of fused
blocks passes activations along without a single layout copy.

Fused modules hold a snapshot of the source model's weights, folded at build time: editing or
reloading the source model afterwards changes nothing until `refresh(model)`.
"""

from __future__ import annotations

import torch
from torch import nn

from . import compile_ahead
from .backends import get_backend
from .checks import check_inference_input, explain_cuda_moves
from .compiler import CompiledBlock, CompiledNetwork, UnsupportedModel, compile_model
from .graphs import capturing, run_graphed
from .plan import BlockPlan, Conv, Pool, block_output_hw


class FusedBlock(nn.Module):
    """Executes a `BlockPlan` on folded weights with the chosen backend (inference only).

    Buffers: `w{i}` / `b{i}` for Conv op i (the bias is zero on columns whose bias a pool adds
    later), `b{i}` for a Pool op i that adds a bias."""

    def __init__(self, plan: BlockPlan, params: list, backend: str = "torch"):
        super().__init__()
        self.plan = plan
        self.backend = backend
        for i, (op, param) in enumerate(zip(plan.ops, params)):
            if isinstance(op, Conv):
                self.register_buffer(f"w{i}", param[0])  # fresh tensors from the folding: no copy
                self.register_buffer(f"b{i}", param[1])
            elif isinstance(op, Pool) and param is not None:
                self.register_buffer(f"b{i}", param)
        self.backend_cache = {}  # backend-specific packed weights, dropped on .to()/.half()
        self._output_hw: dict = {}  # (height, width) -> the plan's output size: asked every call
        self.eval()  # inference-only: usable as built, without a call to .eval()

    @classmethod
    def from_compiled(cls, compiled: CompiledBlock, backend: str = "torch") -> FusedBlock:
        return cls(compiled.plan, compiled.params, backend)

    def _apply(self, fn, *args, **kwargs):
        self.backend_cache = {}
        with explain_cuda_moves("a fused module"):  # every fused model moves its blocks first
            return super()._apply(fn, *args, **kwargs)

    def load_folded(self, compiled: CompiledBlock) -> None:
        """Copy new folded weights of the same plan in place (CUDA graphs keep their buffers)."""
        if compiled.plan != self.plan:
            raise ValueError(f"{self.plan.label}: the refreshed model has another structure here")
        for i, param in enumerate(compiled.params):
            tensors = param if isinstance(param, tuple) else (None, param)
            for prefix, tensor in zip(("w", "b"), tensors):
                if tensor is not None:
                    getattr(self, f"{prefix}{i}").copy_(tensor)
        self.backend_cache = {}

    def op_params(self, i: int):
        return getattr(self, f"w{i}", None), getattr(self, f"b{i}", None)

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        found = self._output_hw.get((height, width))
        if found is None:  # (an input too small raises here, every time)
            found = self._output_hw[height, width] = block_output_hw(self.plan, height, width)
        return found

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
        return f"{self.plan.label}, {len(self.plan.stages)} stages, backend={self.backend!r}"

    def __prepare_scriptable__(self):
        raise TypeError(_NO_SCRIPT)


_NO_SCRIPT = (
    "inception_fast's fused modules do not support torch.jit.script; use torch.compile, or "
    "torch.export, or call the module directly"
)


def fuse_block(block: nn.Module, backend: str = "torch") -> FusedBlock:
    """The fused form of one block (any module whose computation is a single block plan, e.g.
    an Inception module, or a conv + BatchNorm + ReLU), on its device and in its dtype."""
    compiled = compile_model(block)
    blocks = [s for s in compiled.steps if isinstance(s, CompiledBlock)]
    if len(compiled.steps) != 1 or len(blocks) != 1:
        raise UnsupportedModel(
            f"{type(block).__name__} computes {len(compiled.steps)} blocks in a row, not one; "
            "use inception_fast.optimize() for it"
        )
    param = next(iter(block.parameters()), None)
    fused = FusedBlock.from_compiled(blocks[0], backend)
    if param is not None:
        fused = fused.to(device=param.device, dtype=param.dtype)
    return fused


def _step_module(step, backend: str) -> nn.Module:
    return FusedBlock.from_compiled(step, backend) if isinstance(step, CompiledBlock) else step.module


class FusedNetwork(nn.Module):
    """A whole compiled model: same call signature and outputs as its source model; timm's
    `forward_features` / `forward_head(pre_logits=...)` / `num_features` / `num_classes` where
    the model ends in global average pooling."""

    def __init__(self, compiled: CompiledNetwork, default_cfg: dict | None = None, backend: str = "torch"):
        super().__init__()
        self.steps = nn.ModuleList(_step_module(step, backend) for step in compiled.steps)
        self.outputs = list(compiled.outputs)
        self.single_output = compiled.single_output
        self.in_channels = compiled.in_channels
        self.global_pool_step = compiled.global_pool_step
        self.default_cfg = dict(default_cfg or {})
        self.cuda_graph = False  # whole-forward CUDA graphs (see optimize(cuda_graph=...))
        self.cuda_graph_max_batch = 64
        self.graph_cache = {}
        self._checked_sizes: set = set()
        self._compiled_ahead: set = set()  # (shape, dtype, device, steps) compiled ahead
        last = self.steps[self.outputs[-1][0]]
        self.num_classes = last.plan.out_channels if isinstance(last, FusedBlock) else None
        pool = self.steps[self.global_pool_step] if self.global_pool_step is not None else None
        self.num_features = pool.plan.in_channels if pool is not None else None
        self.eval()

    def _apply(self, fn, *args, **kwargs):
        self.graph_cache = {}
        self._compiled_ahead = set()
        return super()._apply(fn, *args, **kwargs)

    def __prepare_scriptable__(self):
        raise TypeError(_NO_SCRIPT)

    @property
    def blocks(self) -> list[FusedBlock]:
        return [s for s in self.steps if isinstance(s, FusedBlock)]

    @property
    def backend(self) -> str:
        return self.blocks[0].backend

    def set_backend(self, backend: str) -> FusedNetwork:
        get_backend(backend)  # raises when unknown
        for block in self.blocks:
            block.backend = backend
        self.graph_cache = {}
        self._compiled_ahead = set()
        return self

    @torch.no_grad()
    def refresh(self, model: nn.Module) -> FusedNetwork:
        """Fold `model`'s current weights into this network in place (same structure): for a
        source model edited or reloaded after `optimize()`. CUDA graphs stay valid."""
        held = next(iter(self.buffers()), None)  # fold where this network's weights live
        compiled = compile_model(model, held.device if held is not None else None)
        if len(compiled.steps) != len(self.steps):
            raise ValueError("refresh() needs a model of the same structure as the one optimized")
        for step, new in zip(self.steps, compiled.steps):
            if isinstance(step, FusedBlock) != isinstance(new, CompiledBlock):
                raise ValueError("refresh() needs a model of the same structure as the one optimized")
            if isinstance(step, FusedBlock):
                step.load_folded(new)
            else:  # a PyTorch step: its constants (a normalisation buffer, say), in place
                current = {**dict(step.named_buffers()), **dict(step.named_parameters())}
                for key, tensor in new.module.state_dict().items():
                    current[key].copy_(tensor)
        return self

    # -- checks ------------------------------------------------------------------------------

    def min_input_size(self) -> int | None:
        """The smallest square input the blocks accept (None when a PyTorch step comes first,
        whose output size the blocks see instead)."""
        if not isinstance(self.steps[0], FusedBlock):
            return None
        for size in range(1, 4096):
            try:
                self._feature_hw(size, size)
                return size
            except ValueError:
                continue
        return None

    def _feature_hw(self, height: int, width: int) -> tuple[int, int]:
        for step in self.steps:
            height, width = step.output_hw(height, width)
        return height, width

    def check_input(self, x: torch.Tensor) -> None:
        check_inference_input(self, x, self.in_channels)
        size = (x.shape[2], x.shape[3])
        if size in self._checked_sizes or not isinstance(self.steps[0], FusedBlock):
            return
        if any(not isinstance(s, FusedBlock) for s in self.steps):
            return  # a PyTorch step may change the size: each block checks its own input
        try:
            self._feature_hw(*size)
        except ValueError as err:
            least = self.min_input_size()
            raise ValueError(
                f"{type(self).__name__}: input of {size[0]}x{size[1]} is too small; the network needs "
                f"at least {least}x{least} ({err})"
            ) from None
        self._checked_sizes.add(size)

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        if self.replays_a_graph(x):
            return run_graphed(self, x)
        return self.run_eager(x)

    def replays_a_graph(self, x: torch.Tensor) -> bool:
        """Whether a call on `x` runs as a whole-forward CUDA graph (optimize(cuda_graph=...))."""
        return (
            self.cuda_graph
            and x.is_cuda
            and 0 < x.shape[0] <= self.cuda_graph_max_batch
            and not torch.compiler.is_compiling()
            and not capturing()
        )

    def run_eager(self, x: torch.Tensor):
        return self._run(x, 0, len(self.steps), self.outputs)

    def _run(self, x: torch.Tensor, first: int, stop: int, outputs: list):
        if x.is_cuda and not torch.compiler.is_compiling():
            key = (tuple(x.shape), x.dtype, x.device, first, stop)
            if key not in self._compiled_ahead and not capturing():  # a first call at this shape
                self._compiled_ahead.add(key)
                if compile_ahead.wanted({block.backend for block in self.blocks}, x):
                    compile_ahead.compile_ahead(lambda t: self._run_steps(t, first, stop, outputs), x)
        return self._run_steps(x, first, stop, outputs)

    def _run_steps(self, x: torch.Tensor, first: int, stop: int, outputs: list):
        wanted = {index for index, _ in outputs}
        kept = {}
        if first - 1 in wanted:
            kept[first - 1] = x
        for index in range(first, stop):
            step = self.steps[index]
            x = step.run(x) if isinstance(step, FusedBlock) else step(x)
            if index in wanted:
                kept[index] = x
        results = [kept[index].flatten(1) if flat else kept[index] for index, flat in outputs]
        return results[0] if self.single_output else results

    def _head_checked(self) -> int:
        if self.global_pool_step is None:
            raise AttributeError(f"{type(self).__name__}: this model does not end in global average pooling, "
                                 "so it has no forward_features / forward_head split")
        return self.global_pool_step

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the global average pool, as timm's `forward_features`."""
        start = self._head_checked()
        self.check_input(x)
        kept = self._run(x, 0, start, [(start - 1, False)])
        return kept if self.single_output else kept[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The global average pool and the classifier, as timm's `forward_head`; with
        `pre_logits=True` the pooled features [N, num_features]."""
        start = self._head_checked()
        check_inference_input(self, x, self.num_features)
        stop = start + 1 if pre_logits else len(self.steps)
        outputs = [(start, True)] if pre_logits else [self.outputs[-1]]
        kept = self._run(x, start, stop, outputs)
        return kept if self.single_output else kept[0]
