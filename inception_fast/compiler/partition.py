"""Cut the layer graph into blocks: a block ends where one tensor alone carries everything the
rest of the network needs (the output of an Inception module, of a stem conv, of a pool).

Walking the layers in execution order, a cut falls after a layer when it is the only value
still to be read later. The branches of an Inception module, and the input of a residual
block (read again by its residual add), stay live until the module's end, so a module is never
split.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layers import Layer


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
    return segments
