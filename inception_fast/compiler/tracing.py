"""Read what a model computes: a `torch.fx` trace, turned into the layer graph of `layers.py`.

Every attribute that changes the result is read from the module or from the traced call's own
arguments (pools called functionally inside `forward` included); anything the layer graph
cannot express exactly is refused with an error naming the layer. Conv -> BatchNorm ->
scale -> residual add -> ReLU chains are fused while reading, where each step is the only
use of the step before (an in-place op or a second reader would otherwise see other values).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..plan import AVG, AVG_INCLUDE_PAD, MAX
from .layers import (
    AliasLayer,
    CatLayer,
    ConvLayer,
    GlobalPoolLayer,
    InputLayer,
    Layer,
    PoolLayer,
    TorchLayer,
    resolve,
)


class UnsupportedModel(TypeError):
    """The model computes something the fused kernels cannot compute exactly."""


def _batchnorm_kind(bn: nn.BatchNorm2d) -> str | None:
    """How to read a BatchNorm class whose forward we know: "plain", or "with-act" (timm's
    BatchNormAct2d, which applies its `drop` and `act` after normalising); None if unknown."""
    forward = type(bn).forward
    if forward is nn.BatchNorm2d.forward:
        return "plain"
    if type(bn).__module__.startswith("timm."):  # import timm (slow) only for its own layers
        from timm.layers import BatchNormAct2d

        if forward is BatchNormAct2d.forward:
            return "with-act"
    return None


class _Tracer(fx.Tracer):
    """torch.nn modules are leaves (fx's default), and so is every BatchNorm2d subclass, whose
    forward is read as a whole (timm's BatchNormAct2d carries its activation)."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, nn.BatchNorm2d) or super().is_leaf_module(module, qualname)


def trace(model: nn.Module) -> fx.Graph:
    _check_hooks(model)
    try:
        return _Tracer().trace(model)
    except Exception as err:
        raise UnsupportedModel(
            f"cannot read the computation of {type(model).__name__} with torch.fx "
            f"({type(err).__name__}: {err}); a forward whose control flow depends on tensor "
            "values cannot be fused"
        ) from err


def _check_hooks(model: nn.Module) -> None:
    from torch.nn.modules import module as module_globals

    if module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks:
        raise UnsupportedModel(
            "global forward hooks are registered (torch.nn.modules.module.register_module_forward_hook), "
            "which a fused model would not run; remove them before optimize()"
        )
    for name, module in model.named_modules():
        if module._forward_hooks or module._forward_pre_hooks:
            raise UnsupportedModel(
                f"{name or type(model).__name__} has forward hooks, which a fused model would not "
                "run; remove them before optimize()"
            )
        if "forward" in module.__dict__:
            raise UnsupportedModel(
                f"{name or type(model).__name__} has its forward replaced on the instance; "
                "optimize() reads modules by their class"
            )


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _bind(node: fx.Node, names: tuple, defaults: dict) -> dict:
    """A traced call's arguments by name (positional ones first, in `names` order)."""
    bound = dict(defaults)
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


_MAX_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                  "divisor_override")


def _pool(name: str, layer: Layer, is_max: bool, args: dict) -> PoolLayer:
    kernel = _pair(args["kernel_size"])
    stride = _pair(args["stride"] if args.get("stride") not in (None, (), []) else kernel)
    padding = _pair(args.get("padding", 0))
    if stride[0] != stride[1]:
        raise UnsupportedModel(f"{name}: pooling stride {stride} is not square; the kernels take one stride")
    if is_max:
        if _pair(args.get("dilation", 1)) != (1, 1):
            raise UnsupportedModel(f"{name}: dilated max-pooling is not supported")
        if args.get("return_indices"):
            raise UnsupportedModel(f"{name}: max-pooling that returns indices is not supported")
        kind = MAX
    else:
        if args.get("divisor_override") is not None:
            raise UnsupportedModel(f"{name}: avg-pooling with divisor_override is not supported")
        kind = AVG_INCLUDE_PAD if args.get("count_include_pad", True) and padding != (0, 0) else AVG
    # With stride 1 the rounding mode cannot change the size: one form for one computation.
    ceil_mode = bool(args.get("ceil_mode", False)) and stride[0] > 1
    return PoolLayer(name, [layer], kind=kind, kernel=kernel, stride=stride[0], padding=padding,
                     ceil_mode=ceil_mode)


def _conv_padding(name: str, conv: nn.Conv2d) -> None:
    if isinstance(conv.padding, str):
        raise UnsupportedModel(
            f"{name}: padding={conv.padding!r} is not supported; give the padding in pixels"
        )


def _chain_end(layer: Layer) -> bool:
    """A conv chain that a next epilogue step may join: its current value has this one use."""
    return isinstance(layer, ConvLayer) and len(layer.node.users) == 1


class _Reader:
    """Walks the fx graph in order and builds the layer graph."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.env: dict = {}
        self.layers: list[Layer] = []
        self.outputs = None

    def add(self, node: fx.Node, layer: Layer) -> None:
        layer.node = node
        if node.op == "call_module":
            layer.paths.append(node.target)
        self.env[node] = layer
        if not self.layers or self.layers[-1] is not layer:
            self.layers.append(layer)

    def extend(self, node: fx.Node, layer: ConvLayer) -> None:
        """`node` joined the chain of `layer`: downstream reads of `node` read the chain."""
        layer.node = node
        if node.op == "call_module":
            layer.paths.append(node.target)
        self.env[node] = layer

    def arg(self, node: fx.Node, index: int = 0) -> Layer:
        value = node.args[index] if index < len(node.args) else None
        if not isinstance(value, fx.Node):
            raise UnsupportedModel(f"{node.name}: expected a tensor argument, got {value!r}")
        return self.env[value]

    def read(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            if node.op == "placeholder":
                if any(isinstance(layer, InputLayer) for layer in self.layers):
                    if node.users:
                        raise UnsupportedModel("optimize() fuses models with one tensor input")
                    continue
                self.add(node, InputLayer(node.name))
            elif node.op == "output":
                self.outputs = node.args[0]
            elif node.op == "call_module":
                self.module(node, self.model.get_submodule(node.target))
            elif node.op in ("call_function", "call_method"):
                self.function(node)
            else:  # get_attr: a constant for a parameter-free op
                self.torch_op(node)

    # -- modules -----------------------------------------------------------------------------

    def module(self, node: fx.Node, module: nn.Module) -> None:
        name = node.target
        if type(module).forward is nn.Conv2d.forward and isinstance(module, nn.Conv2d):
            self.conv(node, module)
        elif isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
            self.linear(node, module)
        elif isinstance(module, nn.BatchNorm2d):
            self.batchnorm(node, module)
        elif type(module) is nn.ReLU:
            self.relu(node)
        elif type(module) is nn.MaxPool2d:
            args = {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                    "dilation": module.dilation, "ceil_mode": module.ceil_mode,
                    "return_indices": module.return_indices}
            self.add(node, _pool(name, self.arg(node), True, args))
        elif type(module) is nn.AvgPool2d:
            args = {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                    "ceil_mode": module.ceil_mode, "count_include_pad": module.count_include_pad,
                    "divisor_override": module.divisor_override}
            self.add(node, _pool(name, self.arg(node), False, args))
        elif type(module) is nn.AdaptiveAvgPool2d:
            self.global_pool(node, module.output_size)
        elif type(module) in (nn.Dropout, nn.Dropout2d, nn.Identity):
            if module.training and type(module) is not nn.Identity:
                raise UnsupportedModel(f"{name} is in training mode: call model.eval() first")
            self.add(node, AliasLayer(name, [self.arg(node)]))
        elif type(module) is nn.Flatten:
            self.flatten(node, module.start_dim, module.end_dim)
        elif any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            raise UnsupportedModel(
                f"{name}: a {type(module).__name__} layer is not supported by the fused kernels "
                "(supported: Conv2d, BatchNorm2d, ReLU, max/avg pooling, global average pooling, "
                "concatenation, residual add, Linear classifier)"
            )
        else:
            self.torch_op(node)

    def conv(self, node: fx.Node, conv: nn.Conv2d) -> None:
        name = node.target
        _conv_padding(name, conv)
        if conv.padding_mode != "zeros":
            raise UnsupportedModel(
                f"{name}: padding_mode={conv.padding_mode!r} is not supported (zeros only)"
            )
        if conv.groups != 1:
            raise UnsupportedModel(f"{name}: grouped convolutions (groups={conv.groups}) are not supported")
        if tuple(conv.dilation) != (1, 1):
            raise UnsupportedModel(
                f"{name}: dilated convolutions (dilation={conv.dilation}) are not supported"
            )
        if conv.stride[0] != conv.stride[1]:
            raise UnsupportedModel(
                f"{name}: stride {tuple(conv.stride)} is not square; the kernels take one stride"
            )
        source = self.arg(node)
        if resolve(source).flat or source.flat:
            raise UnsupportedModel(f"{name}: a convolution over a flattened tensor is not supported")
        self.add(node, ConvLayer(name, [source], module=conv))

    def linear(self, node: fx.Node, linear: nn.Linear) -> None:
        source = self.arg(node)
        if not (source.flat and source.is_1x1):
            raise UnsupportedModel(
                f"{node.target}: only a Linear classifier after global average pooling fuses "
                "(as a 1x1 convolution)"
            )
        self.add(node, ConvLayer(node.target, [source], module=linear))

    def batchnorm(self, node: fx.Node, bn: nn.BatchNorm2d) -> None:
        name = node.target
        kind = _batchnorm_kind(bn)
        if kind is None:
            raise UnsupportedModel(f"{name}: {type(bn).__name__} has a forward optimize() does not know")
        if bn.training:
            raise UnsupportedModel(f"{name} is in training mode: call model.eval() first")
        if bn.running_mean is None or bn.running_var is None:
            raise UnsupportedModel(f"{name}: BatchNorm without running statistics cannot be folded")
        source = self.arg(node)
        if not (_chain_end(source) and source.epilogue_free and source.bn is None and source.scale == 1.0
                and not source.is_linear):
            raise UnsupportedModel(
                f"{name}: BatchNorm folds only into the convolution right before it, as that "
                "convolution's only use"
            )
        source.bn, source.bn_eps = bn, bn.eps
        self.extend(node, source)
        if kind == "with-act":
            drop, act = getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity())
            if type(drop) not in (nn.Identity, nn.Dropout) or drop.training:
                raise UnsupportedModel(f"{name}.drop: {type(drop).__name__} is not supported")
            if type(act) is nn.ReLU:
                source.relu = True
            elif type(act) is not nn.Identity:
                raise UnsupportedModel(
                    f"{name}.act: activation {type(act).__name__} is not supported; only ReLU fuses"
                )

    # -- functions ---------------------------------------------------------------------------

    def function(self, node: fx.Node) -> None:
        target = node.target
        if target in (F.relu, torch.relu, torch.relu_, "relu", "relu_"):
            self.relu(node)
        elif target in (torch.cat, torch.concat):
            args = _bind(node, ("tensors", "dim"), {"dim": 0})
            if args["dim"] in (1, -3) and all(isinstance(t, fx.Node) for t in args["tensors"]):
                self.add(node, CatLayer(node.name, [self.env[t] for t in args["tensors"]]))
            else:
                self.torch_op(node)
        elif target is F.max_pool2d:
            args = _bind(node, _MAX_POOL_ARGS, {})
            self.add(node, _pool(node.name, self.env[args["input"]], True, args))
        elif target is F.avg_pool2d:
            args = _bind(node, _AVG_POOL_ARGS, {})
            self.add(node, _pool(node.name, self.env[args["input"]], False, args))
        elif target is F.adaptive_avg_pool2d:
            self.global_pool(node, _bind(node, ("input", "output_size"), {})["output_size"])
        elif target in (torch.mean, "mean"):
            self.mean(node)
        elif target in (torch.flatten, "flatten"):
            args = _bind(node, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
            self.flatten(node, args["start_dim"], args["end_dim"])
        elif target is F.dropout:
            args = _bind(node, ("input", "p", "training", "inplace"), {"training": True})
            if args["training"]:
                self.torch_op(node)  # F.dropout(training=True) drops values even in eval mode
            else:
                self.add(node, AliasLayer(node.name, [self.arg(node)]))
        elif target in (operator.mul, torch.mul, "mul"):
            self.scale(node)
        elif target in (operator.add, torch.add, "add"):
            self.residual_add(node)
        else:
            self.torch_op(node)

    def relu(self, node: fx.Node) -> None:
        source = self.arg(node)
        if _chain_end(source) and not source.relu:
            source.relu = True
            self.extend(node, source)
        else:
            self.torch_op(node)

    def scale(self, node: fx.Node) -> None:
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else None
        tensor, factor = (a, b) if isinstance(a, fx.Node) else (b, a)
        source = self.env.get(tensor) if isinstance(tensor, fx.Node) else None
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and source is not None \
                and _chain_end(source) and source.epilogue_free:
            source.scale *= float(factor)
            self.extend(node, source)
        else:
            self.torch_op(node)

    def residual_add(self, node: fx.Node) -> None:
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else None
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or "alpha" in node.kwargs:
            self.torch_op(node)
            return
        first, second = self.env[a], self.env[b]
        if _chain_end(first) and first.epilogue_free and not first.is_linear:
            first.residual = second
            self.extend(node, first)
        elif _chain_end(second) and second.epilogue_free and not second.is_linear:
            second.residual = first
            self.extend(node, second)
        else:
            self.torch_op(node)

    def global_pool(self, node: fx.Node, output_size) -> None:
        if _pair(output_size) != (1, 1):
            raise UnsupportedModel(f"{node.name}: adaptive average pooling to {output_size} is not "
                                   "supported (to 1x1 only)")
        self.add(node, GlobalPoolLayer(str(node.target), [self.arg(node)]))

    def mean(self, node: fx.Node) -> None:
        args = _bind(node, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
        dims = args["dim"]
        dims = {dims} if isinstance(dims, int) else set(dims or ())
        if dims in ({2, 3}, {-1, -2}) and "dtype" not in node.kwargs:
            self.add(node, GlobalPoolLayer(node.name, [self.arg(node)], keep_dims=bool(args["keepdim"])))
        else:
            self.torch_op(node)

    def flatten(self, node: fx.Node, start_dim: int, end_dim: int) -> None:
        source = self.arg(node)
        if start_dim == 1 and end_dim == -1 and source.is_1x1:
            self.add(node, AliasLayer(node.name, [source], flatten=True))
        else:
            self.torch_op(node)

    def torch_op(self, node: fx.Node) -> None:
        inputs = []
        for value in node.all_input_nodes:
            layer = self.env[value]
            if layer not in inputs:
                inputs.append(layer)
        self.add(node, TorchLayer(node.name, inputs))


def read_layers(model: nn.Module, graph: fx.Graph) -> tuple[list[Layer], object]:
    """The layer graph of a traced model, in execution order, and its outputs (a layer, or a
    list of layers, as the model returns them)."""
    reader = _Reader(model)
    reader.read(graph)
    outputs = reader.outputs
    if isinstance(outputs, fx.Node):
        return reader.layers, reader.env[outputs]
    if isinstance(outputs, (list, tuple)) and all(isinstance(o, fx.Node) for o in outputs):
        return reader.layers, [reader.env[o] for o in outputs]
    raise UnsupportedModel(f"{type(model).__name__} returns {type(outputs).__name__}; optimize() fuses "
                           "models that return a tensor or a list of tensors")
