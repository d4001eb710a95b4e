"""`side_streams.run_side_by_side`: every launch runs once; on the CPU, while tracing and with
INCEPTION_FAST_SIDE_STREAMS=0 in order on the current stream; on a GPU on side streams that are
ordered after the current stream's earlier work and that it waits for, in plain calls and in a
CUDA graph."""

from __future__ import annotations

import pytest
import torch

from inception_fast import side_streams


def test_on_the_cpu_every_launch_runs_once_in_order():
    calls = []
    side_streams.run_side_by_side(torch.device("cpu"), [lambda i=i: calls.append(i) for i in range(4)])
    assert calls == [0, 1, 2, 3]


def test_a_wrong_setting_is_named(monkeypatch):
    monkeypatch.setenv(side_streams.ENV, "yes")
    with pytest.raises(ValueError, match="INCEPTION_FAST_SIDE_STREAMS='yes'"):
        side_streams.enabled()


def test_side_by_side_launches_share_the_sms_in_pairs_by_their_work(monkeypatch):
    monkeypatch.delenv(side_streams.ENV, raising=False)
    monkeypatch.delenv(side_streams.ENV_SHARES, raising=False)
    # Inception-v4's InceptionA stage 0: three GEMMs of 96, 128 and 96 columns over 384 channels.
    assert side_streams.sm_shares([96 * 384, 128 * 384, 96 * 384], 132) == [40, 52, 40]
    assert side_streams.sm_shares([3, 1], 132) == [100, 32]
    assert side_streams.sm_shares([1000, 1, 1, 1], 132) == [126, 2, 2, 2]  # a pair at least
    for work in ([5, 3, 2, 7, 1], [1, 1], [10, 1]):
        shares = side_streams.sm_shares(work, 132)
        assert sum(shares) <= 132 and all(s >= 2 and s % 2 == 0 for s in shares), (work, shares)
    assert side_streams.sm_shares([1], 132) == [0]  # alone: every SM
    assert side_streams.sm_shares([1] * 5, 8) == [0] * 5  # fewer pairs than launches: every SM each


@pytest.mark.parametrize(("env", "setting"), [("ENV", "0"), ("ENV_SHARES", "0")])
def test_without_side_streams_or_shares_every_launch_gets_every_sm(monkeypatch, env, setting):
    monkeypatch.setenv(getattr(side_streams, env), setting)
    assert side_streams.sm_shares([1, 2, 3], 132) == [0, 0, 0]


def test_a_wrong_share_setting_is_named(monkeypatch):
    monkeypatch.setenv(side_streams.ENV_SHARES, "yes")
    with pytest.raises(ValueError, match="INCEPTION_FAST_SM_SHARES='yes'"):
        side_streams.sm_shares([1, 2], 132)


def _slow_then_slices(a, b, out):
    """Launches that each read `a` after a slow producer wrote it and fill one slice of `out`."""
    def launch(k):
        return lambda: out[:, k].copy_((a @ b).sum(dim=1) + k)
    return [launch(k) for k in range(out.shape[1])]


@pytest.mark.cuda
@pytest.mark.parametrize("setting", ["1", "0"])
def test_on_a_gpu_the_launches_see_earlier_work_and_the_stream_waits_for_them(monkeypatch, setting):
    monkeypatch.setenv(side_streams.ENV, setting)
    device = torch.device("cuda")
    a = torch.zeros(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device, generator=torch.Generator(device).manual_seed(0))
    out = torch.full((2048, 5), float("nan"), device=device)
    torch.cuda.synchronize()
    a.normal_(generator=torch.Generator(device).manual_seed(1))  # queued on the current stream
    for _ in range(4):
        a.mul_(1.0)  # more queued work the side streams must wait for
    side_streams.run_side_by_side(device, _slow_then_slices(a, b, out))
    got = out.clone()  # on the current stream: after the join
    expected = torch.stack([(a @ b).sum(dim=1) + k for k in range(5)], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-2)


@pytest.mark.cuda
def test_in_a_cuda_graph_the_branches_replay_in_order():
    device = torch.device("cuda")
    a = torch.randn(1024, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    out = torch.zeros(1024, 4, device=device)
    launches = _slow_then_slices(a, b, out)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        side_streams.run_side_by_side(device, launches)  # warm-up outside the capture
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        a.add_(1.0)
        side_streams.run_side_by_side(device, launches)
        snapshot = out.clone()
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        expected = torch.stack([(a @ b).sum(dim=1) + k for k in range(4)], dim=1)
        torch.testing.assert_close(snapshot, expected, rtol=1e-3, atol=1e-1)
