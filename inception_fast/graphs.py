"""Whole-forward CUDA graphs: at small batches the GPU waits on ~80 kernel launches, and one
graph replay removes that host-side cost."""

from __future__ import annotations

import threading

import torch

from .backends import precision_key
from .timing import capture_graph

# One graph's static input and output serve every caller: threads that share a model take turns
# on the host, and each replay's stream waits for the previous replay's output copy on the GPU.
_replay_lock = threading.Lock()
MAX_GRAPHS = 8  # captured input shapes kept per model; the least recently used goes first


def capturing() -> bool:
    """Whether a CUDA graph capture is recording on the current stream. False while
    torch.compile traces (the question does not trace) and before CUDA is initialized (nothing
    can capture then, and asking would initialize it, or fail on a machine without a GPU)."""
    if torch.compiler.is_compiling() or not torch.cuda.is_initialized():
        return False
    return torch.cuda.is_current_stream_capturing()


def outside_capture(device, what: str) -> None:
    """Raise a clear error when `what` (work that copies host data to `device`, such as packing a
    block's tables) is asked for inside a CUDA graph capture, which cannot hold such a copy:
    the first call at a shape must run before the capture."""
    if torch.device(device).type == "cuda" and capturing():
        raise RuntimeError(
            f"{what}: the first call at this input shape is being captured into a CUDA graph; "
            "call the model once at this shape outside the capture first (the warm-up PyTorch "
            "asks for before torch.cuda.graph), then capture"
        )


def run_graphed(model, x: torch.Tensor) -> torch.Tensor:
    """Replay a CUDA graph of `model.run_eager`, captured once per input shape and dtype after
    two eager warm-up runs (which tune kernels and fill every cache); the input is copied into
    the graph's static channels_last buffer, and the outputs are returned as fresh tensors.
    Safe to call from several threads on several streams."""
    # precision_key: fp32 blocks follow the TF32 switch, so a graph captured with it on is not
    # the one for off.
    key = (tuple(x.shape), precision_key(x), x.device)
    with _replay_lock:
        entry = model.graph_cache.pop(key, None)  # re-inserted below: the dict keeps use order
        if entry is None:
            while len(model.graph_cache) >= MAX_GRAPHS:
                model.graph_cache.pop(next(iter(model.graph_cache)))
            entry = _capture(model, x)
        model.graph_cache[key] = entry
        graph, static_x, static_out, done = entry
        stream = torch.cuda.current_stream(x.device)
        stream.wait_event(done)  # the last replay, on whichever stream, has copied its output out
        static_x.copy_(x)
        graph.replay()
        if isinstance(static_out, list):
            out = [o.clone() for o in static_out]
        else:
            out = static_out.clone()
        done.record(stream)
    return out


def _capture(model, x: torch.Tensor) -> tuple:
    static_x = x.contiguous(memory_format=torch.channels_last).clone()
    graph, static_out = capture_graph(lambda: model.run_eager(static_x), warmup=2, device=x.device)
    return graph, static_x, static_out, torch.cuda.Event()
