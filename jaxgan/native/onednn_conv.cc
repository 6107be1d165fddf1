// oneDNN 2-D convolutions as XLA:CPU FFI custom calls (float32 or bfloat16, NHWC activations, HWIO kernels).
//
// One strided, padded convolution  y[n, i, o] = sum_{k, c} xpad[n, s*i + k, c] w[k, c, o]  and its two
// adjoints; every convolution pass of jaxgan.models.layers (Conv and ConvTranspose, forward, input gradient,
// weight gradient) is one of these three (see jaxgan/models/onednn.py):
//   JaxganOnednnConvFwd          (x [N,H,W,C], w [kh,kw,C,O])   -> y  [N,Ho,Wo,O]
//   JaxganOnednnConvBwdData      (g [N,Ho,Wo,O], w [kh,kw,C,O]) -> dx [N,H,W,C]   (shape from the result)
//   JaxganOnednnConvBwdWeights   (x [N,H,W,C], g [N,Ho,Wo,O])   -> dw [kh,kw,C,O] (shape from the result)
// Attributes: strides = [sh, sw], padding = [lo_h, hi_h, lo_w, hi_w] (lax.conv_general_dilated's pads),
// threads = the OpenMP threads of the calling thread's oneDNN calls (0: leave as is; jaxgan always sets it, since
// the count is a setting of the calling thread, which XLA reuses across programs). XLA runs each simulated CPU
// device's program on its own thread; giving each its share of the cores keeps N devices from running N teams
// of all-core threads that spin against each other (the OpenMP thread count is a per-thread setting).
// Leading dimensions before the last four are a batch (jax.vmap; see RunBatched), one convolution per index:
// groups = 0 runs them one after another on the calling thread's team, groups = -1 side by side (a convolution
// per thread, planned for one thread). groups = G > 0 instead runs G independent convolutions as one grouped
// oneDNN convolution (RunGrouped): the activations come with the G convolutions' channels side by side,
// x [N,H,W,G*C] and y [N,Ho,Wo,G*O], and the kernels as w [G,kh,kw,C,O] (the caller transposes [G,N,H,W,C]
// activations into that layout).
// Dtypes: the two operands and the result are all float32 or all bfloat16. In bfloat16 oneDNN accumulates in
// float32; the weight gradient is computed in float32 and rounded once into the bfloat16 result.
// Primitives are built once per shape and cached; oneDNN chooses the kernel's weight layout ("any") and
// the HWIO weights are reordered into it (weights are small next to activations, which stay NHWC).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum Pass { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

struct Geometry {
  memory::data_type dt;  // of operands and result: f32 or bf16
  memory::dim n, c, h, w, o, kh, kw, ho, wo;  // c, o: channels per group
  memory::dims strides, pad_l, pad_r;
  memory::dim groups = 1;
  memory::desc Src(memory::data_type t) const { return memory::desc({n, groups * c, h, w}, t, tag::nhwc); }
  memory::desc Dst(memory::data_type t) const { return memory::desc({n, groups * o, ho, wo}, t, tag::nhwc); }
  // HWIO, or GHWIO ([G,kh,kw,C,O]) for groups > 1; tag::any lets the primitive choose
  memory::desc Weights(memory::data_type t, bool any) const {
    if (groups > 1) return memory::desc({groups, o, c, kh, kw}, t, any ? tag::any : tag::ghwio);
    return memory::desc({o, c, kh, kw}, t, any ? tag::any : tag::hwio);
  }
};

struct Plan {
  dnnl::primitive prim;
  memory::desc src, weights, dst;  // the primitive's descriptors (weights maybe blocked)
  memory::desc user_weights;       // HWIO
  memory::desc scratchpad;         // per execution (user mode): concurrent calls never share one
  bool reorder = false;
  dnnl::reorder weights_reorder;   // user -> primitive (fwd, bwd data) or primitive -> user (bwd weights)
  bool widen = false;              // bf16 bwd weights: src and dst are widened to the primitive's f32 ones
  memory::desc user_src, user_dst;
  dnnl::reorder src_widen, dst_widen;
};

std::string Key(Pass pass, const Geometry& g) {
  // A primitive is built for the thread count it runs with (its scratchpad and work split depend on it).
  std::string key = std::to_string(pass) + "," + std::to_string(static_cast<int>(g.dt)) + "," +
                    std::to_string(omp_get_max_threads());
  for (memory::dim d : {g.n, g.c, g.h, g.w, g.o, g.kh, g.kw, g.ho, g.wo, g.strides[0], g.strides[1],
                        g.pad_l[0], g.pad_l[1], g.pad_r[0], g.pad_r[1], g.groups}) {
    key += "," + std::to_string(d);
  }
  return key;
}

// bfloat16 weight gradient: x and dy are widened to float32 (exact) and the float32 kernel computes dw, rounded
// once into the bfloat16 result (the weights reorder). oneDNN 3.2's bfloat16 weight-gradient kernel (AMX
// brgconv_bwd_w) is faster alone, but its threads wait for each other often: on a busy 2-core machine it ran
// 10-500x slower than on one thread and made the DCGAN step slower than in float32 (64x64x3: 0.19 steps/s,
// against 0.51-0.58 widened and 0.27-0.34 in float32).
void Widen(Plan* plan, const Geometry& g) {
  auto& eng = Engine();
  plan->widen = true;
  plan->user_src = plan->src;
  plan->user_dst = plan->dst;
  plan->src = g.Src(memory::data_type::f32);
  plan->dst = g.Dst(memory::data_type::f32);
  plan->src_widen = dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->user_src, eng, plan->src));
  plan->dst_widen = dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->user_dst, eng, plan->dst));
}

std::shared_ptr<Plan> MakePlan(Pass pass, const Geometry& g) {
  memory::desc src = g.Src(g.dt), dst = g.Dst(g.dt);
  memory::desc user_w = g.Weights(g.dt, false), any_w = g.Weights(g.dt, true);
  auto& eng = Engine();
  auto algo = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc fwd(eng, dnnl::prop_kind::forward_training, algo, src, any_w,
                                                dst, g.strides, g.pad_l, g.pad_r, attr);
  auto plan = std::make_shared<Plan>();
  plan->user_weights = user_w;
  plan->src = src;
  plan->dst = dst;
  if (pass == kFwd) {
    plan->prim = dnnl::convolution_forward(fwd);
    plan->weights = fwd.weights_desc();
    plan->scratchpad = fwd.scratchpad_desc();
  } else if (pass == kBwdData) {
    dnnl::convolution_backward_data::primitive_desc bwd(eng, algo, src, any_w, dst, g.strides, g.pad_l,
                                                        g.pad_r, fwd, attr);
    plan->prim = dnnl::convolution_backward_data(bwd);
    plan->weights = bwd.weights_desc();
    plan->scratchpad = bwd.scratchpad_desc();
  } else {
    if (g.dt == memory::data_type::bf16) Widen(plan.get(), g);
    memory::desc any_dw = g.Weights(memory::data_type::f32, true);
    dnnl::convolution_forward::primitive_desc hint(eng, dnnl::prop_kind::forward_training, algo, plan->src,
                                                   any_dw, plan->dst, g.strides, g.pad_l, g.pad_r, attr);
    dnnl::convolution_backward_weights::primitive_desc bwd(eng, algo, plan->src, any_dw, plan->dst, g.strides,
                                                           g.pad_l, g.pad_r, hint, attr);
    plan->prim = dnnl::convolution_backward_weights(bwd);
    plan->weights = bwd.diff_weights_desc();
    plan->scratchpad = bwd.scratchpad_desc();
  }
  plan->reorder = plan->weights != user_w;
  if (plan->reorder) {
    plan->weights_reorder = pass == kBwdWeights
                                ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->weights, eng, user_w))
                                : dnnl::reorder(dnnl::reorder::primitive_desc(eng, user_w, eng, plan->weights));
  }
  return plan;
}

std::shared_ptr<Plan> GetPlan(Pass pass, const Geometry& g) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<std::string, std::shared_ptr<Plan>>();
  std::string key = Key(pass, g);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  auto plan = MakePlan(pass, g);
  (*cache)[key] = plan;
  return plan;
}

ffi::Error Run(Pass pass, const std::shared_ptr<Plan>& plan, void* src, void* weights, void* dst) {
  try {
    auto& eng = Engine();
    dnnl::stream stream(eng);
    memory src_m, dst_m;
    if (plan->widen) {  // float32 copies of the bfloat16 operands
      memory user_src(plan->user_src, eng, src), user_dst(plan->user_dst, eng, dst);
      src_m = memory(plan->src, eng);
      dst_m = memory(plan->dst, eng);
      plan->src_widen.execute(stream, user_src, src_m);
      plan->dst_widen.execute(stream, user_dst, dst_m);
    } else {
      src_m = memory(plan->src, eng, src);
      dst_m = memory(plan->dst, eng, dst);
    }
    memory user_w(plan->user_weights, eng, weights);
    memory prim_w = plan->reorder ? memory(plan->weights, eng) : user_w;
    memory scratch(plan->scratchpad, eng);
    if (plan->reorder && pass != kBwdWeights) plan->weights_reorder.execute(stream, user_w, prim_w);
    if (pass == kFwd) {
      plan->prim.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, prim_w}, {DNNL_ARG_DST, dst_m},
                                  {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (pass == kBwdData) {
      plan->prim.execute(stream, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, prim_w},
                                  {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      plan->prim.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, prim_w},
                                  {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (plan->reorder) plan->weights_reorder.execute(stream, prim_w, user_w);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

// One operand: its data, its last four dimensions, and its leading (vmap) dimensions, which are either the
// call's batch dimensions or 1 (jax.ffi_call's vmap_method="expand_dims": broadcast along that dimension).
struct Operand {
  char* data;
  ffi::Span<const int64_t> dims;
  ffi::DataType dtype;
  int64_t Lead() const { return static_cast<int64_t>(dims.size()) - 4; }
  int64_t ElementBytes() const {
    const int64_t* d = Last4();
    return static_cast<int64_t>(ffi::ByteWidth(dtype)) * d[0] * d[1] * d[2] * d[3];
  }
  const int64_t* Last4() const { return &*dims.begin() + dims.size() - 4; }
};

// The geometry of `groups` convolutions x [N,H,W,groups*C], w [kh,kw,C,O], y [N,Ho,Wo,groups*O] (the last four
// dimensions of each operand), after checking dtypes and shapes; `what` names the call in errors.
ffi::Error GeometryOf(const Operand& xs, const Operand& ws, const Operand& ys, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding, int64_t groups, const char* what, Geometry* g) {
  if (xs.dtype != ws.dtype || xs.dtype != ys.dtype ||
      (xs.dtype != ffi::DataType::F32 && xs.dtype != ffi::DataType::BF16)) {
    return ffi::Error::InvalidArgument(std::string(what) + ": operands and result must be all float32 or all "
                                       "bfloat16");
  }
  auto dt = xs.dtype == ffi::DataType::F32 ? memory::data_type::f32 : memory::data_type::bf16;
  const int64_t *x = xs.Last4(), *w = ws.Last4(), *y = ys.Last4();
  *g = Geometry{dt, x[0], w[2], x[1], x[2], w[3], w[0], w[1], y[1], y[2],
                {strides[0], strides[1]}, {padding[0], padding[2]}, {padding[1], padding[3]}, groups};
  if (x[3] != groups * g->c || y[3] != groups * g->o || y[0] != g->n) {
    return ffi::Error::InvalidArgument(std::string(what) + ": inconsistent shapes");
  }
  return ffi::Error::Success();
}

ffi::Error MakeOrGetPlan(Pass pass, const Geometry& g, int64_t threads, std::shared_ptr<Plan>* plan) {
  if (threads > 0 && omp_get_max_threads() != threads) omp_set_num_threads(static_cast<int>(threads));
  try {
    *plan = GetPlan(pass, g);
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

// Runs `pass` once per index of the leading dimensions. The three operands are (x side, kernel, y side)
// in the kernel's roles: (src, weights, dst) with the result among them.
ffi::Error RunBatched(Pass pass, Operand xs, Operand ws, Operand ys, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding, int64_t threads, bool concurrent) {
  if (xs.Lead() < 0 || xs.Lead() != ws.Lead() || xs.Lead() != ys.Lead() || strides.size() != 2 ||
      padding.size() != 4) {
    return ffi::Error::InvalidArgument("oneDNN convolution: expects NHWC activations, an HWIO kernel (with "
                                       "the same number of leading batch dimensions), 2 strides and 4 pads");
  }
  Geometry g;
  if (ffi::Error err = GeometryOf(xs, ws, ys, strides, padding, 1, "oneDNN convolution", &g); err.failure()) {
    return err;
  }
  std::shared_ptr<Plan> plan;
  if (ffi::Error err = MakeOrGetPlan(pass, g, threads, &plan); err.failure()) return err;
  int64_t lead = xs.Lead(), total = 1;
  std::vector<int64_t> batch(lead);
  for (int64_t d = 0; d < lead; ++d) {
    batch[d] = std::max({xs.dims[d], ws.dims[d], ys.dims[d]});
    total *= batch[d];
  }
  Operand* ops[3] = {&xs, &ws, &ys};
  auto pointers = [&](int64_t i, char** ptr) {
    std::vector<int64_t> index(lead);
    for (int64_t d = lead - 1, rest = i; d >= 0; --d) {  // i -> row-major index over the batch dimensions
      index[d] = rest % batch[d];
      rest /= batch[d];
    }
    for (int k = 0; k < 3; ++k) {  // the operand's own offset (a dimension of size 1 broadcasts)
      int64_t offset = 0;
      for (int64_t d = 0; d < lead; ++d) offset = offset * ops[k]->dims[d] + (ops[k]->dims[d] == 1 ? 0 : index[d]);
      ptr[k] = ops[k]->data + offset * ops[k]->ElementBytes();
    }
  };
  // concurrent: whole rounds of `team` indices run at once, one convolution per thread; the rest (fewer than
  // the threads) one after another on every thread, so that 3 runs on 2 cores do not take 2 rounds of one thread
  int team = static_cast<int>(std::min<int64_t>(total, omp_get_max_threads()));
  int64_t together = concurrent && team > 1 ? total / team * team : 0;
  for (int64_t i = together; i < total; ++i) {
    char* ptr[3];
    pointers(i, ptr);
    ffi::Error err = Run(pass, plan, ptr[0], ptr[1], ptr[2]);
    if (err.failure()) return err;
  }
  if (together == 0) return ffi::Error::Success();
  std::shared_ptr<Plan> single;
  int own = omp_get_max_threads();
  ffi::Error planned = MakeOrGetPlan(pass, g, 1, &single);  // planned on (and so for) one thread
  omp_set_num_threads(own);
  if (planned.failure()) return planned;
  std::vector<std::string> errors(together);  // one slot per index: the threads never share one
#pragma omp parallel for num_threads(team) schedule(static)
  for (int64_t i = 0; i < together; ++i) {
    char* ptr[3];
    pointers(i, ptr);
    ffi::Error err = Run(pass, single, ptr[0], ptr[1], ptr[2]);
    if (err.failure()) errors[i] = err.message();
  }
  for (const std::string& message : errors) {
    if (!message.empty()) return ffi::Error(ffi::ErrorCode::kInternal, message);
  }
  return ffi::Error::Success();
}

// `groups` independent convolutions as one grouped convolution: x [N,H,W,G*C], w [G,kh,kw,C,O],
// y [N,Ho,Wo,G*O] (the roles as in RunBatched).
ffi::Error RunGrouped(Pass pass, Operand xs, Operand ws, Operand ys, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding, int64_t threads, int64_t groups) {
  if (xs.dims.size() != 4 || ws.dims.size() != 5 || ys.dims.size() != 4 || strides.size() != 2 ||
      padding.size() != 4) {
    return ffi::Error::InvalidArgument("oneDNN grouped convolution: expects activations [N,H,W,G*C] and "
                                       "[N,Ho,Wo,G*O], kernels [G,kh,kw,C,O], 2 strides and 4 pads");
  }
  Geometry g;
  ffi::Error err = GeometryOf(xs, ws, ys, strides, padding, groups, "oneDNN grouped convolution", &g);
  if (err.failure()) return err;
  if (ws.dims[0] != groups) return ffi::Error::InvalidArgument("oneDNN grouped convolution: inconsistent shapes");
  std::shared_ptr<Plan> plan;
  if (ffi::Error err = MakeOrGetPlan(pass, g, threads, &plan); err.failure()) return err;
  return Run(pass, plan, xs.data, ws.data, ys.data);
}

ffi::Error Dispatch(Pass pass, Operand xs, Operand ws, Operand ys, ffi::Span<const int64_t> strides,
                    ffi::Span<const int64_t> padding, int64_t threads, int64_t groups) {
  if (groups > 0) return RunGrouped(pass, xs, ws, ys, strides, padding, threads, groups);
  return RunBatched(pass, xs, ws, ys, strides, padding, threads, groups < 0);
}

Operand Of(ffi::AnyBuffer& b) { return {static_cast<char*>(b.untyped_data()), b.dimensions(), b.element_type()}; }
Operand Of(ffi::Result<ffi::AnyBuffer>& b) {
  return {static_cast<char*>(b->untyped_data()), b->dimensions(), b->element_type()};
}

ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding, int64_t threads,
                   int64_t groups) {
  return Dispatch(kFwd, Of(x), Of(w), Of(y), strides, padding, threads, groups);
}

ffi::Error ConvBwdData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding, int64_t threads,
                       int64_t groups) {
  return Dispatch(kBwdData, Of(dx), Of(w), Of(dy), strides, padding, threads, groups);
}

ffi::Error ConvBwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding, int64_t threads,
                          int64_t groups) {
  return Dispatch(kBwdWeights, Of(x), Of(dw), Of(dy), strides, padding, threads, groups);
}

// The three handlers' signature: two operands and a result (all float32 or all bfloat16; checked in
// RunBatched), the strides, pads, threads and groups (0, -1: RunBatched; > 0: RunGrouped).
auto Binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attr<ffi::Span<const int64_t>>("strides")
      .Attr<ffi::Span<const int64_t>>("padding")
      .Attr<int64_t>("threads")
      .Attr<int64_t>("groups");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxganOnednnConvFwd, ConvFwd, Binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxganOnednnConvBwdData, ConvBwdData, Binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxganOnednnConvBwdWeights, ConvBwdWeights, Binding());
