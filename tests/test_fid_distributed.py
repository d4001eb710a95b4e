"""`torchrun --nproc-per-node 2 -m inception_fast fid ...` on the CPU (gloo): the same statistics,
and so the same FID, as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fid_helpers import checkpoint_path, image_folders
from test_fid_end_to_end import FID_LINE

from inception_fast.fid import compute_fid, compute_statistics, load_statistics


def run_torchrun(*args, processes: int, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(processes), "-m", "inception_fast", "fid", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def folders_with_a_bad_file(tmp_path_factory):
    """Two folders with an odd number of images each (the ranks get unequal shares), one of them
    with an unreadable file."""
    root = tmp_path_factory.mktemp("distributed")
    folders = []
    for folder in image_folders(24):
        copy = root / folder.name
        shutil.copytree(folder, copy)
        next(iter(sorted(copy.iterdir()))).unlink()  # 23 images
        folders.append(copy)
    (folders[1] / "broken.png").write_text("not a png")
    return folders


def test_two_processes_give_the_statistics_and_fid_of_one(folders_with_a_bad_file, tmp_path):
    folder_a, folder_b = folders_with_a_bad_file
    common = ["--device", "cpu", "--dims", "64", "--backend", "eager", "--num-workers", "0",
              "--weights", checkpoint_path(), "--batch-size", "4"]
    two = run_torchrun(folder_a, folder_b, *common, processes=2, cwd=tmp_path)
    saved = run_torchrun(folder_b, tmp_path / "two.npz", "--save-stats", *common, processes=2, cwd=tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    assert saved.returncode == 0, saved.stdout + saved.stderr
    # Only rank 0 prints, and the unreadable file is named once.
    assert len(FID_LINE.findall(two.stdout)) == 1, two.stdout
    assert two.stderr.count("unreadable image file") == 1, two.stderr
    assert "warning: skipped 1 unreadable image file(s): " + str(folder_b / "broken.png") in two.stderr

    # One process, one thread like each torchrun rank (CPU convolutions pick their kernels by
    # thread count; the comparison is of the splitting, not of kernels).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = dict(dims=64, device="cpu", backend="eager", num_workers=0, batch_size=4)
        with pytest.warns(UserWarning, match="broken.png"):
            one = compute_fid(folder_a, folder_b, checkpoint_path(), **options)
        with pytest.warns(UserWarning, match="broken.png"):
            mu_one, sigma_one = compute_statistics(folder_b, checkpoint_path(), **options)
    finally:
        torch.set_num_threads(threads)
    assert float(FID_LINE.search(two.stdout).group(1)) == pytest.approx(one, rel=1e-9)
    # The features come back in file order: the statistics are those of one process.
    mu_two, sigma_two = load_statistics(tmp_path / "two.npz")
    np.testing.assert_allclose(mu_two, mu_one, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sigma_two, sigma_one, rtol=1e-9, atol=1e-15)
