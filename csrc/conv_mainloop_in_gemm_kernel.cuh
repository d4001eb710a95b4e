// A CUTLASS sm90 conv mainloop collective (im2col TMA producer, WGMMA consumer) in the shape
// CUTLASS's sm90 GEMM kernels call a mainloop: conv_fprop.cuh runs it inside the persistent
// ping-pong GEMM kernel, which CUTLASS 4.2 does not offer for convolutions. Included after the
// CUTLASS conv headers.
#pragma once

namespace inception_fast {
namespace conv_fprop {

// A conv mainloop collective as the GEMM kernel calls it: its host-side arguments carry the conv
// problem (the GEMM kernel passes only the linearized shape, from which the im2col tensor maps
// cannot be made).
template <class ConvCollective>
struct ConvMainloopInGemmKernel : ConvCollective {
  using ConvProblem = typename ConvCollective::ProblemShape;
  using Params = typename ConvCollective::Params;
  // One elected thread of the producer warp issues each stage's TMA loads.
  static constexpr int NumProducerThreadEvents = 1;
  // The GEMM kernel only checks that these are rank 3 ([M, K, L], [N, K, L]); the collective's
  // own im2col strides stay inside it.
  using StrideA = cute::Stride<int64_t, cute::Int<1>, int64_t>;
  using StrideB = cute::Stride<int64_t, cute::Int<1>, int64_t>;
  struct Arguments {
    typename ConvCollective::Arguments conv;
    ConvProblem problem;
  };

  template <class ProblemShapeMNKL>
  static Params to_underlying_arguments(ProblemShapeMNKL const&, Arguments const& args, void* workspace) {
    return ConvCollective::to_underlying_arguments(args.problem, args.conv, workspace);
  }

  template <class ProblemShapeMNKL>
  static bool can_implement(ProblemShapeMNKL const&, Arguments const& args) {
    return ConvCollective::can_implement(args.problem, args.conv);
  }

  // The GEMM kernel reads only the shapes of the first two tiled tensors, with a batch mode (L,
  // mode 4): coordinate tensors of the collective's (BLK, BLK_K, m|n, k) tile shapes with a
  // trivial L appended; then the collective's own tiles, which `load` hands back to it.
  template <class ProblemShapeMNKL>
  CUTLASS_DEVICE auto load_init(ProblemShapeMNKL const& problem_shape_mnkl, Params const& params) {
    const auto tiles = ConvCollective::load_init(problem_shape_mnkl, params);
    const auto with_batch = [](auto const& tensor) {
      return cute::make_identity_tensor(cute::append(tensor.shape(), cute::_1{}));
    };
    return cute::make_tuple(with_batch(cute::get<0>(tiles)), with_batch(cute::get<1>(tiles)), cute::get<0>(tiles),
                            cute::get<1>(tiles));
  }

  template <class LoadInputs, class... Rest>
  CUTLASS_DEVICE void load(Params const& params, typename ConvCollective::MainloopPipeline pipeline,
                           typename ConvCollective::PipelineState state, LoadInputs const& inputs, Rest&&... rest) {
    ConvCollective::load(params, pipeline, state, cute::make_tuple(cute::get<2>(inputs), cute::get<3>(inputs)),
                         static_cast<Rest&&>(rest)...);
  }
};

}  // namespace conv_fprop
}  // namespace inception_fast
