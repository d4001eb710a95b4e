"""A process that compiles Triton kernel variants into Triton's on-disk cache, for
`compile_processes`: a Triton compile holds the GIL through most of its passes, so threads of
one process barely overlap, while processes do.

    python -m inception_fast.kernels.triton.compile_worker

Reads jobs (`job` dicts, framed by `send`) from stdin until it closes and answers each on
stdout with ("compiled", None) when the variant is in the cache, else ("compiled", why not). A job carries
what `triton.compile` takes for one variant, and the cache key the asking process computed: a
variant whose key differs here (another Triton, other settings) is not compiled, since the
asking process would never find it.

A worker imports triton and the modules that define the kernels it compiles, never torch: the
kernel modules (stage_kernel, block_kernel, tma_conv_kernel, layout_kernel, tf32) import only
triton and torch-free modules, and a job holds plain values (names, strings, numbers, Triton's
GPUTarget), so a worker starts in a fraction of a second instead of the seconds torch takes.
"""

from __future__ import annotations

import importlib
import os
import pickle
import struct
import sys

_LENGTH = struct.Struct(">I")


def frame(obj) -> bytes:
    """`obj` as one message: its pickle's length, then the pickle."""
    blob = pickle.dumps(obj)
    return _LENGTH.pack(len(blob)) + blob


def send(stream, obj) -> None:
    stream.write(frame(obj))
    stream.flush()


def receive(stream):
    """The next object on `stream`, or None at its end."""
    header = _read_exactly(stream, _LENGTH.size)
    if header is None:
        return None
    blob = _read_exactly(stream, _LENGTH.unpack(header)[0])
    if blob is None:
        raise EOFError("the stream ended inside a message")
    return pickle.loads(blob)


def _read_exactly(stream, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        part = stream.read(left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def job(src, target, options, env_vars, key: str) -> dict:
    """What a worker needs to compile the variant `triton.compile(src, target, options)` would,
    under the cache key `key`; for CUDA also the ptxas version this process keys variants by."""
    python_fn = src.fn.fn
    return {"module": python_fn.__module__, "name": python_fn.__qualname__, "signature": src.signature,
            "constants": src.constants, "attrs": src.attrs, "options": dict(options.__dict__),
            "target": target, "env_vars": env_vars, "key": key, "ptxas_version": _keyed_ptxas_version(target)}


def _keyed_ptxas_version(target) -> str | None:
    """The ptxas version in this process's cache keys for `target`. Triton asks ptxas once per
    process and keeps the answer, while the ptxas it runs follows TRITON_PTXAS_PATH, which
    torch.compile's Inductor sets on its first compile (to torch's own ptxas): after that, a
    fresh worker would ask the other ptxas and key every variant differently."""
    if target.backend != "cuda":
        return None
    from triton.backends.nvidia.compiler import get_ptxas_version

    return get_ptxas_version(target.arch)  # cached: the version this process's keys hold


def _jit_function(module: str, name: str):
    from triton.runtime.jit import JITFunction

    kernel = importlib.import_module(module)
    for part in name.split("."):
        kernel = getattr(kernel, part)
    while not isinstance(kernel, JITFunction) and hasattr(kernel, "fn"):  # autotuner, heuristics
        kernel = kernel.fn
    return kernel


def compile_job(work: dict) -> str | None:
    """Compile one job's variant into the cache: None when done, else why not."""
    try:
        import triton
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.cache import get_cache_key

        if work.get("ptxas_version") is not None:  # key as the asking process does (_keyed_ptxas_version)
            from triton import knobs
            from triton.backends.nvidia.compiler import get_ptxas_version

            if knobs.nvidia.mock_ptx_version != work["ptxas_version"]:
                knobs.nvidia.mock_ptx_version = work["ptxas_version"]
                get_ptxas_version.cache_clear()
        src = ASTSource(_jit_function(work["module"], work["name"]), work["signature"], work["constants"],
                        work["attrs"])
        backend = make_backend(work["target"])
        options = backend.parse_options(dict(work["options"], **src.parse_options()))  # as triton.compile
        if get_cache_key(src, backend, options, work["env_vars"]) != work["key"]:
            return f"{work['name']}: this process would compile it under another cache key"
        triton.compile(src, target=work["target"], options=work["options"], _env_vars=work["env_vars"])
        return None
    except Exception as err:  # noqa: BLE001 - reported to the asking process, which compiles it itself
        return f"{work['name']}: {type(err).__name__}: {err}"


def main() -> int:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints from compiling stay out of the replies
    while (work := receive(sys.stdin.buffer)) is not None:
        send(replies, ("compiled", compile_job(work)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
