"""Whole-forward CUDA graphs: at small batches the GPU waits on ~80 kernel launches, and one
graph replay removes that host-side cost."""

from __future__ import annotations

import torch


def run_graphed(model, x: torch.Tensor) -> torch.Tensor:
    """Replay a CUDA graph of `model.run_eager`, captured once per input shape and dtype after
    two eager warm-up runs (which tune kernels and fill every cache); the input is copied into
    the graph's static channels_last buffer, and the outputs are returned as fresh tensors."""
    key = (tuple(x.shape), x.dtype, x.device)
    entry = model.graph_cache.get(key)
    if entry is None:
        static_x = x.contiguous(memory_format=torch.channels_last).clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                model.run_eager(static_x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model.run_eager(static_x)
        entry = model.graph_cache[key] = (graph, static_x, static_out)
    graph, static_x, static_out = entry
    static_x.copy_(x)
    graph.replay()
    if isinstance(static_out, list):
        return [out.clone() for out in static_out]
    return static_out.clone()
