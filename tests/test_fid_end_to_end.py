"""FID of two folders against pytorch-fid itself: the Python API, and both commands.

One test runs both commands as users run them (fresh processes); the others call the command's
`main()` in this process, which costs no interpreter start and no torch import.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from fid_helpers import checkpoint_path, image_folders, pytorch_fid_loads

from inception_fast.cli import main
from inception_fast.fid import (
    CHECKPOINT_FILENAME,
    calculate_frechet_distance,
    compute_fid,
    compute_statistics,
    load_statistics,
)

FID_LINE = re.compile(r"^FID:  (\S+)$", re.M)


def _pytorch_fid(folders, dims: int) -> float:
    from pytorch_fid.fid_score import calculate_fid_given_paths

    with pytorch_fid_loads(checkpoint_path()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's notes on singular matrices and disp=
        return float(calculate_fid_given_paths([str(f) for f in folders], 50, "cpu", dims, num_workers=0))


def test_fid_of_two_folders_matches_pytorch_fid_dims_64():
    folders = image_folders(100)
    expected = _pytorch_fid(folders, 64)
    assert expected > 0.1  # two different distributions
    options = dict(dims=64, device="cpu", backend="eager", num_workers=0)
    statistics = [compute_statistics(f, checkpoint_path(), **options) for f in folders]
    for method in ("sqrtm", "eigh"):
        value = calculate_frechet_distance(*statistics[0], *statistics[1], method=method)
        assert value == pytest.approx(expected, rel=1e-3), method


@pytest.mark.slow  # pytorch-fid's 2048x2048 sqrtm: ~10 s on two cores
def test_fid_of_two_folders_matches_pytorch_fid_dims_2048():
    # Fewer images than dims: singular covariances, as pytorch-fid meets them on small sets. Ours
    # takes the eigh route (scipy's sqrtm of a 2048x2048 matrix costs ~10 s on a small CPU, and is
    # compared with eigh in test_fid_statistics.py).
    folders = image_folders(24)
    expected = _pytorch_fid(folders, 2048)
    assert expected > 0.1
    value = compute_fid(*folders, checkpoint_path(), dims=2048, device="cpu", backend="eager", num_workers=0,
                        fid_method="eigh")
    assert value == pytest.approx(expected, rel=1e-3)


def run_command(*args, torch_home, module: str = "inception_fast") -> subprocess.CompletedProcess:
    """A command in a fresh process, as a user runs it."""
    env = dict(os.environ, TORCH_HOME=str(torch_home))
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, check=False)


def fid_command(capsys, *args) -> tuple[int, str, str]:
    """`inception-fast fid ...` in this process: (exit status, stdout, stderr)."""
    status = main(["fid", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_command_prints_what_pytorch_fids_command_prints(tmp_path, capsys, monkeypatch):
    folders = image_folders(24)
    # pytorch-fid finds "its download" where it would have saved it.
    cached = tmp_path / "hub" / "checkpoints" / CHECKPOINT_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(checkpoint_path().read_bytes())
    common = [*folders, "--device", "cpu", "--dims", "64", "--num-workers", "0"]
    theirs = run_command(*common, torch_home=tmp_path, module="pytorch_fid")
    assert theirs.returncode == 0, theirs.stderr
    ours = run_command("fid", *common, "--backend", "eager", "--weights", checkpoint_path(),
                       torch_home=tmp_path)
    assert ours.returncode == 0, ours.stderr
    assert len(FID_LINE.findall(ours.stdout)) == 1, ours.stdout
    assert float(FID_LINE.search(ours.stdout).group(1)) == pytest.approx(
        float(FID_LINE.search(theirs.stdout).group(1)), rel=1e-6)
    # Without --weights, pytorch-fid's download is used.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    status, out, err = fid_command(capsys, *common, "--backend", "eager")
    assert status == 0, err
    assert FID_LINE.search(out).group(1) == FID_LINE.search(ours.stdout).group(1)


def test_save_stats_then_fid_against_the_npz(tmp_path, capsys):
    folder_a, folder_b = image_folders(24)
    common = ["--device", "cpu", "--dims", "64", "--num-workers", "0", "--backend", "eager",
              "--weights", checkpoint_path()]
    status, out, err = fid_command(capsys, folder_a, tmp_path / "a", "--save-stats", *common)
    assert status == 0, err
    assert f"Saving statistics for {folder_a}" in out
    mu, sigma = load_statistics(tmp_path / "a.npz")  # numpy's .npz added, as pytorch-fid's is
    assert mu.shape == (64,) and sigma.shape == (64, 64)

    status, _, err = fid_command(capsys, folder_a, tmp_path / "a.npz", "--save-stats", *common)
    assert status == 1 and "Existing output file" in err

    _, from_npz, _ = fid_command(capsys, tmp_path / "a.npz", folder_b, *common)
    _, from_folders, _ = fid_command(capsys, folder_a, folder_b, *common)
    assert FID_LINE.search(from_npz).group(1) == FID_LINE.search(from_folders).group(1)
    # Two statistics files need no network, and no weights.
    fid_command(capsys, folder_b, tmp_path / "b.npz", "--save-stats", *common)
    status, npz_only, err = fid_command(capsys, tmp_path / "a.npz", tmp_path / "b.npz")
    assert status == 0, err
    assert float(FID_LINE.search(npz_only).group(1)) == pytest.approx(
        float(FID_LINE.search(from_folders).group(1)), rel=1e-12)


def test_the_command_explains_a_missing_checkpoint_and_an_empty_folder(tmp_path, capsys, monkeypatch):
    folder_a, _ = image_folders(24)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    status, _, err = fid_command(capsys, folder_a, folder_a, "--device", "cpu", "--backend", "eager")
    assert status == 1
    assert "does not download" in err and CHECKPOINT_FILENAME in err and "Traceback" not in err
    status, _, err = fid_command(capsys, folder_a, tmp_path / "empty", "--device", "cpu", "--backend",
                                 "eager", "--weights", checkpoint_path(), "--dims", "64")
    assert status == 1 and "no images in" in err, err
    if not torch.cuda.is_available():
        status, _, err = fid_command(capsys, folder_a, folder_a, "--device", "cuda")
        assert status == 2 and "CUDA is not available" in err


def test_npz_statistics_of_a_different_dims_are_refused(tmp_path):
    np.savez(tmp_path / "a.npz", mu=np.zeros(64), sigma=np.eye(64))
    np.savez(tmp_path / "b.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="different sizes"):
        compute_fid(tmp_path / "a.npz", tmp_path / "b.npz")
