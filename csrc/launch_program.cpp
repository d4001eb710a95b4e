// `torch.classes.inception_fast.LaunchProgram`: a block's launches at one input shape, issued in
// one call. The Python side (inception_fast/backends/launch_program.py) records them once, from
// a call of the block that ran them one by one: the CUTLASS ops' launches (rows of the GEMM and
// k x k conv ops) and the Triton stage kernel's (its compiled function, grid and parameters).
// `run(input, work, output)` issues them in that order on the current stream; `call(input)`
// allocates the work and output buffers as the recorded call had them first, and returns the
// output.
//
// Why: at small batches a call without a CUDA graph is bound by the host. Each CUTLASS launch
// otherwise pays an op dispatch, the argument checks and the encoding of its TMA descriptors,
// each Triton launch Triton's Python launcher. Here a CUTLASS launch is prepared once and issued
// again while its buffers keep their addresses (the caching allocator hands a block's buffers
// back at the same addresses call after call); a Triton launch is its parameters with the
// buffers' addresses filled in, through the driver's cuLaunchKernelEx as Triton's own launcher
// does it.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda.h>
#include <cuda_runtime.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "check_text.h"
#include "cutlass_ops.h"
#include "programmatic_launch.h"

namespace inception_fast {
namespace {

// How a Triton parameter's value is given (the Python side's PARAM_* constants): the address of
// buffer 0, 1 or 2 (input, work, output) of each call, or a value fixed when recorded: an
// address (a tensor the program keeps alive), a 32- or 64-bit integer, a float's 32 bits.
enum ParamKind : int64_t { kParamBuffer = 0, kParamAddress = 1, kParamInt32 = 2, kParamInt64 = 3, kParamFloat32 = 4 };
constexpr size_t kMaxTritonParams = 64;

using LaunchKernelEx = CUresult (*)(const CUlaunchConfig*, CUfunction, void**, void**);

// The driver's cuLaunchKernelEx, through the runtime (the extension does not link libcuda).
LaunchKernelEx driver_launch_kernel_ex() {
  static const LaunchKernelEx function = [] {
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult status{};
#if CUDART_VERSION >= 12050
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuLaunchKernelEx", &entry, 12000, cudaEnableDefault,
                                                             &status);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuLaunchKernelEx", &entry, cudaEnableDefault, &status);
#endif
    return err == cudaSuccess && status == cudaDriverEntryPointSuccess ? reinterpret_cast<LaunchKernelEx>(entry)
                                                                         : nullptr;
  }();
  return function;
}

struct CutlassRow {
  bool conv = false;  // the k x k conv op, else the GEMM op
  int64_t src = 0, dst = 0;
  at::Tensor weight, bias;
  int64_t in_c0 = 0, out_c0 = 0, stride = 1, pad_h = 0, pad_w = 0, tile_n = 0, tile_m = 0, split_k = 0;
  bool relu = false, tf32 = false;
  // The launch prepared for the buffers at these addresses (nullptr: not yet prepared), on this
  // stream (a split-K conv uses its stream's workspace).
  const void* src_at = nullptr;
  const void* dst_at = nullptr;
  cudaStream_t stream_at = nullptr;
  bool empty = false;  // nothing to launch (no pixels)
  PreparedLaunch prepared;
};

struct TritonRow {
  CUfunction function = nullptr;
  unsigned grid[3] = {1, 1, 1};
  unsigned threads = 0;
  unsigned shared_bytes = 0;
  bool pdl = false;
  std::vector<int64_t> kinds;
  std::vector<int64_t> values;
  std::vector<at::Tensor> keep;  // the tensors whose addresses are fixed parameters
};

class LaunchProgram : public torch::CustomClassHolder {
 public:
  // A GEMM launch is the 1x1 conv case of a conv row: its column offset is out_c0.
  void add_gemm(int64_t src, int64_t dst, at::Tensor weight, at::Tensor bias, int64_t col_offset, bool relu,
                int64_t tile_n, bool tf32, int64_t tile_m, int64_t split_k) {
    add_cutlass(false, src, dst, std::move(weight), std::move(bias), 0, col_offset, 1, 0, 0, relu, tile_n, tf32,
                tile_m, split_k);
  }

  void add_conv(int64_t src, int64_t dst, at::Tensor weight, at::Tensor bias, int64_t in_c0, int64_t out_c0,
                int64_t stride, int64_t pad_h, int64_t pad_w, bool relu, int64_t tile_n, bool tf32, int64_t tile_m,
                int64_t split_k) {
    add_cutlass(true, src, dst, std::move(weight), std::move(bias), in_c0, out_c0, stride, pad_h, pad_w, relu, tile_n,
                tf32, tile_m, split_k);
  }

  // `function`: the CUfunction of a loaded Triton kernel; `grid`: three sizes; `kinds` and
  // `values`: its parameters in order (ParamKind), without the two scratch pointers Triton
  // appends (passed null: the Python side records no kernel that uses them).
  void add_triton(int64_t function, std::vector<int64_t> grid, int64_t threads, int64_t shared_bytes, bool pdl,
                  std::vector<int64_t> kinds, std::vector<int64_t> values, std::vector<at::Tensor> keep) {
    OP_CHECK(function != 0 && grid.size() == 3 && threads > 0 && shared_bytes >= 0,
             "LaunchProgram.add_triton: needs a loaded function, a grid of 3 sizes and a positive thread count");
    OP_CHECK(kinds.size() == values.size() && kinds.size() <= kMaxTritonParams, "LaunchProgram.add_triton: ",
             kinds.size(), " kinds and ", values.size(), " values; one each per parameter, at most ",
             kMaxTritonParams);
    for (size_t i = 0; i < kinds.size(); ++i) {
      OP_CHECK(kinds[i] >= kParamBuffer && kinds[i] <= kParamFloat32, "LaunchProgram.add_triton: parameter ", i,
               " is of kind ", kinds[i], "; kinds are 0 (a buffer) to 4 (a float)");
      if (kinds[i] == kParamBuffer) checked_buffer(values[i], "passes");
    }
    TritonRow row;
    row.function = reinterpret_cast<CUfunction>(static_cast<uintptr_t>(function));
    for (int d = 0; d < 3; ++d) {
      OP_CHECK(grid[d] >= 0 && grid[d] < (int64_t{1} << 31), "LaunchProgram.add_triton: grid size ", grid[d]);
      row.grid[d] = static_cast<unsigned>(grid[d]);
    }
    row.threads = static_cast<unsigned>(threads);
    row.shared_bytes = static_cast<unsigned>(shared_bytes);
    row.pdl = pdl;
    row.kinds = std::move(kinds);
    row.values = std::move(values);
    row.keep = std::move(keep);
    order_.emplace_back(true, triton_.size());
    triton_.push_back(std::move(row));
  }

  int64_t size() const { return static_cast<int64_t>(order_.size()); }

  // The buffers `call` makes: an output like `output` and a work buffer like `work` (empty,
  // channels_last), or, where `fresh_work` is false, `work` itself (a block without
  // intermediates passes a stand-in that is never read or written).
  void set_buffers(const at::Tensor& work, const at::Tensor& output, bool fresh_work) {
    output_sizes_ = output.sizes().vec();
    work_sizes_ = work.sizes().vec();
    fresh_work_ = fresh_work;
    work_standin_ = fresh_work ? at::Tensor() : work;
  }

  at::Tensor call(const at::Tensor& input) {
    OP_CHECK(!output_sizes_.empty(), "LaunchProgram.call: set_buffers first");
    const auto options = input.options().memory_format(at::MemoryFormat::ChannelsLast);
    at::Tensor output = at::empty(output_sizes_, options);
    const at::Tensor work = fresh_work_ ? at::empty(work_sizes_, options) : work_standin_;
    run(input, work, output);
    return output;
  }

  // input, work, output: the block's buffers, NCHW-shaped and stored channels_last, shaped and
  // typed as in the call the program was recorded from (checked against the first run's).
  void run(const at::Tensor& input, const at::Tensor& work, const at::Tensor& output) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor* buffers[3] = {&input, &work, &output};
    check_shapes(buffers);
    const c10::cuda::CUDAGuard guard(input.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const bool pdl = programmatic_launch_enabled();
    const void* addresses[3] = {input.data_ptr(), work.data_ptr(), output.data_ptr()};
    for (const auto& [triton, index] : order_) {
      if (triton) {
        launch_triton(triton_[index], addresses, stream);
      } else {
        launch_cutlass(cutlass_[index], buffers, addresses, stream, pdl);
      }
    }
  }

 private:
  static int64_t checked_buffer(int64_t index, const char* what) {
    OP_CHECK(index >= 0 && index < 3, "LaunchProgram: a launch ", what, " buffer ", index,
             "; the buffers are 0 (input), 1 (work) and 2 (output)");
    return index;
  }

  void add_cutlass(bool conv, int64_t src, int64_t dst, at::Tensor weight, at::Tensor bias, int64_t in_c0,
                   int64_t out_c0, int64_t stride, int64_t pad_h, int64_t pad_w, bool relu, int64_t tile_n, bool tf32,
                   int64_t tile_m, int64_t split_k) {
    CutlassRow row;
    row.conv = conv;
    row.src = checked_buffer(src, "reads");
    row.dst = checked_buffer(dst, "writes");
    OP_CHECK(row.dst != 0, "LaunchProgram: a CUTLASS launch writes the work (1) or output (2) buffer, not the input");
    row.weight = std::move(weight);
    row.bias = std::move(bias);
    row.in_c0 = in_c0;
    row.out_c0 = out_c0;
    row.stride = stride;
    row.pad_h = pad_h;
    row.pad_w = pad_w;
    row.relu = relu;
    row.tile_n = tile_n;
    row.tf32 = tf32;
    row.tile_m = tile_m;
    row.split_k = split_k;
    order_.emplace_back(false, cutlass_.size());
    cutlass_.push_back(std::move(row));
  }

  void check_shapes(const at::Tensor* const buffers[3]) {
    if (shapes_.empty()) {
      for (int b = 0; b < 3; ++b) {
        OP_CHECK(buffers[b]->is_cuda() && buffers[b]->dim() == 4, "LaunchProgram.run: buffer ", b,
                 " must be a 4-d CUDA tensor");
        shapes_.emplace_back(buffers[b]->sizes().vec());
        dtypes_.push_back(buffers[b]->scalar_type());
      }
      return;
    }
    for (int b = 0; b < 3; ++b) {
      OP_CHECK(buffers[b]->sizes().equals(shapes_[b]) && buffers[b]->scalar_type() == dtypes_[b] &&
                   buffers[b]->is_cuda(),
               "LaunchProgram.run: buffer ", b, " is ", buffers[b]->scalar_type(), " ", buffers[b]->sizes(),
               "; the program was made for ", dtypes_[b], " ", c10::IntArrayRef(shapes_[b]));
    }
  }

  static void launch_cutlass(CutlassRow& row, const at::Tensor* const buffers[3], const void* const addresses[3],
                             cudaStream_t stream, bool pdl) {
    if (row.src_at != addresses[row.src] || row.dst_at != addresses[row.dst] || row.stream_at != stream) {
      // NHWC views of the channels_last buffers, as the ops take them.
      const at::Tensor src = buffers[row.src]->permute({0, 2, 3, 1});
      const at::Tensor dst = buffers[row.dst]->permute({0, 2, 3, 1});
      const bool launches =
          row.conv ? prepare_conv(src, row.weight, row.bias, dst, row.in_c0, row.out_c0, row.stride, row.pad_h,
                                  row.pad_w, row.relu, row.tile_n, row.tf32, 0, row.tile_m, row.split_k, row.prepared)
                   : prepare_gemm(src, row.weight, row.bias, dst, row.out_c0, row.relu, row.tile_n, row.tf32, 0,
                                  row.tile_m, row.split_k, row.prepared);
      row.empty = !launches;
      row.src_at = addresses[row.src];
      row.dst_at = addresses[row.dst];
      row.stream_at = stream;
    }
    if (row.empty) return;
    const char* error = launch_prepared(row.prepared, stream, pdl);
    OP_CHECK(error == nullptr, "LaunchProgram.run: a CUTLASS launch failed: ", error);
  }

  static void launch_triton(const TritonRow& row, const void* const addresses[3], cudaStream_t stream) {
    if (uint64_t(row.grid[0]) * row.grid[1] * row.grid[2] == 0) return;  // Triton launches nothing either
    const LaunchKernelEx launch = driver_launch_kernel_ex();
    OP_CHECK(launch != nullptr, "LaunchProgram.run: the CUDA driver has no cuLaunchKernelEx (driver too old?)");
    // One 8-byte slot per parameter (4-byte values in its low bytes, as x86 stores them), then
    // Triton's global and profile scratch pointers, null.
    uint64_t slots[kMaxTritonParams + 2];
    void* params[kMaxTritonParams + 2];
    const size_t count = row.kinds.size();
    for (size_t i = 0; i < count; ++i) {
      slots[i] = row.kinds[i] == kParamBuffer ? reinterpret_cast<uintptr_t>(addresses[row.values[i]])
                                              : static_cast<uint64_t>(row.values[i]);
      params[i] = &slots[i];
    }
    for (size_t i = count; i < count + 2; ++i) {
      slots[i] = 0;
      params[i] = &slots[i];
    }
    CUlaunchAttribute attributes[1];
    CUlaunchConfig config = {};
    config.gridDimX = row.grid[0];
    config.gridDimY = row.grid[1];
    config.gridDimZ = row.grid[2];
    config.blockDimX = row.threads;
    config.blockDimY = 1;
    config.blockDimZ = 1;
    config.sharedMemBytes = row.shared_bytes;
    config.hStream = reinterpret_cast<CUstream>(stream);
    config.attrs = attributes;
    config.numAttrs = 0;
    if (row.pdl) {
      attributes[0].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
      attributes[0].value.programmaticStreamSerializationAllowed = 1;
      config.numAttrs = 1;
    }
    const CUresult result = launch(&config, row.function, params, nullptr);
    OP_CHECK(result == CUDA_SUCCESS, "LaunchProgram.run: a Triton launch failed (CUresult ", int(result), ")");
  }

  std::mutex mutex_;  // one run at a time: runs update the prepared launches
  std::vector<std::pair<bool, size_t>> order_;  // (a Triton launch, its index) in launch order
  std::vector<CutlassRow> cutlass_;
  std::vector<TritonRow> triton_;
  std::vector<std::vector<int64_t>> shapes_;  // each buffer's sizes at the first run
  std::vector<at::ScalarType> dtypes_;
  std::vector<int64_t> output_sizes_, work_sizes_;  // what `call` allocates
  bool fresh_work_ = true;
  at::Tensor work_standin_;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(inception_fast, m) {
  m.class_<LaunchProgram>("LaunchProgram")
      .def(torch::init<>())
      .def("add_gemm", &LaunchProgram::add_gemm)
      .def("add_conv", &LaunchProgram::add_conv)
      .def("add_triton", &LaunchProgram::add_triton)
      .def("size", &LaunchProgram::size)
      .def("set_buffers", &LaunchProgram::set_buffers)
      .def("run", &LaunchProgram::run)
      .def("call", &LaunchProgram::call);
}

}  // namespace inception_fast
