// LayerNorm followed by a (leaky) ReLU in one pass each way, for XLA:CPU through the XLA FFI
// (jtd3/agent/onednn.py, layer_norm_act). Plain C++ and OpenMP (the runtime oneDNN already uses).
//
// x (N, ...) is viewed as (N, D); the statistics are per sample, scale and shift per feature (D):
//   jtd3_ln_act_fwd   x, scale, shift               -> y = act(scale * xhat + shift), mean (N), rstd (N)
//   jtd3_ln_act_bwd   x, g, mean, rstd, scale, shift -> dx, dscale, dshift                  (all float32)
// with xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps), act(z) = z for z >= 0 and slope * z below (slope 0 is
// ReLU, whose gradient at 0 is 0 as in JAX). The activation's gradient is taken from z recomputed in the
// backward, so neither z nor the normalized x is stored. Against oneDNN's LayerNorm and XLA's activation this
// saves one pass over the activations each way (measured in docs/agent.md).
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error RowsAndFeatures(ffi::Span<const int64_t> x, const ffi::Buffer<ffi::F32>& scale,
                           const ffi::Buffer<ffi::F32>& shift, int64_t* n, int64_t* d) {
  if (x.size() < 2) return ffi::Error::InvalidArgument("layer norm: x must be (N, ...)");
  int64_t features = 1;
  for (size_t i = 1; i < x.size(); ++i) features *= x[i];
  if (scale.element_count() != static_cast<size_t>(features) || shift.element_count() != static_cast<size_t>(features))
    return ffi::Error::InvalidArgument("layer norm: scale and shift must have x's feature size");
  *n = x[0];
  *d = features;
  return ffi::Error::Success();
}

// The activation's derivative at z: 1 above 0, slope below, and at 0 what JAX's leaky_relu (1) and relu (0) give.
// Written without branches (bitwise on the comparisons) so that the loops around it vectorize.
inline float ActGrad(float z, float slope) {
  const bool one = (z > 0.f) | ((z == 0.f) & (slope != 0.f));
  return one ? 1.f : slope;
}

ffi::Error Fwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
               ffi::Result<ffi::Buffer<ffi::F32>> y, ffi::Result<ffi::Buffer<ffi::F32>> mean,
               ffi::Result<ffi::Buffer<ffi::F32>> rstd, float eps, float slope) {
  int64_t n, d;
  if (auto e = RowsAndFeatures(x.dimensions(), scale, shift, &n, &d); !e.success()) return e;
  const float* xs = x.typed_data();
  const float* sc = scale.typed_data();
  const float* sh = shift.typed_data();
  float* ys = y->typed_data();
  float* ms = mean->typed_data();
  float* rs = rstd->typed_data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = xs + i * d;
    // Two passes for the statistics (the row stays in cache): no cancellation when |mean| >> std.
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < d; ++j) sum += row[j];
    const float mu = sum / d;
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < d; ++j) sq += (row[j] - mu) * (row[j] - mu);
    const float r = 1.f / std::sqrt(sq / d + eps);
    float* out = ys + i * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      const float z = sc[j] * ((row[j] - mu) * r) + sh[j], below = slope * z;  // both: a blend, not a branch
      out[j] = z >= 0.f ? z : below;
    }
    ms[i] = mu;
    rs[i] = r;
  }
  return ffi::Error::Success();
}

ffi::Error Bwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> mean,
               ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
               ffi::Result<ffi::Buffer<ffi::F32>> dx, ffi::Result<ffi::Buffer<ffi::F32>> dscale,
               ffi::Result<ffi::Buffer<ffi::F32>> dshift, float slope) {
  int64_t n, d;
  if (auto e = RowsAndFeatures(x.dimensions(), scale, shift, &n, &d); !e.success()) return e;
  if (g.element_count() != x.element_count()) return ffi::Error::InvalidArgument("layer norm: g must be x's shape");
  const float* xs = x.typed_data();
  const float* gs = g.typed_data();
  const float* ms = mean.typed_data();
  const float* rs = rstd.typed_data();
  const float* sc = scale.typed_data();
  const float* sh = shift.typed_data();
  float* dxs = dx->typed_data();
  float* dsc = dscale->typed_data();
  float* dsh = dshift->typed_data();
  // Each thread sums its samples' parameter gradients into its own rows; the rows are added at the end.
  const int threads = omp_get_max_threads();
  std::vector<float> partial(static_cast<size_t>(threads) * 2 * d, 0.f);
#pragma omp parallel num_threads(threads)
  {
    float* psc = partial.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * d;
    float* psh = psc + d;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* row = xs + i * d;
      const float* grow = gs + i * d;
      float* out = dxs + i * d;
      const float mu = ms[i], r = rs[i];
      // Pass 1: the gradient of the normalized row (kept in dx), the parameter gradients and its two sums.
      float s1 = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t j = 0; j < d; ++j) {
        const float xh = (row[j] - mu) * r;
        const float dz = grow[j] * ActGrad(sc[j] * xh + sh[j], slope);
        psc[j] += dz * xh;
        psh[j] += dz;
        const float dxh = dz * sc[j];
        out[j] = dxh;
        s1 += dxh;
        s2 += dxh * xh;
      }
      // Pass 2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
      const float m1 = s1 / d, m2 = s2 / d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) out[j] = r * (out[j] - m1 - (row[j] - mu) * r * m2);
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < d; ++j) {
      float a = 0.f, b = 0.f;
      for (int t = 0; t < threads; ++t) {
        a += partial[static_cast<size_t>(t) * 2 * d + j];
        b += partial[static_cast<size_t>(t) * 2 * d + d + j];
      }
      dsc[j] = a;
      dsh[j] = b;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jtd3_ln_act_fwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // shift
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mean
                                  .Ret<ffi::Buffer<ffi::F32>>()  // rstd
                                  .Attr<float>("eps")
                                  .Attr<float>("slope"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jtd3_ln_act_bwd, Bwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // rstd
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // shift
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dscale
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dshift
                                  .Attr<float>("slope"));
