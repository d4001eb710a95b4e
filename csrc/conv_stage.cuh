// One launch executes every problem of a block stage: tensor-core implicit-GEMM convolutions
// (mma.sync m16n8k16, fp32 accumulation, cp.async multi-stage pipeline) and the pooling
// branches. Each CTA owns one tile of one problem; the epilogue adds the folded bias (and, on
// residual columns, the block input), applies ReLU per column and stores every column straight
// into its channel of the NHWC output or work buffer, so the concat of the branches never happens.
//
// Requirements checked by the host: channel offsets, channel counts and pixel strides are
// multiples of 8 (16-byte cp.async chunks), buffers are 16-byte aligned.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "stage_args.h"

namespace inception_fast {
namespace stage_kernel {

constexpr int kThreads = 256;  // 8 warps: 2 along M (64 rows each) x 4 along N (32 columns each)
constexpr int kTileM = kConvTileM;
constexpr int kTileN = kConvTileN;
constexpr int kTileK = 32;  // 4 chunks of 8 elements per smem row
constexpr int kPipeline = 4;
constexpr int kTileElems = kTileM * kTileK;
static_assert(kTileN * kTileK == kTileElems, "A and B tiles share one size");
constexpr int kSmemBytes = kPipeline * 2 * kTileElems * 2;
static_assert(kPoolTileItems == kThreads, "a pool CTA gives one item to each thread");

// 16-byte chunk `chunk` of smem row `row`. Rows are 64 bytes, so rows r and r+2 share banks;
// XOR-ing the chunk with bits 1-2 of the row spreads the 8 rows of every ldmatrix phase (and
// of every cp.async wave) over all 32 banks.
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * kTileK + ((chunk ^ ((row >> 1) & 3)) << 3);
}

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: zero-fill without reading global memory
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <typename T>
struct Element;

template <>
struct Element<__half> {
  using Pair = __half2;
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ Pair pair(float a, float b) { return __floats2half2_rn(a, b); }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Element<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ Pair pair(float a, float b) { return __floats2bfloat162_rn(a, b); }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Kernel parameters indexed with a runtime value would be copied to local memory; selecting
// with constant indices keeps them in the parameter bank.
__device__ __forceinline__ void* buffer(const StageArgs& args, int id) {
  return id == kInput ? args.buf[0] : (id == kWork ? args.buf[1] : args.buf[2]);
}
__device__ __forceinline__ int select3(const int (&v)[3], int id) {
  return id == kInput ? v[0] : (id == kWork ? v[1] : v[2]);
}

// The destination of one output column, decoded once per column.
struct Column {
  float bias;
  int channel;
  int flags;
};

__device__ __forceinline__ Column load_column(const StageArgs& args, int j) {
  return Column{args.bias[j], args.col_dst[j], args.col_flags[j]};
}

template <typename T>
__device__ __forceinline__ T* column_base(const StageArgs& args, const Column& col, int64_t pixel) {
  const bool to_output = col.flags & kFlagToOutput;
  T* base = static_cast<T*>(to_output ? args.buf[2] : args.buf[1]);
  const int stride = to_output ? args.buf_c[2] : args.buf_c[1];
  return base + pixel * stride + col.channel;
}

// ReLU that keeps NaN, as torch.relu does (fmaxf would turn a NaN into 0, and a NaN from
// `residual` below must show).
__device__ __forceinline__ float activate(float v, const Column& col) {
  return (col.flags & kFlagRelu) && v < 0.0f ? 0.0f : v;
}

// What a column adds after its bias: 0, or with kFlagResidual the block input at the output
// pixel, which is an input pixel because the problem keeps the input size. The host cannot see
// the device-side flags, so a problem that does not keep the size (or a channel past the input)
// gives NaN rather than a wrong value. The branch is uniform over a column, so stages without
// residual columns pay one flag test per column.
template <typename T>
__device__ __forceinline__ float residual(const StageArgs& args, const ProblemDesc& p, const Column& col,
                                          int64_t pixel) {
  if (!(col.flags & kFlagResidual)) return 0.0f;
  if (!p.keeps_size || col.channel >= args.buf_c[0]) return __int_as_float(0x7fc00000);  // NaN
  const T* input = static_cast<const T*>(args.buf[0]);
  return Element<T>::to_float(input[pixel * args.buf_c[0] + col.channel]);
}

template <typename T>
__device__ void conv_tile(const StageArgs& args, const ProblemDesc& p, int64_t tile, T* smem) {
  using E = Element<T>;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t m_tile = tile / p.n_tiles;
  const int n_tile = static_cast<int>(tile - m_tile * p.n_tiles);
  const int64_t m0 = m_tile * kTileM;
  const int n0 = n_tile * kTileN;

  const T* src = static_cast<const T*>(buffer(args, p.src_buf));
  const int src_c = select3(args.buf_c, p.src_buf);
  const int in_h = select3(args.buf_h, p.src_buf);
  const int in_w = select3(args.buf_w, p.src_buf);
  const T* weights = static_cast<const T*>(args.weights) + p.w_off;
  const int K = p.k;
  const int k_tiles = (K + kTileK - 1) / kTileK;

  // Loader: each thread copies chunk `ld_chunk` of rows ld_row and ld_row + 64 of both tiles.
  const int ld_chunk = tid & 3;
  const int ld_row = tid >> 2;
  const T* a_pixel[2];  // the image's first pixel, shifted to the problem's first channel
  int a_ih[2], a_iw[2];
  const T* b_row[2];
  bool b_valid[2];
  const int ohw = p.oh * p.ow;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t m = m0 + ld_row + i * 64;
    if (m < p.m) {
      const int64_t img = m / ohw;
      const int rem = static_cast<int>(m - img * ohw);
      const int oh = rem / p.ow;
      const int ow = rem - oh * p.ow;
      a_pixel[i] = src + img * in_h * in_w * static_cast<int64_t>(src_c) + p.src_c0;
      a_ih[i] = oh * p.stride - p.pad_h;
      a_iw[i] = ow * p.stride - p.pad_w;
    } else {
      a_pixel[i] = src;
      a_ih[i] = -(1 << 24);  // every tap falls outside the image: zero rows
      a_iw[i] = -(1 << 24);
    }
    const int n = n0 + ld_row + i * 64;
    b_valid[i] = n < p.cols;
    b_row[i] = weights + static_cast<int64_t>(b_valid[i] ? n : 0) * K;
  }

  auto load_stage = [&](int kt, int slot) {
    T* sa = smem + slot * 2 * kTileElems;
    T* sb = sa + kTileElems;
    const int k = kt * kTileK + ld_chunk * 8;
    const bool k_valid = k < K;
    // Row k of the OHWI weight is tap (kh * KW + kw), channel c: a chunk of 8 never straddles
    // two taps because CIN is a multiple of 8.
    const int tap = k / p.cin;
    const int c = k - tap * p.cin;
    const int dh = tap / p.kw;
    const int dw = tap - dh * p.kw;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int ih = a_ih[i] + dh;
      const int iw = a_iw[i] + dw;
      const bool ok = k_valid && static_cast<unsigned>(ih) < static_cast<unsigned>(in_h) &&
                      static_cast<unsigned>(iw) < static_cast<unsigned>(in_w);
      const T* g = ok ? a_pixel[i] + (static_cast<int64_t>(ih) * in_w + iw) * src_c + c : src;
      cp_async_16(sa + swizzled(ld_row + i * 64, ld_chunk), g, ok);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const bool ok = k_valid && b_valid[i];
      cp_async_16(sb + swizzled(ld_row + i * 64, ld_chunk), ok ? b_row[i] + k : weights, ok);
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

#pragma unroll
  for (int s = 0; s < kPipeline - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  const int warp_m = (warp >> 2) * 64;
  const int warp_n = (warp & 3) * 32;
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kPipeline - 2>();
    __syncthreads();  // tile kt is visible to all; every warp is done with the slot refilled below
    const int next = kt + kPipeline - 1;
    if (next < k_tiles) load_stage(next, next % kPipeline);
    cp_async_commit();

    const T* sa = smem + (kt % kPipeline) * 2 * kTileElems;
    const T* sb = sa + kTileElems;
#pragma unroll
    for (int ks = 0; ks < kTileK / 16; ++ks) {
      uint32_t a[4][4];
      uint32_t b[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        // lanes 0-15 address rows 0-15 at k 0-7, lanes 16-31 the same rows at k 8-15
        const int row = warp_m + mi * 16 + (lane & 15);
        ldmatrix_x4(a[mi], sa + swizzled(row, ks * 2 + (lane >> 4)));
      }
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        // matrices: (cols 0-7, k 0-7), (cols 0-7, k 8-15), (cols 8-15, k 0-7), (cols 8-15, k 8-15)
        const int row = warp_n + nj * 16 + ((lane >> 4) << 3) + (lane & 7);
        uint32_t r[4];
        ldmatrix_x4(r, sb + swizzled(row, ks * 2 + ((lane >> 3) & 1)));
        b[nj * 2][0] = r[0];
        b[nj * 2][1] = r[1];
        b[nj * 2 + 1][0] = r[2];
        b[nj * 2 + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) E::mma(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
  }
  cp_async_wait<0>();

  // Epilogue. Accumulator element e of (mi, ni) sits at row lane/4 (+8 for e >= 2) and
  // column 2 * (lane % 4) + (e & 1) of its 16x8 tile.
#pragma unroll
  for (int ni = 0; ni < 4; ++ni) {
    const int n = n0 + warp_n + ni * 8 + (lane & 3) * 2;
    if (n >= p.cols) continue;
    const bool has_second = n + 1 < p.cols;
    const Column c0 = load_column(args, p.col_off + n);
    const Column c1 = has_second ? load_column(args, p.col_off + n + 1) : c0;
    const bool paired = has_second && c1.flags == c0.flags && c1.channel == c0.channel + 1 &&
                        (c0.channel & 1) == 0;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t m = m0 + warp_m + mi * 16 + (lane >> 2) + half * 8;
        if (m >= p.m) continue;
        const float v0 = activate(acc[mi][ni][half * 2] + c0.bias + residual<T>(args, p, c0, m), c0);
        const float v1 = activate(acc[mi][ni][half * 2 + 1] + c1.bias + residual<T>(args, p, c1, m), c1);
        T* d0 = column_base<T>(args, c0, m);
        if (paired) {
          *reinterpret_cast<typename E::Pair*>(d0) = E::pair(v0, v1);
        } else {
          *d0 = E::from_float(v0);
          if (has_second) *column_base<T>(args, c1, m) = E::from_float(v1);
        }
      }
    }
  }
}

// Max pool, or relu(avgpool(z) + bias) with count_include_pad False (kAvgPool) or True
// (kAvgPoolIncludePad): one thread per output pixel and group of 8 channels, accumulated in
// fp32. Taps outside the input (padding, or past the end in ceil mode) read nothing.
template <typename T>
__device__ void pool_tile(const StageArgs& args, const ProblemDesc& p, int64_t tile) {
  using E = Element<T>;
  const int groups = p.cols / 8;
  const int64_t item = tile * kPoolTileItems + threadIdx.x;
  if (item >= p.m * groups) return;
  const int64_t m = item / groups;
  const int group = static_cast<int>(item - m * groups);
  const int ohw = p.oh * p.ow;
  const int64_t img = m / ohw;
  const int rem = static_cast<int>(m - img * ohw);
  const int oh = rem / p.ow;
  const int ow = rem - oh * p.ow;

  const T* src = static_cast<const T*>(buffer(args, p.src_buf));
  const int src_c = select3(args.buf_c, p.src_buf);
  const int in_h = select3(args.buf_h, p.src_buf);
  const int in_w = select3(args.buf_w, p.src_buf);
  const T* pixel0 = src + img * in_h * in_w * static_cast<int64_t>(src_c) + p.src_c0 + group * 8;

  const bool is_max = p.kind == kMaxPool;
  float acc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i] = is_max ? -INFINITY : 0.0f;
  int count = 0;
  for (int dh = 0; dh < p.kh; ++dh) {
    const int ih = oh * p.stride - p.pad_h + dh;
    if (ih < 0 || ih >= in_h) continue;
    for (int dw = 0; dw < p.kw; ++dw) {
      const int iw = ow * p.stride - p.pad_w + dw;
      if (iw < 0 || iw >= in_w) continue;
      const uint4 raw = *reinterpret_cast<const uint4*>(pixel0 + (static_cast<int64_t>(ih) * in_w + iw) * src_c);
      const T* v = reinterpret_cast<const T*>(&raw);
      ++count;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float x = E::to_float(v[i]);
        acc[i] = is_max ? fmaxf(acc[i], x) : acc[i] + x;
      }
    }
  }
  // count_include_pad: the padding taps count as zeros, so every window divides by kh * kw
  const int divisor = p.kind == kAvgPoolIncludePad ? p.kh * p.kw : (count > 0 ? count : 1);
  const float scale = is_max ? 1.0f : 1.0f / static_cast<float>(divisor);

  const int j0 = p.col_off + group * 8;
  const Column first = load_column(args, j0);
  bool contiguous = (first.channel & 7) == 0;
  T out[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const Column col = load_column(args, j0 + i);
    contiguous = contiguous && col.flags == first.flags && col.channel == first.channel + i;
    out[i] = E::from_float(activate(acc[i] * scale + col.bias + residual<T>(args, p, col, m), col));
  }
  if (contiguous) {
    *reinterpret_cast<uint4*>(column_base<T>(args, first, m)) = *reinterpret_cast<const uint4*>(out);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) *column_base<T>(args, load_column(args, j0 + i), m) = out[i];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2) conv_stage_kernel(const __grid_constant__ StageArgs args) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // Find this CTA's problem with constant indices only (see `buffer`).
  const int64_t cta = blockIdx.x;
  ProblemDesc p = args.problem[0];
#pragma unroll
  for (int i = 1; i < kMaxProblems; ++i) {
    if (i < args.num_problems && cta >= args.problem[i].tile_begin) p = args.problem[i];
  }
  const int64_t tile = cta - p.tile_begin;
  if (p.kind == kConv) {
    conv_tile<T>(args, p, tile, reinterpret_cast<T*>(smem_raw));
  } else {
    pool_tile<T>(args, p, tile);
  }
}

template <typename T>
cudaError_t launch(const StageArgs& args, cudaStream_t stream) {
  if (args.num_tiles <= 0) return cudaSuccess;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  // Above 48 KiB of dynamic shared memory needs an opt-in, once per device.
  static bool opted_in[64] = {};
  if (device >= 64 || !opted_in[device]) {
    err = cudaFuncSetAttribute(conv_stage_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    if (err != cudaSuccess) return err;
    if (device < 64) opted_in[device] = true;
  }
  conv_stage_kernel<T><<<static_cast<unsigned>(args.num_tiles), kThreads, kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace stage_kernel
}  // namespace inception_fast
