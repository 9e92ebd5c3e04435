// The uint8 camera as the first convolution's input, for XLA:CPU through the XLA FFI (jtd3/agent/onednn.py,
// camera_input). Plain C++ (SSE2 where there is x86-64, GCC function multi-versioning for AVX2 / AVX-512)
// and OpenMP (the runtime oneDNN already uses).
//
//   jtd3_camera_input  camera (B, C, H, W) uint8; attrs block, scale, offset  ->  x (B, Ho, Wo, block*block*C)
// with x[b, i, j, (dy * block + dx) * C + c] = camera[b, c, i * block + dy, j * block + dx] * scale + offset
// (float32 arithmetic, a multiply then an add: the same values as XLA's layout.scale_camera), stored as float32
// or bfloat16 (the result buffer's dtype; rounded to nearest even). Channels-last, and with block > 1 in the
// space-to-depth layout: a stride-`block` convolution whose kernel is a multiple of `block` is a stride-1 one
// over it, which oneDNN runs far better than one over C = 4 input channels. Ho * block <= H and
// Wo * block <= W: rows and columns a VALID convolution never reads are left out. One pass, where XLA's
// transpose wrote float32 and oneDNN converted it again.
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// float -> bfloat16 bits, rounded to nearest even (the values here are finite).
inline uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline void Put(float v, float* out) { *out = v; }
inline void Put(float v, uint16_t* out) { *out = ToBf16(v); }

// The camera rows of output row (b, i) -> its bytes in output order, for C = 4 channels and a block of 1 or a
// multiple of 4: 16 pixels of the four rows at a time are interleaved by two rounds of byte and word unpacks
// (SSE2, x86-64's baseline) into 4 x 16 bytes, each the four channels of 4 neighbouring pixels, stored where
// those pixels go; the rest one pixel (one 32-bit word) at a time.
void Gather4(const uint8_t* const* src, int64_t wo, int64_t block, uint8_t* bytes) {
  const int64_t len = wo * block;
  uint32_t* words = reinterpret_cast<uint32_t*>(bytes);
  // the word of pixel x of camera row dy: 4 neighbouring x (from a multiple of 4) are 4 neighbouring words
  auto at = [&](int64_t dy, int64_t x) { return words + ((x / block) * block + dy) * block + x % block; };
  for (int64_t dy = 0; dy < block; ++dy) {
    const uint8_t *s0 = src[dy * 4], *s1 = src[dy * 4 + 1], *s2 = src[dy * 4 + 2], *s3 = src[dy * 4 + 3];
    int64_t x = 0;
#if defined(__SSE2__)
    for (; x + 16 <= len; x += 16) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s0 + x));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s1 + x));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s2 + x));
      const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s3 + x));
      const __m128i ab_lo = _mm_unpacklo_epi8(a, b), ab_hi = _mm_unpackhi_epi8(a, b);
      const __m128i cd_lo = _mm_unpacklo_epi8(c, d), cd_hi = _mm_unpackhi_epi8(c, d);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(at(dy, x)), _mm_unpacklo_epi16(ab_lo, cd_lo));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(at(dy, x + 4)), _mm_unpackhi_epi16(ab_lo, cd_lo));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(at(dy, x + 8)), _mm_unpacklo_epi16(ab_hi, cd_hi));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(at(dy, x + 12)), _mm_unpackhi_epi16(ab_hi, cd_hi));
    }
#endif
    for (; x < len; ++x)
      *at(dy, x) = uint32_t{s0[x]} | uint32_t{s1[x]} << 8 | uint32_t{s2[x]} << 16 | uint32_t{s3[x]} << 24;
  }
}

// The same for any C, one byte at a time.
void Gather(const uint8_t* const* src, int64_t c, int64_t wo, int64_t block, uint8_t* bytes) {
  const int64_t k = block * block * c;
  for (int64_t dy = 0; dy < block; ++dy)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t j = 0; j < wo; ++j)
        for (int64_t dx = 0; dx < block; ++dx)
          bytes[j * k + (dy * block + dx) * c + ch] = src[dy * c + ch][j * block + dx];
}

// Scales and converts n bytes (on x86-64, vector code for AVX-512 and AVX2 where the CPU has them, picked at
// load time; elsewhere the compiler's default).
#if defined(__x86_64__)
#define JTD3_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JTD3_VECTOR_CLONES
#endif
template <typename T>
JTD3_VECTOR_CLONES void Convert(const uint8_t* bytes, int64_t n, float scale, float offset, T* out) {
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) Put(static_cast<float>(bytes[e]) * scale + offset, out + e);
}

// Each output row (b, i): its camera bytes gathered in output order (small, stays in cache), then scaled and
// converted in one contiguous, vectorized pass.
template <typename T>
void Fill(const uint8_t* cam, T* out, int64_t n, int64_t c, int64_t h, int64_t w, int64_t ho, int64_t wo,
          int64_t block, float scale, float offset) {
  const int64_t k = block * block * c, len = wo * k;
#pragma omp parallel
  {
    std::vector<uint32_t> words((len + 3) / 4);  // 4-byte aligned for Gather4
    uint8_t* bytes = reinterpret_cast<uint8_t*>(words.data());
    std::vector<const uint8_t*> src(block * c);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t i = 0; i < ho; ++i) {
        for (int64_t dy = 0; dy < block; ++dy)
          for (int64_t ch = 0; ch < c; ++ch) src[dy * c + ch] = cam + ((b * c + ch) * h + i * block + dy) * w;
        if (c == 4 && (block == 1 || block % 4 == 0)) Gather4(src.data(), wo, block, bytes);
        else Gather(src.data(), c, wo, block, bytes);
        Convert(bytes, len, scale, offset, out + (b * ho + i) * len);
      }
    }
  }
}

ffi::Error CameraInput(ffi::Buffer<ffi::U8> camera, ffi::Result<ffi::AnyBuffer> x, int64_t block, float scale,
                       float offset) {
  auto cd = camera.dimensions();
  auto xd = x->dimensions();
  if (cd.size() != 4 || xd.size() != 4)
    return ffi::Error::InvalidArgument("camera input: expected camera (B, C, H, W) and x (B, Ho, Wo, K)");
  const int64_t n = cd[0], c = cd[1], h = cd[2], w = cd[3], ho = xd[1], wo = xd[2];
  if (block < 1 || xd[0] != n || xd[3] != block * block * c || ho * block > h || wo * block > w)
    return ffi::Error::InvalidArgument("camera input: x must be (B, Ho, Wo, block*block*C) with Ho*block <= H, "
                                       "Wo*block <= W");
  const uint8_t* cam = camera.typed_data();
  if (x->element_type() == ffi::DataType::F32) {
    Fill(cam, static_cast<float*>(x->untyped_data()), n, c, h, w, ho, wo, block, scale, offset);
  } else if (x->element_type() == ffi::DataType::BF16) {
    Fill(cam, static_cast<uint16_t*>(x->untyped_data()), n, c, h, w, ho, wo, block, scale, offset);
  } else {
    return ffi::Error::InvalidArgument("camera input: x must be float32 or bfloat16");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jtd3_camera_input, CameraInput,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("block")
                                  .Attr<float>("scale")
                                  .Attr<float>("offset"));
