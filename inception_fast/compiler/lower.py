"""Lower one segment of the layer graph to a block plan and its folded parameters.

1. The avg-pool rewrite (see plan.py), where an average pool's only reader is a 1x1 conv.
2. Convolutions that read the same tensor with the same window stack into one Conv op.
3. Every tensor gets a place: the block output's concatenation becomes channel slices of the
   output buffer, any other concatenation a contiguous slice of the work buffer, every other
   intermediate its own work slice (in order of first use).
4. Each op runs in the earliest stage after the ops whose results it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..folding import fold_conv
from ..plan import INPUT, OUTPUT, WORK, BlockPlan, Conv, GlobalAvgPool, Pool, Slice, Write
from .layers import AliasLayer, CatLayer, ConvLayer, GlobalPoolLayer, Layer, PoolLayer, TorchLayer, resolve
from .tracing import UnsupportedModel


@dataclass(eq=False)
class _Raw(Layer):
    """The values of a rewritten 1x1 conv before the pool: no bias, no ReLU yet."""

    count: int = 0  # its channels


@dataclass(eq=False)
class _Op:
    """One plan op while lowering: what it reads and the values it produces."""

    kind: str  # "conv", "pool" or "global"
    src: Layer
    layers: list  # conv: the stacked ConvLayers; pool/global: [the PoolLayer/GlobalPoolLayer]
    order: int  # position of its first layer in the segment (ops keep the model's order)
    values: list = field(default_factory=list)  # what it produces (conv: one per stacked layer)
    bias_from: ConvLayer | None = None  # pool: the rewritten conv whose bias and ReLU it applies
    stage: int = 0

    @property
    def output(self) -> Layer:
        return self.values[0]


def _preserves_size(op: _Op) -> bool:
    """Whether the op's output has its input's size for every input size."""
    if op.kind == "global":
        return False
    layer = op.layers[0]
    (kh, kw), (ph, pw) = layer.kernel, layer.padding
    return layer.stride == 1 and 2 * ph == kh - 1 and 2 * pw == kw - 1


class _Lowering:
    def __init__(self, segment, name: str, path: str, channels: dict, device):
        self.segment, self.name, self.path, self.known_channels = segment, name, path, channels
        self.device = device
        self.block_input = resolve(segment.input)
        self.layers = [layer for layer in segment.layers if not isinstance(layer, AliasLayer)]
        self.output = resolve(segment.output)
        self.position = {id(layer): i for i, layer in enumerate(self.layers)}
        self.readers: dict = {}
        for layer in self.layers:
            for source in self.reads(layer):
                self.readers.setdefault(id(source), []).append(layer)

    def fail(self, message: str):
        where = f"{self.name} ({self.path})" if self.path else self.name
        raise UnsupportedModel(f"{where}: {message}")

    @staticmethod
    def reads(layer: Layer) -> list[Layer]:
        extra = [layer.residual] if isinstance(layer, ConvLayer) and layer.residual is not None else []
        return [resolve(source) for source in [*layer.inputs, *extra]]

    # -- 1-2: ops ---------------------------------------------------------------------------

    def build_ops(self) -> list[_Op]:
        for layer in self.layers:
            if isinstance(layer, TorchLayer):
                self.fail(f"{layer.name} ({getattr(layer.node, 'target', '?')}) cannot run inside a fused "
                          "block: the kernels run convolutions with BatchNorm/scale/residual/ReLU, pools "
                          "and concatenations only")
        rewritten = {}  # id(conv layer) -> the avg pool it now runs before
        for layer in self.layers:
            if isinstance(layer, PoolLayer) and layer.kind != "max" and layer is not self.output:
                readers = self.readers.get(id(layer), [])
                conv = readers[0] if len(readers) == 1 else None
                if (
                    isinstance(conv, ConvLayer) and not conv.is_linear and conv.kernel == (1, 1)
                    and conv.stride == 1 and conv.padding == (0, 0) and conv.residual is None
                ):
                    rewritten[id(conv)] = layer
        ops, convs = [], {}
        for layer in self.layers:
            order = self.position[id(layer)]
            if isinstance(layer, ConvLayer):
                pool = rewritten.get(id(layer))
                src = resolve(pool.inputs[0]) if pool is not None else resolve(layer.inputs[0])
                key = (id(src), layer.kernel, layer.stride, layer.padding)
                op = convs.get(key)
                if op is None:
                    op = convs[key] = _Op("conv", src, [], order)
                    ops.append(op)
                op.layers.append(layer)
                if pool is None:
                    op.values.append(layer)
                else:
                    raw = _Raw(f"{layer.name} (before {pool.name})", count=layer.channels)
                    op.values.append(raw)
                    ops.append(_Op("pool", raw, [pool], self.position[id(pool)], [layer], bias_from=layer))
            elif isinstance(layer, PoolLayer):
                if not any(layer is p for p in rewritten.values()):
                    ops.append(_Op("pool", resolve(layer.inputs[0]), [layer], order, [layer]))
            elif isinstance(layer, GlobalPoolLayer):
                ops.append(_Op("global", resolve(layer.inputs[0]), [layer], order, [layer]))
        return ops

    @staticmethod
    def produced(op: _Op) -> list[Layer]:
        return op.values

    # -- 3: places --------------------------------------------------------------------------

    def cat_leaves(self, cat: CatLayer) -> list[Layer]:
        leaves = []
        for source in cat.inputs:
            source = resolve(source)
            if isinstance(source, CatLayer):
                if len(self.readers.get(id(source), [])) != 1:
                    self.fail(f"concatenation {source.name} is read by more than one layer")
                leaves += self.cat_leaves(source)
            else:
                leaves.append(source)
        return leaves

    def place(self, ops: list[_Op]) -> dict:
        """Slice of every value (by id), work slices allocated in stage order."""
        where: dict = {}
        in_channels = self.in_channels(ops)
        channels = {id(layer): self.channels_of(layer, in_channels)
                    for op in ops for layer in self.produced(op)}
        where[id(self.block_input)] = Slice(INPUT, 0, in_channels)
        owner: dict = {}  # leaf id -> the concatenation it belongs to

        def claim(leaf: Layer, cat: Layer) -> None:
            if leaf is self.block_input:
                self.fail("a branch that passes the block input through unchanged is not supported")
            if id(leaf) in owner:
                self.fail(f"{leaf.name} is concatenated twice")
            if id(leaf) not in channels:
                self.fail(f"{leaf.name} is not computed inside the block")
            owner[id(leaf)] = cat

        out_leaves = self.cat_leaves(self.output) if isinstance(self.output, CatLayer) else [self.output]
        start = 0
        for leaf in out_leaves:
            claim(leaf, self.output)
            where[id(leaf)] = Slice(OUTPUT, start, start + channels[id(leaf)])
            start += channels[id(leaf)]
        self.out_channels = start
        # Concatenations other ops read (not only an enclosing concatenation): a work slice each.
        work_cats = [
            layer for layer in self.layers
            if isinstance(layer, CatLayer) and layer is not self.output
            and not all(isinstance(r, CatLayer) for r in self.readers.get(id(layer), []))
        ]
        cat_leaves = {id(cat): self.cat_leaves(cat) for cat in work_cats}
        for cat in work_cats:
            for leaf in cat_leaves[id(cat)]:
                claim(leaf, cat)
        top = 0
        for op in sorted(ops, key=lambda o: (o.stage, o.order)):
            for layer in self.produced(op):
                if id(layer) in where:
                    continue
                cat = owner.get(id(layer))
                if cat is None:
                    where[id(layer)] = Slice(WORK, top, top + channels[id(layer)])
                    top += channels[id(layer)]
                    continue
                for leaf in cat_leaves[id(cat)]:  # the whole concatenation, contiguous
                    where[id(leaf)] = Slice(WORK, top, top + channels[id(leaf)])
                    top += channels[id(leaf)]
                where[id(cat)] = Slice(WORK, where[id(cat_leaves[id(cat)][0])].start, top)
        self.work_channels = top
        return where

    def channels_of(self, layer: Layer, in_channels: int) -> int:
        if layer is self.block_input:
            return in_channels
        if isinstance(layer, _Raw):
            return layer.count
        count = self.known_channels.get(id(layer))
        if count is None:
            self.fail(f"cannot tell how many channels {layer.name} has")
        return count

    def in_channels(self, ops: list[_Op]) -> int:
        counts = {layer.in_channels for op in ops if op.kind == "conv" and op.src is self.block_input
                  for layer in op.layers}
        known = self.known_channels.get(id(self.block_input))
        if known is not None:
            counts.add(known)
        if len(counts) != 1:
            self.fail(f"cannot tell the block's input channels (seen {sorted(counts) or 'none'})")
        return counts.pop()

    # -- 4: stages --------------------------------------------------------------------------

    def schedule(self, ops: list[_Op]) -> None:
        producer = {}
        for op in ops:
            for layer in self.produced(op):
                producer[id(layer)] = op
        cat_members = {}
        for layer in self.layers:
            if isinstance(layer, CatLayer):
                cat_members[id(layer)] = self.cat_leaves(layer)
        for op in sorted(ops, key=lambda o: o.order):
            sources = cat_members.get(id(op.src), [op.src])
            deps = [producer[id(s)] for s in sources if id(s) in producer]
            op.stage = 1 + max((d.stage for d in deps), default=-1)
        # A conv stacked into an earlier op's stage never reads later results: stacked convs
        # share one source. The ordering pass above visits producers first because the model
        # computes them first; check it.
        for op in ops:
            for s in cat_members.get(id(op.src), [op.src]):
                if id(s) in producer and producer[id(s)].stage >= op.stage:
                    self.fail("the block's layers are not in dependency order")

    # -- the plan ---------------------------------------------------------------------------

    def lower(self) -> tuple[BlockPlan, list]:
        ops = self.build_ops()
        if not ops:
            self.fail("nothing to compute")
        self.schedule(ops)
        where = self.place(ops)
        self.check(ops, where)
        stages, params = [], []
        for stage in range(max(op.stage for op in ops) + 1):
            members = sorted((op for op in ops if op.stage == stage), key=lambda o: o.order)
            plan_ops = []
            for op in members:
                plan_op, param = self.emit(op, where)
                plan_ops.append(plan_op)
                params.append(param)
            stages.append(tuple(plan_ops))
        plan = BlockPlan(self.name, where[id(self.block_input)].channels, self.out_channels,
                         self.work_channels, tuple(stages), path=self.path)
        return plan, params

    def check(self, ops: list[_Op], where: dict) -> None:
        for op in ops:
            for layer in self.produced(op):
                if where[id(layer)].buffer == WORK and not _preserves_size(op):
                    self.fail(f"{layer.name} makes an intermediate at another size than the block input; "
                              "a fused block keeps its intermediates at the input's size")
            src = where[id(op.src)]
            if src.buffer == OUTPUT:
                producer = next(o for o in ops if op.src in self.produced(o))
                if not _preserves_size(producer):
                    self.fail(f"{op.layers[0].name} reads a block output that has another size than "
                              "the input")
            for layer in op.layers:
                if isinstance(layer, ConvLayer) and layer.residual is not None:
                    dst = where[id(layer)]
                    if resolve(layer.residual) is not self.block_input:
                        self.fail(f"{layer.name}: only a residual add of the block input fuses")
                    whole = Slice(OUTPUT, 0, where[id(self.block_input)].channels)
                    if dst != whole or not _preserves_size(op):
                        self.fail(f"{layer.name}: a residual add fuses where the conv makes the whole block "
                                  "output at the input's size and channels")

    def emit(self, op: _Op, where: dict):
        src = where[id(op.src)]
        if op.kind == "global":
            return GlobalAvgPool(src, where[id(op.output)]), None
        if op.kind == "pool":
            layer, conv = op.layers[0], op.bias_from
            pool = Pool(layer.kind, src, where[id(op.output)], layer.kernel, layer.stride, layer.padding,
                        layer.ceil_mode, bias=conv is not None, relu=bool(conv and conv.relu),
                        bias_source=conv.name if conv else "")
            return pool, (fold_conv(conv, self.device)[1] if conv else None)
        writes, weights, biases = [], [], []
        for layer, value in zip(op.layers, op.values):
            weight, bias = fold_conv(layer, self.device)
            raw = isinstance(value, _Raw)
            if raw:
                bias = torch.zeros_like(bias)  # the pool adds it after averaging
            weights.append(weight)
            biases.append(bias)
            write = Write(where[id(value)], bias=not raw, relu=layer.relu and not raw,
                          residual=layer.residual is not None)
            last = writes[-1] if writes else None
            if last and (last.bias, last.relu, last.residual) == (write.bias, write.relu, write.residual) \
                    and last.dst.buffer == write.dst.buffer and last.dst.stop == write.dst.start:
                write = Write(Slice(last.dst.buffer, last.dst.start, write.dst.stop), write.bias, write.relu,
                              write.residual)
                writes[-1] = write
            else:
                writes.append(write)
        first = op.layers[0]
        conv = Conv(tuple(layer.name for layer in op.layers), src, first.kernel, tuple(writes), first.stride,
                    first.padding)
        return conv, (torch.cat(weights), torch.cat(biases))


def lower_segment(segment, name: str, path: str, channels: dict, device=None) -> tuple[BlockPlan, list]:
    """(plan, params): params[i] belongs to plan.ops[i]: (weight, bias) in float64 for a Conv,
    the bias for a Pool that adds one, else None, folded on `device` (default: each layer's).
    `channels`: `layers.infer_channels`."""
    return _Lowering(segment, name, path, channels, device).lower()
