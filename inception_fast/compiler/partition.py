"""Cut the layer graph into blocks: a block ends where one tensor alone carries everything the
rest of the network needs (the output of an Inception module, of a stem conv, of a pool).

Walking the layers in execution order, a cut falls after a layer when it is the only value
still to be read later. The branches of an Inception module, and the input of a residual
block (read again by its residual add), stay live until the module's end, so a module is never
split.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layers import ConvLayer, Layer, PoolLayer


@dataclass
class Segment:
    input: Layer  # the tensor the segment reads (the previous segment's output)
    layers: list  # its layers in execution order; the last one is its output

    @property
    def output(self) -> Layer:
        return self.layers[-1]


def _reachable(layers: list[Layer], outputs: list[Layer]) -> set:
    seen, stack = set(), list(outputs)
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        stack.extend(_reads(layer))
    return seen


def _reads(layer: Layer) -> list[Layer]:
    extra = [layer.residual] if getattr(layer, "residual", None) is not None else []
    return [*layer.inputs, *extra]


def partition(layers: list[Layer], outputs: list[Layer]) -> list[Segment]:
    """Segments in execution order; the first reads the network input (layers[0])."""
    alive = _reachable(layers, outputs)
    layers = [layer for layer in layers if id(layer) in alive]
    readers: dict = {id(layer): 0 for layer in layers}
    for layer in layers:
        for source in {id(s) for s in _reads(layer)}:
            readers[source] += 1
    live = {id(layers[0])} if readers[id(layers[0])] else set()
    segments, current, start = [], [], layers[0]
    for layer in layers[1:]:
        current.append(layer)
        for source in {id(s) for s in _reads(layer)}:
            readers[source] -= 1
            if readers[source] == 0:
                live.discard(source)
        if readers[id(layer)] > 0:
            live.add(id(layer))
        if live <= {id(layer)}:
            segments.append(Segment(start, current))
            current, start = [], layer
    if current:
        segments.append(Segment(start, current))
    return _merge_pool_into_its_conv(segments)


def _merge_pool_into_its_conv(segments: list[Segment]) -> list[Segment]:
    """A lone average pool whose one reader is a 1x1 conv joins the next segment, where the
    avg-pool rewrite runs the conv first (over the pool's channel count) in one block."""
    merged: list[Segment] = []
    for segment in segments:
        previous = merged[-1] if merged else None
        if previous is not None and len(previous.layers) == 1 and _rewritable(previous.output, segment):
            merged[-1] = Segment(previous.input, previous.layers + segment.layers)
        else:
            merged.append(segment)
    return merged


def _rewritable(pool: Layer, segment: Segment) -> bool:
    if not (isinstance(pool, PoolLayer) and pool.kind != "max" and pool.stride == 1):
        return False
    (kh, kw), (ph, pw) = pool.kernel, pool.padding
    readers = [layer for layer in segment.layers if any(i is pool for i in _reads(layer))]
    conv = readers[0] if len(readers) == 1 else None
    return (
        2 * ph == kh - 1 and 2 * pw == kw - 1 and isinstance(conv, ConvLayer) and not conv.is_linear
        and conv.kernel == (1, 1) and conv.stride == 1 and conv.padding == (0, 0) and conv.residual is None
    )
