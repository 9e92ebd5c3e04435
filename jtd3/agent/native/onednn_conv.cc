// VALID 2-D convolutions and matrix products for XLA:CPU through oneDNN, called with the XLA FFI
// (jtd3/agent/onednn.py).
//
// Convolutions, three handlers, all on row-major XLA buffers (no copies of the activations):
//   jtd3_onednn_conv_fwd      x (B,H,W,C), w (kh,kw,C,O), bias (O)  -> y  (B,Ho,Wo,O) float32
//   jtd3_onednn_conv_bwd_data g (B,Ho,Wo,O), w (kh,kw,C,O)          -> dx (B,H,W,C)   float32
//   jtd3_onednn_conv_bwd_w    x (B,H,W,C), g (B,Ho,Wo,O)            -> dw (kh,kw,C,O), dbias (O) float32
// The bias (float32) is added inside the forward primitive and its gradient summed inside the weight-gradient
// one: no separate passes over the activations for either.
// Matrix products (the encoder's dense layer), on row-major XLA buffers, op() transposing when its flag is set:
//   jtd3_onednn_matmul        a, b, trans_a, trans_b                 -> c = op(a) @ op(b) float32
// Every handler multiplies in the dtype its `bf16` attribute names (0: float32, 1: bfloat16, on the AMX units
// where the CPU has them) and accumulates in float32. Each operand may be float32 or bfloat16: one that is not
// in that dtype is converted here, by a oneDNN reorder into a per-thread buffer (XLA's own converts ran beside
// oneDNN's threads in the update and took several times their time alone). Activations stay NHWC; the
// kernel is reordered (and converted) into oneDNN's blocked layout on every call (at most 37K values here).
// Primitives are created once per shape and dtype and cached: creating one JIT-compiles its kernel. Each
// calling thread brings its own scratchpad: oneDNN's library-managed one is shared between primitives, and XLA
// runs independent convolutions (an input gradient beside its weight gradient) at once on different threads,
// which then overwrote each other's temporaries (tests/test_onednn.py, the reproducibility test).
#include <dnnl.hpp>

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <memory>
#include <new>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One stream per calling thread: XLA may run two convolutions at once on different threads.
dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

struct Shape {
  int64_t b, h, w, c, o, kh, kw, stride, ho, wo;
  memory::data_type dt;
  std::string Key(const char* kind) const {
    std::ostringstream s;
    s << kind << ':' << b << ',' << h << ',' << w << ',' << c << ',' << o << ',' << kh << ',' << kw << ','
      << stride << ',' << static_cast<int>(dt);
    return s.str();
  }
  memory::desc Src(memory::data_type t) const { return memory::desc({b, c, h, w}, t, tag::nhwc); }
  memory::desc Dst(memory::data_type t) const { return memory::desc({b, o, ho, wo}, t, tag::nhwc); }
  memory::desc WeiUser(memory::data_type t) const { return memory::desc({o, c, kh, kw}, t, tag::hwio); }
  memory::desc WeiAny(memory::data_type t) const { return memory::desc({o, c, kh, kw}, t, tag::any); }
  memory::desc Bias() const { return memory::desc({o}, memory::data_type::f32, tag::a); }
  memory::dims Strides() const { return {stride, stride}; }
};

// Every primitive takes its scratchpad from the caller (Scratchpad below).
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// The forward primitive descriptor of a shape: the primitive itself and the hint of both backward ones.
dnnl::convolution_forward::primitive_desc FwdPd(const Shape& s) {
  dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                    s.Src(s.dt), s.WeiAny(s.dt), s.Bias(), s.Dst(memory::data_type::f32),
                                    s.Strides(), {0, 0}, {0, 0});
  return dnnl::convolution_forward::primitive_desc(d, UserScratchpad(), Engine());
}

struct Cached {
  dnnl::primitive prim;
  memory::desc wei;      // the blocked weights (forward, backward data) or weight gradient (backward weights)
  memory::desc scratch;  // the scratchpad one execution needs
};

// This thread's buffer number `slot` (0: the scratchpad, 1-2: converted operands), grown to the largest size
// asked for so far (kept: no page faults per call).
memory ThreadBuffer(int slot, const memory::desc& desc) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  struct Buffer {
    std::unique_ptr<void, Free> data;
    size_t capacity = 0;
  };
  thread_local Buffer buffers[3];
  Buffer& b = buffers[slot];
  size_t size = desc.get_size();
  if (size > b.capacity) {
    size_t rounded = (size + 4095) / 4096 * 4096;
    b.data.reset(std::aligned_alloc(4096, rounded));
    if (!b.data) throw std::bad_alloc();
    b.capacity = rounded;
  }
  return memory(desc, Engine(), size ? b.data.get() : nullptr);
}

memory Scratchpad(const memory::desc& desc) { return ThreadBuffer(0, desc); }

// Runs a cached primitive with this thread's scratchpad.
void Execute(const Cached& c, std::unordered_map<int, memory> args) {
  args.insert({DNNL_ARG_SCRATCHPAD, Scratchpad(c.scratch)});
  c.prim.execute(Stream(), args);
}

template <typename Make>
const Cached& Lookup(const std::string& key, Make make) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::unique_ptr<Cached>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, std::make_unique<Cached>(make())).first;
  return *it->second;
}

memory::data_type DnnlType(ffi::DataType t) {
  return t == ffi::DataType::BF16 ? memory::data_type::bf16 : memory::data_type::f32;
}

// Every operand must be float32 or bfloat16.
ffi::Error CheckTypes(std::initializer_list<ffi::DataType> types) {
  for (ffi::DataType t : types)
    if (t != ffi::DataType::F32 && t != ffi::DataType::BF16)
      return ffi::Error::InvalidArgument("onednn: operands must be float32 or bfloat16");
  return ffi::Error::Success();
}

memory::data_type ComputeType(int64_t bf16) { return bf16 ? memory::data_type::bf16 : memory::data_type::f32; }

// The shape of a convolution from its input's dimensions (B, H, W, C) and its kernel's (kh, kw, C, O).
ffi::Error MakeShape(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, int64_t stride, int64_t bf16,
                     Shape* s) {
  if (x.size() != 4 || w.size() != 4 || x[3] != w[2])
    return ffi::Error::InvalidArgument("onednn conv: expected x (B, H, W, C) and a kernel (kh, kw, C, O)");
  if (stride < 1 || x[1] < w[0] || x[2] < w[1])
    return ffi::Error::InvalidArgument("onednn conv: stride below 1 or kernel larger than the input");
  *s = Shape{x[0], x[1], x[2], x[3], w[3], w[0], w[1], stride, (x[1] - w[0]) / stride + 1,
             (x[2] - w[1]) / stride + 1, ComputeType(bf16)};
  return ffi::Error::Success();
}

// The cotangent (B, Ho, Wo, O) must match the output of the shape.
ffi::Error CheckOutput(ffi::Span<const int64_t> g, const Shape& s) {
  if (g.size() != 4 || g[0] != s.b || g[1] != s.ho || g[2] != s.wo || g[3] != s.o)
    return ffi::Error::InvalidArgument("onednn conv: the cotangent's shape is not the convolution's output");
  return ffi::Error::Success();
}

// oneDNN's errors and allocation failures become XLA errors (an exception must not cross the C interface).
ffi::Error Fail(const std::exception& e) { return ffi::Error::Internal(std::string("oneDNN conv: ") + e.what()); }

// Runs one handler's oneDNN work and waits for it; exceptions become the handler's error.
template <typename Body>
ffi::Error Guarded(Body body) {
  try {
    body();
    Stream().wait();
  } catch (const std::exception& e) {
    return Fail(e);
  }
  return ffi::Error::Success();
}

// An XLA buffer seen through a oneDNN descriptor (no copy).
memory Wrap(const memory::desc& desc, void* data) { return memory(desc, Engine(), data); }

void Reorder(memory& from, memory& to) {
  dnnl::reorder::primitive_desc pd(from, to, UserScratchpad());
  dnnl::reorder(pd).execute(
      Stream(), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}, {DNNL_ARG_SCRATCHPAD, Scratchpad(pd.scratchpad_desc())}});
}

// An operand as `want` describes it: the XLA buffer itself (described by `have`) when the dtypes agree, else a
// converted copy in this thread's buffer `slot`.
memory AsCompute(const memory::desc& have, const memory::desc& want, void* data, int slot) {
  memory from = Wrap(have, data);
  if (have.data_type() == want.data_type()) return from;
  memory to = ThreadBuffer(slot, want);
  Reorder(from, to);
  return to;
}

ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Buffer<ffi::F32> bias, ffi::Result<ffi::Buffer<ffi::F32>> y,
                   int64_t stride, int64_t bf16) {
  if (auto e = CheckTypes({x.element_type(), w.element_type()}); !e.success()) return e;
  Shape s;
  if (auto e = MakeShape(x.dimensions(), w.dimensions(), stride, bf16, &s); !e.success()) return e;
  if (bias.element_count() != static_cast<size_t>(s.o))
    return ffi::Error::InvalidArgument("onednn conv fwd: the bias must have one value per output channel");
  return Guarded([&] {
    const Cached& c = Lookup(s.Key("fwd"), [&] {
      auto pd = FwdPd(s);
      return Cached{dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc()};
    });
    memory src = AsCompute(s.Src(DnnlType(x.element_type())), s.Src(s.dt), x.untyped_data(), 1);
    memory wu = Wrap(s.WeiUser(DnnlType(w.element_type())), w.untyped_data());
    memory wb(c.wei, Engine());
    Reorder(wu, wb);
    memory dst = Wrap(s.Dst(memory::data_type::f32), y->untyped_data());
    Execute(c, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_BIAS, Wrap(s.Bias(), bias.untyped_data())},
                {DNNL_ARG_DST, dst}});
  });
}

ffi::Error ConvBwdData(ffi::AnyBuffer g, ffi::AnyBuffer w, ffi::Result<ffi::Buffer<ffi::F32>> dx, int64_t stride,
                       int64_t bf16) {
  if (auto e = CheckTypes({g.element_type(), w.element_type()}); !e.success()) return e;
  // The shape comes from the input side (dx): the output's size alone does not determine the input's.
  Shape s;
  if (auto e = MakeShape(dx->dimensions(), w.dimensions(), stride, bf16, &s); !e.success()) return e;
  if (auto e = CheckOutput(g.dimensions(), s); !e.success()) return e;
  return Guarded([&] {
    const Cached& c = Lookup(s.Key("bwd_data"), [&] {
      dnnl::convolution_backward_data::desc d(dnnl::algorithm::convolution_direct,
                                              s.Src(memory::data_type::f32), s.WeiAny(s.dt), s.Dst(s.dt),
                                              s.Strides(), {0, 0}, {0, 0});
      dnnl::convolution_backward_data::primitive_desc pd(d, UserScratchpad(), Engine(), FwdPd(s));
      return Cached{dnnl::convolution_backward_data(pd), pd.weights_desc(), pd.scratchpad_desc()};
    });
    memory diff_dst = AsCompute(s.Dst(DnnlType(g.element_type())), s.Dst(s.dt), g.untyped_data(), 1);
    memory wu = Wrap(s.WeiUser(DnnlType(w.element_type())), w.untyped_data());
    memory wb(c.wei, Engine());
    Reorder(wu, wb);
    memory diff_src = Wrap(s.Src(memory::data_type::f32), dx->untyped_data());
    Execute(c, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DIFF_SRC, diff_src}});
  });
}

ffi::Error ConvBwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer g, ffi::Result<ffi::Buffer<ffi::F32>> dw,
                          ffi::Result<ffi::Buffer<ffi::F32>> dbias, int64_t stride, int64_t bf16) {
  if (auto e = CheckTypes({x.element_type(), g.element_type()}); !e.success()) return e;
  Shape s;
  if (auto e = MakeShape(x.dimensions(), dw->dimensions(), stride, bf16, &s); !e.success()) return e;
  if (auto e = CheckOutput(g.dimensions(), s); !e.success()) return e;
  if (dbias->element_count() != static_cast<size_t>(s.o))
    return ffi::Error::InvalidArgument("onednn conv bwd weights: the bias gradient must have one value per channel");
  return Guarded([&] {
    const Cached& c = Lookup(s.Key("bwd_weights"), [&] {
      dnnl::convolution_backward_weights::desc d(dnnl::algorithm::convolution_direct, s.Src(s.dt),
                                                 s.WeiAny(memory::data_type::f32), s.Bias(), s.Dst(s.dt),
                                                 s.Strides(), {0, 0}, {0, 0});
      dnnl::convolution_backward_weights::primitive_desc pd(d, UserScratchpad(), Engine(), FwdPd(s));
      return Cached{dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(), pd.scratchpad_desc()};
    });
    memory src = AsCompute(s.Src(DnnlType(x.element_type())), s.Src(s.dt), x.untyped_data(), 1);
    memory diff_dst = AsCompute(s.Dst(DnnlType(g.element_type())), s.Dst(s.dt), g.untyped_data(), 2);
    memory wb(c.wei, Engine());
    Execute(c, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, wb},
                {DNNL_ARG_DIFF_BIAS, Wrap(s.Bias(), dbias->untyped_data())}});
    memory wu = Wrap(s.WeiUser(memory::data_type::f32), dw->untyped_data());
    Reorder(wb, wu);
  });
}

ffi::Error MatMul(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::Buffer<ffi::F32>> c, int64_t trans_a,
                  int64_t trans_b, int64_t bf16) {
  if (auto e = CheckTypes({a.element_type(), b.element_type()}); !e.success()) return e;
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2)
    return ffi::Error::InvalidArgument("onednn matmul: operands and result must be matrices");
  const int64_t m = trans_a ? ad[1] : ad[0], k = trans_a ? ad[0] : ad[1];
  const int64_t kb = trans_b ? bd[1] : bd[0], n = trans_b ? bd[0] : bd[1];
  if (k != kb || cd[0] != m || cd[1] != n)
    return ffi::Error::InvalidArgument("onednn matmul: op(a) (M, K), op(b) (K, N) and the result (M, N) disagree");
  const memory::data_type dt = ComputeType(bf16);
  // A transposed operand is the same buffer read column-major: the tag, not a copy.
  auto a_md = [&](memory::data_type t) { return memory::desc({m, k}, t, trans_a ? tag::ba : tag::ab); };
  auto b_md = [&](memory::data_type t) { return memory::desc({k, n}, t, trans_b ? tag::ba : tag::ab); };
  const memory::desc c_md({m, n}, memory::data_type::f32, tag::ab);
  return Guarded([&] {
    std::ostringstream key;
    key << "matmul:" << m << ',' << k << ',' << n << ',' << trans_a << ',' << trans_b << ',' << static_cast<int>(dt);
    const Cached& prim = Lookup(key.str(), [&] {
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md(dt), b_md(dt), c_md), UserScratchpad(), Engine());
      return Cached{dnnl::matmul(pd), memory::desc(), pd.scratchpad_desc()};
    });
    Execute(prim, {{DNNL_ARG_SRC, AsCompute(a_md(DnnlType(a.element_type())), a_md(dt), a.untyped_data(), 1)},
                   {DNNL_ARG_WEIGHTS, AsCompute(b_md(DnnlType(b.element_type())), b_md(dt), b.untyped_data(), 2)},
                   {DNNL_ARG_DST, Wrap(c_md, c->untyped_data())}});
  });
}

// Every handler's binding starts with its two operands (float32 or bfloat16).
auto TwoOperands() { return ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>(); }

// The convolutions' attributes, after their buffers: the stride and the compute dtype.
template <typename Binding>
auto ConvAttrs(Binding binding) {
  return std::move(binding).template Attr<int64_t>("stride").template Attr<int64_t>("bf16");
}

}  // namespace

using F32 = ffi::Buffer<ffi::F32>;
XLA_FFI_DEFINE_HANDLER_SYMBOL(jtd3_onednn_conv_fwd, ConvFwd,
                              ConvAttrs(TwoOperands().Arg<F32>() /* the bias */.Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jtd3_onednn_conv_bwd_data, ConvBwdData, ConvAttrs(TwoOperands().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jtd3_onednn_conv_bwd_w, ConvBwdWeights,
                              ConvAttrs(TwoOperands().Ret<F32>().Ret<F32>() /* the bias gradient */));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jtd3_onednn_matmul, MatMul,
                              TwoOperands()
                                  .Ret<F32>()
                                  .Attr<int64_t>("trans_a")
                                  .Attr<int64_t>("trans_b")
                                  .Attr<int64_t>("bf16"));
