// The weight-gradient GEMM, C[p][:] += sum over rows t of a[t][p] * b[t][:] (both operands
// row-major over the reduction t: "A^T B"), as a register tile of up to 12 rows p (broadcast
// a values) by 4 vectors of 16 lanes; shared by the direct weight gradient (conv_grad.cpp) and
// the Winograd one (winograd_grad.cpp).
#pragma once

#include "common.h"

namespace ipugraph {
namespace gemm_tn {

constexpr int kWRows = 12;   // most output channels (broadcast dy values) per register tile
constexpr int kWLanes = 64;  // (s, c) lanes per register tile (4 vectors of 16)

// Rows of the register tile for NV 16-lane vectors: <= 24 accumulators (AVX-512 has 32).
inline int wg_rows(int NV) { return NV <= 2 ? 12 : (NV == 3 ? 8 : 6); }

// tile[p*ldt : p*ldt + NV*16] += sum over rows i and columns o < OW of
// dyr[i][o*K + p] * xr[i][o*xstep + :] (x's last 16-lane vector masked to `tail` lanes).
#if defined(IPUGRAPH_AVX512)
template <int P, int NV>
void wg_kernel(const float* const* dyr, const float* const* xr, int nrows, int64_t OW, int64_t K,
               int64_t xstep, int tail, float* tile, int64_t ldt) {
  const __mmask16 mlast = __mmask16(0xFFFFu >> (16 - tail));
  __m512 a[P][NV];
#pragma GCC unroll 12
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) a[p][v] = _mm512_loadu_ps(tile + p * ldt + 16 * v);
  for (int i = 0; i < nrows; ++i) {
    const float* d = dyr[i];
    const float* x = xr[i];
    for (int64_t o = 0; o < OW; ++o, d += K, x += xstep) {
      __m512 xv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        xv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(mlast, x + 16 * v) : _mm512_loadu_ps(x + 16 * v);
#pragma GCC unroll 12
      for (int p = 0; p < P; ++p) {
        const __m512 b = _mm512_set1_ps(d[p]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) a[p][v] = _mm512_fmadd_ps(b, xv[v], a[p][v]);
      }
    }
  }
#pragma GCC unroll 12
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(tile + p * ldt + 16 * v, a[p][v]);
}
#else
template <int P, int NV>
void wg_kernel(const float* const* dyr, const float* const* xr, int nrows, int64_t OW, int64_t K,
               int64_t xstep, int tail, float* tile, int64_t ldt) {
  constexpr int NL = NV * 16;
  const int nl = (NV - 1) * 16 + tail;
  float a[P][NL];
  for (int p = 0; p < P; ++p)
    for (int l = 0; l < NL; ++l) a[p][l] = tile[p * ldt + l];
  for (int i = 0; i < nrows; ++i) {
    const float* d = dyr[i];
    const float* x = xr[i];
    for (int64_t o = 0; o < OW; ++o, d += K, x += xstep) {
      float xv[NL];
      for (int l = 0; l < NL; ++l) xv[l] = l < nl ? x[l] : 0.f;
      for (int p = 0; p < P; ++p) {
        const float b = d[p];
#pragma omp simd
        for (int l = 0; l < NL; ++l) a[p][l] += b * xv[l];
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int l = 0; l < NL; ++l) tile[p * ldt + l] = a[p][l];
}
#endif

using WGKernel = void (*)(const float* const*, const float* const*, int, int64_t, int64_t,
                          int64_t, int, float*, int64_t);

template <int P>
constexpr std::array<WGKernel, 5> wg_row() {
  // Only the shapes wg_rows allows are instantiated (others would spill accumulators).
  return {nullptr, &wg_kernel<P, 1>, &wg_kernel<P, 2>,
          P <= 8 ? &wg_kernel<(P <= 8 ? P : 8), 3> : nullptr,
          P <= 6 ? &wg_kernel<(P <= 6 ? P : 6), 4> : nullptr};
}

inline WGKernel get_wg_kernel(int P, int NV) {
  static const std::array<std::array<WGKernel, 5>, kWRows + 1> t = {
      std::array<WGKernel, 5>{}, wg_row<1>(), wg_row<2>(), wg_row<3>(), wg_row<4>(),
      wg_row<5>(), wg_row<6>(), wg_row<7>(), wg_row<8>(), wg_row<9>(), wg_row<10>(),
      wg_row<11>(), wg_row<12>()};
  return t[P][NV];
}

// A pixel stride of a multiple of 128 floats (512 B) puts a row's pixels in a few L1 sets
// (C = 512: 8 of 64), so the kernel's working set thrashes L1; such rows are copied with 16
// floats more per pixel.
inline int64_t spread_stride(int64_t n) { return n % 128 == 0 ? n + 16 : n; }

}  // namespace gemm_tn
}  // namespace ipugraph
