"""`inception-fast fid PATH_A PATH_B --weights FILE`: pytorch-fid's command, faster.

    inception-fast fid real/ generated/ --weights pt_inception-2015-12-05-6726825d.pth
    inception-fast fid real/ real.npz --save-stats --weights ...          # write the statistics
    inception-fast fid real.npz generated/ --weights ... --dims 2048
    torchrun --nproc-per-node 2 -m inception_fast fid real/ generated/ --weights ...

Prints `FID:  <value>` as pytorch-fid does (only rank 0 under torchrun).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .dims import BLOCK_INDEX_BY_DIM

DESCRIPTION = "FID of two folders of images (or .npz statistics), with pytorch-fid's Inception features"


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fid", help=DESCRIPTION[0].lower() + DESCRIPTION[1:], description=DESCRIPTION,
        epilog="examples:\n" + __doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", nargs=2,
                        help="folders of images (nested folders too) or .npz statistics files")
    parser.add_argument("--weights", metavar="FILE",
                        help="pytorch-fid's checkpoint pt_inception-2015-12-05-6726825d.pth (default: "
                             "pytorch-fid's own download, if present); not needed when both paths are .npz")
    parser.add_argument("--batch-size", type=int, default=50, help="images per network call (default 50)")
    parser.add_argument("--num-workers", type=int,
                        help="CPU processes decoding images (default: all CPUs of this rank, less one)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available; under torchrun "
                                         "cuda means cuda:LOCAL_RANK)")
    parser.add_argument("--dims", type=int, default=2048, choices=list(BLOCK_INDEX_BY_DIM),
                        help="feature size, as pytorch-fid defines it (default 2048)")
    parser.add_argument("--save-stats", action="store_true",
                        help="write the statistics of the first path to the second path (an .npz) instead")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                        help="fp32 (default) matches pytorch-fid; fp16 and bf16 are faster and move the "
                             "FID (measured on photographs: fp16 about 1e-3 relative, as TF32 does; bf16 "
                             "about 1e-2)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "triton", "cuda", "eager"],
                        help="auto (default), torch, triton, cuda: fused by inception_fast.optimize(); "
                             "eager: the network unfused, in plain PyTorch")
    parser.add_argument("--gpu-decode", action="store_true",
                        help="decode JPEGs on the GPU with nvJPEG: faster, but its pixels differ from "
                             "PIL's and the FID moves with them (4%% to 18%% in our measurements): not "
                             "for values to compare with pytorch-fid's")
    parser.add_argument("--fid-method", default="eigh", choices=["sqrtm", "eigh"],
                        help="eigh (default): the trace of the matrix square root from symmetric "
                             "eigendecompositions, pytorch-fid's value in less time; sqrtm: pytorch-fid's "
                             "scipy matrix square root, step for step")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--timings", action="store_true",
                        help="print the seconds of each step (model, each side's statistics, distance)")
    parser.set_defaults(run=run)
    return parser


def _compute(args, device) -> int:
    from pathlib import Path

    from .api import compute_fid, main_rank_statistics
    from .distributed import current_ranks
    from .statistics import save_statistics

    options = dict(
        dims=args.dims, batch_size=args.batch_size, device=device, num_workers=args.num_workers,
        precision=args.precision, backend=args.backend, gpu_decode=args.gpu_decode,
        progress=False if args.no_progress else None,
    )
    ranks = current_ranks()
    source, target = args.path
    if args.save_stats:
        # numpy's savez adds .npz to a name without it, as pytorch-fid's does.
        written = target if target.endswith(".npz") else target + ".npz"
        if not Path(source).exists():
            raise FileNotFoundError(f"Invalid path: {source}")
        if Path(written).exists():
            raise FileExistsError(f"Existing output file: {written}")
        if ranks.is_main:
            print(f"Saving statistics for {source}")
        statistics = main_rank_statistics(source, weights=args.weights, **options)
        if ranks.is_main:
            save_statistics(written, *statistics)
        return 0
    timings: dict = {}
    value = compute_fid(source, target, args.weights, fid_method=args.fid_method, timings=timings, **options)
    if ranks.is_main:
        print("FID: ", value)
        if args.timings:
            steps = ", ".join(f"{step[:-2]} {seconds:.2f}" for step, seconds in timings.items())
            print(f"inception-fast fid: seconds: {steps}", file=sys.stderr)
    return 0


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    return f"inception-fast fid: warning: {message}\n"


def run(args) -> int:
    import warnings

    # Warnings (unreadable files) read as the command's own messages, not as source lines.
    saved, warnings.formatwarning = warnings.formatwarning, _plain_warning
    try:
        return _run(args)
    finally:
        warnings.formatwarning = saved


def _run(args) -> int:
    from .distributed import init_from_environment, local_device

    try:
        device = local_device(args.device)
        created_group = init_from_environment(device)
    except (RuntimeError, ValueError) as err:
        print(f"inception-fast fid: error: {err}", file=sys.stderr)
        return 2
    try:
        status = _compute(args, device)
    except (OSError, ValueError, TypeError) as err:
        print(f"inception-fast fid: error: {err}", file=sys.stderr)
        status = 1
    except BaseException:
        if not created_group:
            raise
        traceback.print_exc()
        status = 1
    if created_group:
        _leave_process_group(status)
    return status


def _leave_process_group(status: int) -> None:
    """Tear the process group down and exit with `status`, skipping interpreter finalisation:
    the backend's worker threads may still be releasing finished work (tensors that own Python
    objects) then, and a thread that needs the GIL during finalisation aborts the process after
    the results are out."""
    import torch.distributed as dist

    if status == 0:
        dist.barrier()  # every rank done with every collective before any tears down
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
