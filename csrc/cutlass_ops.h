// The CUTLASS ops' launches, prepared with the ops' own argument checks (bindings.cpp): what
// cuda_gemm_conv1x1 and cuda_conv_fprop issue, for callers that issue a prepared launch again
// (launch_program.cpp). Each returns false for an empty problem (nothing to launch) and raises
// where the op would.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "prepared_launch.h"

namespace inception_fast {

// x [..., K] and out [..., C] NHWC-contiguous, weight [N, K]: out's channels [col_offset,
// col_offset + N) = act(x @ weight^T + bias). A split-K launch (of either op) uses the workspace
// of the current stream (split_k_workspace.h): issue it on that stream.
bool prepare_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                  int64_t col_offset, bool relu, int64_t tile_n, bool tf32, int64_t sm_limit, int64_t tile_m,
                  int64_t split_k, PreparedLaunch& prepared);

// x [N, H, W, Cx] and out [N, P, Q, Cout] NHWC-contiguous, weight [K, R, S, C]: reads x's
// channels [in_c0, in_c0 + C), writes out's [out_c0, out_c0 + K).
bool prepare_conv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                  int64_t in_c0, int64_t out_c0, int64_t stride, int64_t pad_h, int64_t pad_w, bool relu,
                  int64_t tile_n, bool tf32, int64_t sm_limit, int64_t tile_m, int64_t split_k,
                  PreparedLaunch& prepared);

}  // namespace inception_fast
