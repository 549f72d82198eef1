// 16-lane vectors and the Winograd F(m x m, 3x3) transforms (m = 4, 2) shared by the
// convolution (winograd.cpp) and its weight gradient (winograd_grad.cpp).
#pragma once

#include "common.h"

namespace ipugraph {
namespace wino {

// 16 float lanes.
struct V16 {
#if defined(IPUGRAPH_AVX512)
  __m512 v;
  static V16 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static V16 zero() { return {_mm512_setzero_ps()}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  friend V16 operator+(V16 a, V16 b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend V16 operator-(V16 a, V16 b) { return {_mm512_sub_ps(a.v, b.v)}; }
  // a * s + b
  static V16 fma(V16 a, float s, V16 b) { return {_mm512_fmadd_ps(a.v, _mm512_set1_ps(s), b.v)}; }
#elif defined(IPUGRAPH_AVX2)
  __m256 lo, hi;
  static V16 load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static V16 zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  void store(float* p) const { _mm256_storeu_ps(p, lo); _mm256_storeu_ps(p + 8, hi); }
  friend V16 operator+(V16 a, V16 b) {
    return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
  }
  friend V16 operator-(V16 a, V16 b) {
    return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)};
  }
  static V16 fma(V16 a, float s, V16 b) {
    const __m256 k = _mm256_set1_ps(s);
    return {_mm256_fmadd_ps(a.lo, k, b.lo), _mm256_fmadd_ps(a.hi, k, b.hi)};
  }
#else
  float v[16];
  static V16 load(const float* p) { V16 r; for (int l = 0; l < 16; ++l) r.v[l] = p[l]; return r; }
  static V16 zero() { V16 r; for (float& f : r.v) f = 0.f; return r; }
  void store(float* p) const { for (int l = 0; l < 16; ++l) p[l] = v[l]; }
  friend V16 operator+(V16 a, V16 b) { for (int l = 0; l < 16; ++l) a.v[l] += b.v[l]; return a; }
  friend V16 operator-(V16 a, V16 b) { for (int l = 0; l < 16; ++l) a.v[l] -= b.v[l]; return a; }
  static V16 fma(V16 a, float s, V16 b) {
    for (int l = 0; l < 16; ++l) b.v[l] += a.v[l] * s;
    return b;
  }
#endif
};

// The transforms of F(m x m, 3x3), a = m + 2, on one column of 16 lanes.
template <int Mt>
struct Wino;

template <>
struct Wino<4> {
  static constexpr int A = 6;
  // B^T d: the six rows of the input transform.
  static void bt(const V16* d, V16* r) {
    const V16 d4m2 = d[4] - d[2], d3m1 = d[3] - d[1];
    r[0] = V16::fma(d[2], -5.f, V16::fma(d[0], 4.f, d[4]));
    r[1] = V16::fma(d[1] + d[2], -4.f, d[3] + d[4]);
    r[2] = V16::fma(d[1] - d[2], 4.f, d[4] - d[3]);
    r[3] = V16::fma(d3m1, 2.f, d4m2);
    r[4] = V16::fma(d3m1, -2.f, d4m2);
    r[5] = V16::fma(d[3], -5.f, V16::fma(d[1], 4.f, d[5]));
  }
  // A^T m: the four output rows.
  static void at(const V16* m, V16* y) {
    const V16 s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    y[0] = m[0] + s12 + s34;
    y[1] = V16::fma(d34, 2.f, d12);
    y[2] = V16::fma(s34, 4.f, s12);
    y[3] = V16::fma(d34, 8.f, d12) + m[5];
  }
  // G g: the six rows of the weight transform.
  static void gt(const V16* g, V16* t) {
    const V16 s02 = g[0] + g[2];
    const V16 a = V16::fma(g[0], 1.f / 24, V16::fma(g[2], 1.f / 6, V16::zero()));
    t[0] = V16::fma(g[0], 0.25f, V16::zero());
    t[1] = V16::fma(s02 + g[1], -1.f / 6, V16::zero());
    t[2] = V16::fma(s02 - g[1], -1.f / 6, V16::zero());
    t[3] = V16::fma(g[1], 1.f / 12, a);
    t[4] = V16::fma(g[1], -1.f / 12, a);
    t[5] = g[2];
  }
};

template <>
struct Wino<2> {
  static constexpr int A = 4;
  static void bt(const V16* d, V16* r) {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
  }
  static void at(const V16* m, V16* y) {
    y[0] = m[0] + m[1] + m[2];
    y[1] = m[1] - m[2] - m[3];
  }
  static void gt(const V16* g, V16* t) {
    const V16 s02 = g[0] + g[2];
    t[0] = g[0];
    t[1] = V16::fma(s02 + g[1], 0.5f, V16::zero());
    t[2] = V16::fma(s02 - g[1], 0.5f, V16::zero());
    t[3] = g[2];
  }
};

}  // namespace wino
}  // namespace ipugraph
