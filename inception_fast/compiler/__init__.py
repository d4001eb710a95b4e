"""The plan compiler: from any model instance to the block plans of what it computes.

    trace (torch.fx) -> layer graph (fused conv chains) -> segments (cut where one tensor
    carries everything) -> block plans + folded parameters, or PyTorch steps

Nothing here knows a network by name: Inception-v4, GoogLeNet, Inception-v3, Inception-ResNet-v2,
pytorch-fid's network or a block a user writes are all read from their own computation.
A segment of parameter-free ops that are not in the plan vocabulary (input preprocessing: a
per-channel affine, a resize) runs as the traced PyTorch ops themselves; anything else the
kernels cannot compute exactly is refused with `UnsupportedModel`, naming the layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from ..plan import BlockPlan
from .layers import (
    AliasLayer,
    CatLayer,
    ConvLayer,
    GlobalPoolLayer,
    InputLayer,
    Layer,
    PoolLayer,
    TorchLayer,
    infer_channels,
    resolve,
)
from .lower import lower_segment
from .partition import Segment, partition
from .tracing import UnsupportedModel, read_layers, trace

__all__ = ["CompiledBlock", "CompiledNetwork", "TorchStep", "UnsupportedModel", "compile_model"]


@dataclass
class CompiledBlock:
    plan: BlockPlan
    params: list  # per plan op: (weight, bias) float64 for a Conv, a bias for a Pool that adds one


@dataclass
class TorchStep:
    """Parameter-free traced ops run by PyTorch (a GraphModule taking one tensor)."""

    module: fx.GraphModule
    name: str


@dataclass
class CompiledNetwork:
    steps: list  # CompiledBlock | TorchStep, each reading the previous step's result
    outputs: list  # per model output: (index of the step whose result it is, flattened?)
    single_output: bool  # the model returns one tensor (else a list)
    in_channels: int
    global_pool_step: int | None  # the last global average pool (timm's forward_head starts here)


def _segment_name(model: nn.Module, segment: Segment) -> tuple[str, str]:
    """(class name, path) of the smallest module holding the segment's layers."""
    paths = [p.split(".") for layer in segment.layers for p in layer.paths]
    if not paths:
        layer = segment.output
        return type(layer).__name__.removesuffix("Layer"), layer.name
    common = paths[0]
    for parts in paths[1:]:
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    path = ".".join(common)
    module = model.get_submodule(path) if path else model
    return type(module).__name__, path


def _torch_step(graph_module_root: nn.Module, segment: Segment, name: str) -> TorchStep:
    """The segment's traced ops as a GraphModule of one input."""
    graph = fx.Graph()
    env = {segment.input.node: graph.placeholder("x")}
    for layer in segment.layers:
        if isinstance(layer, AliasLayer):  # reads what its input reads
            env[layer.node] = env[layer.inputs[0].node]
        else:
            env[layer.node] = graph.node_copy(layer.node, lambda n: env[n])
    graph.output(env[segment.output.node])
    # A copy: constants it reads (a normalisation buffer, say) are a snapshot like the weights.
    return TorchStep(copy.deepcopy(fx.GraphModule(graph_module_root, graph)), name)


def _first_conv_channels(layers: list[Layer]) -> int | None:
    for layer in layers:
        if isinstance(layer, ConvLayer):
            return layer.in_channels
    return None


def compile_model(model: nn.Module, device: torch.device | None = None) -> CompiledNetwork:
    """Block plans and PyTorch steps that compute exactly what `model` (in eval mode) computes,
    the blocks' parameters folded on `device` (default: each layer's; see `folding.fold_conv`)."""
    if model.training:
        raise RuntimeError(
            f"{type(model).__name__} is in training mode; fusing folds its BatchNorm statistics: "
            "put the model in eval mode first (model.eval())"
        )
    graph = trace(model)
    layers, outputs = read_layers(model, graph)
    single = not isinstance(outputs, list)
    outputs = [outputs] if single else outputs
    if not isinstance(layers[0], InputLayer):
        raise UnsupportedModel(f"{type(model).__name__} takes no tensor input")
    segments = partition(layers, [resolve(o) for o in outputs] + [o for o in outputs])
    channels = infer_channels(layers)
    steps, step_of = [], {id(layers[0]): -1}
    global_pool_step = None
    for segment in segments:
        kinds = {type(layer) for layer in segment.layers}
        if kinds <= {AliasLayer}:
            step_of[id(segment.output)] = step_of[id(segment.input)]
            for layer in segment.layers:
                step_of[id(layer)] = step_of[id(segment.input)]
            continue
        name, path = _segment_name(model, segment)
        if TorchLayer in kinds and kinds <= {AliasLayer, TorchLayer, CatLayer, PoolLayer, GlobalPoolLayer}:
            steps.append(_torch_step(model, segment, name))
        else:
            plan, params = lower_segment(segment, name, path, channels, device)
            steps.append(CompiledBlock(plan, params))
            if isinstance(resolve(segment.output), GlobalPoolLayer):
                global_pool_step = len(steps) - 1
        for layer in segment.layers:
            step_of[id(layer)] = len(steps) - 1
    if not any(isinstance(s, CompiledBlock) for s in steps):
        raise UnsupportedModel(f"{type(model).__name__} has no convolution or pool to fuse")
    resolved_outputs = []
    for out in outputs:
        if id(out) not in step_of or not _ends_a_segment(out, segments):
            raise UnsupportedModel(
                f"output {out.name} is not at a block boundary; a fused model returns block outputs only"
            )
        resolved_outputs.append((step_of[id(out)], out.flat and not isinstance(resolve(out), TorchLayer)))
    in_channels = _first_conv_channels(layers)
    return CompiledNetwork(steps, resolved_outputs, single, in_channels, global_pool_step)


def _ends_a_segment(layer: Layer, segments: list[Segment]) -> bool:
    return any(s.output is layer for s in segments) or any(
        s.output is resolve(layer) for s in segments
    ) or isinstance(layer, InputLayer)
