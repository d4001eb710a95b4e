"""The anchors: what the fused model is measured beside, built the way their users run them.

- eager: the source network in the run dtype, channels_last on a GPU (`eager-nchw`: in its
  own NCHW layout, where a library runs it that way, e.g. pytorch-fid);
- eager-graph: the same, its whole forward captured as one CUDA graph;
- torch.compile, static shapes (`dynamic=False`, one graph per batch size as a deployment
  would use), in the modes below, with and without Inductor's freezing. Freezing (weights
  turned into constants, BatchNorm folded into the convs) is the inference setting: it is
  `torch._inductor.config.freezing = True`, passed here as an Inductor option of that one
  compiled function, so it holds for that anchor's compile (and any recompile) and for no
  other. It needs constant weights: the model in eval mode, called under inference_mode.

"The anchor" of a batch size is the fastest of those measured there. Compiling costs about
40 s per configuration and batch size on an H100 (max-autotune: 5-7 minutes), so each
compiled anchor runs at the batch sizes where it is the one to beat unless asked otherwise:
freezing default from batch 32 up (graphs matter little there), reduce-overhead + freezing
(CUDA graphs) up to batch 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FREEZING_DEFAULT_MIN_BATCH = 32
REDUCE_OVERHEAD_MAX_BATCH = 32


@dataclass(frozen=True)
class CompileAnchor:
    mode: str  # torch.compile mode
    freezing: bool
    min_batch: int = 1  # the batch sizes it runs at by default
    max_batch: int | None = None
    option: str = ""  # the option that turns it on, when it is off by default

    @property
    def label(self) -> str:
        return f"torch.compile {self.mode}" + (" + freezing" if self.freezing else "")

    @property
    def graphed(self) -> bool:
        """reduce-overhead and max-autotune replay CUDA graphs (Inductor's cudagraph trees)."""
        return self.mode in ("reduce-overhead", "max-autotune")

    def batch_rule(self) -> str | None:
        if self.max_batch is not None:
            return f"batch <= {self.max_batch}"
        if self.min_batch > 1:
            return f"batch >= {self.min_batch}"
        return None

    def runs_at(self, batch: int) -> bool:
        return batch >= self.min_batch and (self.max_batch is None or batch <= self.max_batch)


COMPILE_ANCHORS = {
    "compile": CompileAnchor("default", freezing=False),
    "compile-freezing": CompileAnchor("default", freezing=True, min_batch=FREEZING_DEFAULT_MIN_BATCH),
    "compile-ro-freezing": CompileAnchor(
        "reduce-overhead", freezing=True, max_batch=REDUCE_OVERHEAD_MAX_BATCH,
    ),
    "compile-max-autotune": CompileAnchor("max-autotune", freezing=False, option="--max-autotune"),
    "compile-max-autotune-freezing": CompileAnchor("max-autotune", freezing=True, option="--max-autotune"),
}
DEFAULT_COMPILE_ANCHORS = tuple(name for name, anchor in COMPILE_ANCHORS.items() if not anchor.option)
GPU_ONLY = ("eager-graph", "eager-nchw", *COMPILE_ANCHORS)


def parse_compile_anchors(text: str | None) -> tuple[str, ...]:
    """'compile-freezing,compile-ro-freezing' -> the names; None or '' -> the default ones."""
    if not text:
        return DEFAULT_COMPILE_ANCHORS
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in COMPILE_ANCHORS]
    if unknown:
        raise ValueError(
            f"unknown torch.compile anchor {', '.join(unknown)}; choose from {', '.join(COMPILE_ANCHORS)}"
        )
    return names


def compile_options(anchor: CompileAnchor) -> dict:
    """Inductor options equal to `mode=anchor.mode`, plus freezing (torch.compile takes a mode
    or options, not both)."""
    from torch._inductor import list_mode_options

    return {**list_mode_options(anchor.mode, dynamic=False), "freezing": anchor.freezing}


def compiled(model: torch.nn.Module, anchor: CompileAnchor):
    """`torch.compile(model)` as the anchor's users run it; compiles on its first call. Dynamo's
    caches are emptied first: every anchor and batch size is compiled afresh, so none is
    silently served by another's code or falls back to eager past the recompile limit."""
    torch._dynamo.reset()
    return torch.compile(model, dynamic=False, options=compile_options(anchor))


def label(name: str, library: str, dtype_name: str, on_gpu: bool) -> str:
    """The anchor's name in tables: 'timm eager fp16 channels_last', 'torch.compile
    reduce-overhead + freezing, fp16 channels_last'."""
    layout = " channels_last" if on_gpu else ""
    if name == "eager":
        return f"{library} eager {dtype_name}{layout}"
    if name == "eager-graph":
        return f"{library} eager {dtype_name}{layout}, CUDA graph"
    if name == "eager-nchw":
        return f"{library} eager {dtype_name} NCHW"
    if name in COMPILE_ANCHORS:
        return f"{COMPILE_ANCHORS[name].label}, {dtype_name}{layout}"
    raise ValueError(f"unknown anchor {name!r}")
