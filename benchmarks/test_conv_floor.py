"""The library floor of each network: every conv alone in cuDNN (`F.conv2d`, `cudnn.benchmark`,
the run dtype, channels_last, the shapes the network really runs), summed per block and in all.
One row for the whole network (`config_id: floor`, beside the whole-model rows) and one row per
block (`suite: conv-floor`)."""

from __future__ import annotations

import math

import pytest

from inception_fast import bench


def test_conv_floor(results, model_benches, model_name, batch, dtype_name):
    model = model_benches.get(model_name, dtype_name)
    reason = model.skip_reason(bench.FLOOR_ID, batch)
    if reason:
        pytest.skip(reason)
    rows = model.floor_rows(model.config(bench.FLOOR_ID), batch)
    for row in rows:
        results.add(row)
    total, blocks = rows[0], rows[1:]
    print(f"{model_name} batch {batch} {dtype_name}: {total['config']} {total['median_ms']:.3f} ms "
          f"over {total['convs']} convs ({total['distinct_shapes']} shapes) in {len(blocks)} blocks")
    assert blocks and all(math.isfinite(b["median_ms"]) and b["median_ms"] > 0 for b in blocks)
    assert total["convs"] == sum(1 for call in model.calls if call.kind == "conv")
