"""The routed Triton ops (`kernels/triton/ops.py`): eager calls on plain tensors launch the
kernel without the dispatcher (so a first inference does not import torch._dynamo), traced
calls go through the custom op, registered by the first trace that needs it (registering costs
about a second on the GPU machines' torch, which an eager process never pays). Without a GPU
the kernels run in Triton's interpreter, which must be chosen before triton is imported: one
fresh process runs the checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

SCRIPT = r"""
import json, sys, torch
from inception_fast.kernels.triton import ops
device = "cuda" if torch.cuda.is_available() else "cpu"
found = {}

def inputs():
    x = torch.randn(2, 3, 5, 5, device=device)
    out = torch.full((2, 8, 5, 5), float("nan"), device=device).to(memory_format=torch.channels_last)
    expected = torch.zeros(2, 8, 5, 5, device=device)
    expected[:, :3] = x
    return x, out, expected

x, out, expected = inputs()
ops.triton_to_nhwc_padded(x, out, False)
found["eager_equal"] = torch.equal(out, expected)
found["dynamo_after_eager_call"] = "torch._dynamo" in sys.modules
found["registered_after_eager_call"] = hasattr(torch.ops.inception_fast, "triton_to_nhwc_padded")

def padded_twice(x):
    out = torch.empty(2, 8, 5, 5, device=x.device).to(memory_format=torch.channels_last)
    ops.triton_to_nhwc_padded(x, out, False)
    return out * 2

graphs = []
def record(graph_module, example_inputs):
    graphs.append(str(graph_module.graph))
    return graph_module.forward

traced = torch.compile(padded_twice, backend=record, fullgraph=True)
found["traced_equal"] = torch.equal(traced(x), expected * 2)
found["op_in_traced_graph"] = "inception_fast.triton_to_nhwc_padded" in graphs[0]

out.fill_(float("nan"))
torch.ops.inception_fast.triton_to_nhwc_padded(x, out, False)  # registered by the trace
found["op_equal"] = torch.equal(out, expected)
ops.register_all()
found["all_registered"] = all(hasattr(torch.ops.inception_fast, name)
                              for name in ("triton_stage", "triton_tma_stage", "triton_block"))

from torch._subclasses.fake_tensor import FakeTensorMode
with FakeTensorMode():
    fake_x = torch.empty(2, 3, 5, 5, device=device)
    fake_out = torch.empty(2, 8, 5, 5, device=device).to(memory_format=torch.channels_last)
    ops.triton_to_nhwc_padded(fake_x, fake_out, False)  # the kernel itself would fail without storage
found["fake_ok"] = True
print("ROUTING " + json.dumps(found))
"""


@pytest.fixture(scope="module")
def found():
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ROUTING ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[0][len("ROUTING ") :])


def test_an_eager_call_launches_the_kernel_without_importing_dynamo(found):
    assert found["eager_equal"]
    assert not found["dynamo_after_eager_call"]
    assert not found["registered_after_eager_call"]


def test_the_custom_op_stays_registered_and_computes_the_same(found):
    assert found["op_equal"] and found["all_registered"]


def test_a_traced_call_goes_through_the_custom_op(found):
    assert found["traced_equal"] and found["op_in_traced_graph"]


def test_fake_tensors_reach_the_custom_op_not_the_kernel(found):
    assert found["fake_ok"]
