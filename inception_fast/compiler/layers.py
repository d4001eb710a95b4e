"""The layer graph: what a traced model computes, one node per tensor it produces, before it is
cut into blocks. Chains that fuse into one kernel epilogue (conv -> BatchNorm -> scale ->
residual add -> ReLU) are already one `ConvLayer` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass(eq=False)
class Layer:
    name: str  # where it comes from in the source model (module path or traced op)
    inputs: list = field(default_factory=list)
    paths: list = field(default_factory=list)  # the source model's modules it reads
    node: object = None  # the fx node holding its value (a fused chain: the chain's last node)

    @property
    def is_1x1(self) -> bool:
        """True where the produced tensor is known to have a 1x1 spatial size."""
        return False

    @property
    def flat(self) -> bool:
        """True where the produced tensor is [N, C] (a flattened 1x1 map)."""
        return False


@dataclass(eq=False)
class InputLayer(Layer):
    pass


@dataclass(eq=False)
class ConvLayer(Layer):
    """conv (or Linear on a flattened 1x1 map) -> [BatchNorm] -> [* scale] -> [+ residual] ->
    [ReLU]. `inputs[0]` is the conv's input; `residual` (when set) is the other addend."""

    module: nn.Module = None  # nn.Conv2d or nn.Linear
    bn: nn.Module | None = None
    bn_eps: float = 0.0
    scale: float = 1.0
    residual: Layer | None = None
    relu: bool = False

    @property
    def is_linear(self) -> bool:
        return isinstance(self.module, nn.Linear)

    @property
    def kernel(self) -> tuple[int, int]:
        return (1, 1) if self.is_linear else tuple(self.module.kernel_size)

    @property
    def stride(self) -> int:
        return 1 if self.is_linear else self.module.stride[0]

    @property
    def padding(self) -> tuple[int, int]:
        return (0, 0) if self.is_linear else tuple(self.module.padding)

    @property
    def in_channels(self) -> int:
        return self.module.in_features if self.is_linear else self.module.in_channels

    @property
    def channels(self) -> int:
        return self.module.out_features if self.is_linear else self.module.out_channels

    @property
    def is_1x1(self) -> bool:
        return self.is_linear

    @property
    def flat(self) -> bool:
        return self.is_linear

    @property
    def epilogue_free(self) -> bool:
        """Nothing but BatchNorm and scale fused yet: a residual or ReLU may still join."""
        return self.residual is None and not self.relu


@dataclass(eq=False)
class PoolLayer(Layer):
    kind: str = "max"  # plan.MAX, plan.AVG or plan.AVG_INCLUDE_PAD
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False


@dataclass(eq=False)
class GlobalPoolLayer(Layer):
    keep_dims: bool = True  # False: the result is flattened to [N, C] (x.mean((2, 3)))

    @property
    def is_1x1(self) -> bool:
        return True

    @property
    def flat(self) -> bool:
        return not self.keep_dims


@dataclass(eq=False)
class CatLayer(Layer):
    """Concatenation along channels."""


@dataclass(eq=False)
class AliasLayer(Layer):
    """The same values as its input: dropout in eval mode, Identity, or flattening a 1x1 map."""

    flatten: bool = False

    @property
    def is_1x1(self) -> bool:
        return self.inputs[0].is_1x1

    @property
    def flat(self) -> bool:
        return self.flatten or self.inputs[0].flat


@dataclass(eq=False)
class TorchLayer(Layer):
    """Any other parameter-free op (input preprocessing such as a per-channel affine or a
    resize): run by PyTorch as traced, never inside a fused block."""


def resolve(layer: Layer) -> Layer:
    """The layer that holds the values (through aliases)."""
    while isinstance(layer, AliasLayer):
        layer = layer.inputs[0]
    return layer


def infer_channels(layers: list[Layer]) -> dict:
    """Channels of every layer's tensor (by id) where the graph tells: forward from the convs'
    output channels, backward from their input channels; pools and aliases keep the count."""
    known: dict = {}
    for _ in range(len(layers) + 1):
        changed = False

        def learn(layer: Layer, count: int | None) -> None:
            nonlocal changed
            if count is not None and known.get(id(layer)) is None:
                known[id(layer)] = count
                changed = True

        for layer in layers:
            if isinstance(layer, ConvLayer):
                learn(layer, layer.channels)
                learn(layer.inputs[0], layer.in_channels)
            elif isinstance(layer, (PoolLayer, GlobalPoolLayer, AliasLayer)):
                learn(layer, known.get(id(layer.inputs[0])))
                learn(layer.inputs[0], known.get(id(layer)))
            elif isinstance(layer, CatLayer):
                counts = [known.get(id(i)) for i in layer.inputs]
                learn(layer, None if None in counts else sum(counts))
        if not changed:
            break
    return known
