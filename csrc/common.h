// Shared helpers for the ipugraph codelets (module ipugraph._C).
//
// Every entry point takes numpy arrays plus a "vertex table" (int32 [V, ncols]); each row is
// one vertex, i.e. the slice of an op's work that one tile owns in the plan.  The entry point
// validates everything up front (so nothing can crash the interpreter), releases the GIL and
// runs the vertices under `omp parallel for schedule(dynamic, 1)` (a single vertex on the
// calling thread).
//
// The register-blocked microkernel shared by conv2d and matmul also lives here.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <utility>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define IPUGRAPH_AVX2 1
#endif

namespace ipugraph {

namespace py = pybind11;

// Inputs: a copy is harmless, so forcecast (float64 -> float32, non-contiguous -> contiguous).
using FArr = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IArr = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I64Arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  if (a.ndim() == 1) s << ",";
  s << ")";
  return s.str();
}

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

inline void check_ndim(const py::array& a, int nd, const char* fn, const char* name, const char* dims) {
  if (a.ndim() != nd) {
    fail(std::string(fn) + ": " + name + " must be " + std::to_string(nd) + "-D " + dims +
         ", got shape " + shape_str(a));
  }
}

// `out` must be float32, C-contiguous and writeable: no conversion, so the results land in the
// caller's buffer (a silent copy would throw them away).
inline float* out_ptr(const py::array& a, const char* fn) {
  if (!py::isinstance<py::array_t<float>>(a) || a.dtype().kind() != 'f' || a.itemsize() != 4)
    fail(std::string(fn) + ": out must be a float32 array, got dtype " +
         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    fail(std::string(fn) + ": out must be C-contiguous");
  if (!a.writeable()) fail(std::string(fn) + ": out must be writeable");
  return static_cast<float*>(const_cast<void*>(a.data()));
}

// Vertex table: int32 [V, ncols] (V may be 0).  Returns V.
inline py::ssize_t check_vertices(const IArr& v, int ncols, const char* fn) {
  if (v.ndim() != 2 || v.shape(1) != ncols)
    fail(std::string(fn) + ": vertices must be an int32 array of shape [V, " + std::to_string(ncols) +
         "], got shape " + shape_str(v));
  return v.shape(0);
}

// Checks lo <= hi within [0, n] for column pair (c0, c0 + 1) of every vertex row.
inline void check_range_cols(const IArr& v, int c0, py::ssize_t n, const char* fn, const char* what) {
  const int32_t* p = v.data();
  const py::ssize_t V = v.shape(0), nc = v.shape(1);
  for (py::ssize_t i = 0; i < V; ++i) {
    const int64_t lo = p[i * nc + c0], hi = p[i * nc + c0 + 1];
    if (lo < 0 || hi < lo || hi > n) {
      std::ostringstream s;
      s << fn << ": vertex " << i << " has " << what << " range [" << lo << ", " << hi
        << ") outside [0, " << n << "]";
      fail(s.str());
    }
  }
}

// The vertex table of a flat elementwise codelet: (start, end) element ranges within [0, n].
inline py::ssize_t check_flat_vertices(const IArr& v, py::ssize_t n, const char* fn) {
  const py::ssize_t V = check_vertices(v, 2, fn);
  check_range_cols(v, 0, n, fn, "element (start, end)");
  return V;
}

// The one vertex loop: body(row, thread) for every row of a checked [V, cols] vertex table, in
// parallel (dynamic: vertices differ in cost), without the GIL (nothing in body may throw).
template <class Body>
void for_each_vertex(const int32_t* vt, py::ssize_t V, int64_t cols, Body&& body) {
  py::gil_scoped_release nogil;
  // (one vertex -- a tiny compute set -- runs on the calling thread: no team to wake)
#pragma omp parallel for schedule(dynamic, 1) if (V > 1)
  for (py::ssize_t v = 0; v < V; ++v) body(vt + cols * v, thread_id());
}

// The same over a flat table of (start, end) ranges: body(i0, i1, thread).
template <class Body>
void for_each_range(const int32_t* vt, py::ssize_t V, Body&& body) {
  for_each_vertex(vt, V, 2,
                  [&](const int32_t* row, int t) { body(int64_t(row[0]), int64_t(row[1]), t); });
}

// Fails if the byte ranges of a and b overlap (an output that is read from elsewhere).
inline void check_no_overlap(const char* fn, const py::array& out, const py::array& in,
                             const char* what) {
  const char* ob = static_cast<const char*>(out.data());
  const char* ib = static_cast<const char*>(in.data());
  const size_t on = size_t(out.nbytes()), in_n = size_t(in.nbytes());
  if (on && in_n && ob < ib + in_n && ib < ob + on)
    fail(std::string(fn) + ": out " + shape_str(out) + " overlaps " + what + " " + shape_str(in));
}

// The epilogue operands of a conv-shaped codelet: bias [K], residual shaped like out.
inline void check_bias_residual(const char* fn, const std::optional<FArr>& bias,
                                const std::optional<FArr>& residual, const py::array& out,
                                int64_t K) {
  if (bias && (bias->ndim() != 1 || bias->shape(0) != K))
    fail(std::string(fn) + ": bias has shape " + shape_str(*bias) + ", expected (" +
         std::to_string(K) + ",)");
  bool same = residual && residual->ndim() == out.ndim();
  for (py::ssize_t d = 0; same && d < out.ndim(); ++d) same = residual->shape(d) == out.shape(d);
  if (residual && !same)
    fail(std::string(fn) + ": residual has shape " + shape_str(*residual) + ", expected out's " +
         shape_str(out));
}

// An NHWC output box (n0,n1,k0,k1,oh0,oh1,ow0,ow1) in the first 8 columns of every vertex row.
inline void check_nhwc_boxes(const IArr& vertices, int64_t N, int64_t K, int64_t OH, int64_t OW,
                             const char* fn) {
  check_range_cols(vertices, 0, N, fn, "batch (n0, n1)");
  check_range_cols(vertices, 2, K, fn, "channel (k0, k1)");
  check_range_cols(vertices, 4, OH, fn, "row (oh0, oh1)");
  check_range_cols(vertices, 6, OW, fn, "column (ow0, ow1)");
}

inline void check_same_size(const char* fn, const py::array& a, const char* an,
                            const py::array& b, const char* bn) {
  if (a.size() != b.size())
    fail(std::string(fn) + ": " + an + " " + shape_str(a) + " and " + bn + " " + shape_str(b) +
         " must have the same number of elements");
}

// Checks 0 <= v[i, col] < n for every vertex row (an index into an axis of extent n, e.g. the
// slab of a partials buffer; `of` names that array in the message).
inline void check_index_col(const IArr& v, int col, py::ssize_t n, const char* fn, const char* what,
                            const std::string& of) {
  const int32_t* p = v.data();
  const py::ssize_t V = v.shape(0), nc = v.shape(1);
  for (py::ssize_t i = 0; i < V; ++i) {
    const int64_t idx = p[i * nc + col];
    if (idx < 0 || idx >= n) {
      std::ostringstream s;
      s << fn << ": vertex " << i << " has " << what << " " << idx << " outside [0, " << n
        << ") of " << of;
      fail(s.str());
    }
  }
}

// A 4-D weight seen as its logical [K, Cg, R, S]: stored as declared, or channels last
// ([K, R, S, Cg], the backends' storage of a 4-D tensor, so a weight the engine holds is packed
// without a transposing copy).  Element strides of k, c, r, s.
struct WeightView {
  int64_t K, Cg, R, S, sk, sc, sr, ss;
};

inline WeightView weight_view(const py::array& w, bool channels_last, const char* fn) {
  check_ndim(w, 4, fn, "w", channels_last ? "[K, R, S, Cg] (channels last)" : "[K, Cg, R, S]");
  WeightView v{};
  v.K = w.shape(0);
  if (channels_last) {
    v.R = w.shape(1); v.S = w.shape(2); v.Cg = w.shape(3);
    v.sc = 1; v.ss = v.Cg; v.sr = v.S * v.Cg; v.sk = v.R * v.sr;
  } else {
    v.Cg = w.shape(1); v.R = w.shape(2); v.S = w.shape(3);
    v.ss = 1; v.sr = v.S; v.sc = v.R * v.S; v.sk = v.Cg * v.sc;
  }
  return v;
}

// 64-byte aligned float buffer owned by a numpy array (packed weights): full-line weight rows.
// zero=false for a caller that writes every element (only the rounding tail is cleared).
inline py::array_t<float> aligned_array(py::ssize_t n, float** data, bool zero = true) {
  const size_t bytes = std::max<size_t>(64, ((size_t(n) * sizeof(float) + 63) / 64) * 64);
  float* buf = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!buf) throw std::bad_alloc();
  const size_t keep = zero ? 0 : size_t(n) * sizeof(float);
  std::memset(reinterpret_cast<char*>(buf) + keep, 0, bytes - keep);
  py::capsule owner(buf, [](void* p) { std::free(p); });
  *data = buf;
  return py::array_t<float>({n}, {py::ssize_t(sizeof(float))}, buf, owner);
}

// Scratch floats that outlive the call, one buffer per (calling thread, slot), grown as
// needed: a kernel's per-call scratch of several MB, freshly allocated, is fresh pages from the
// kernel, and their first-touch faults cost more than the work at small batch (a Winograd conv
// at batch 1 spent ~0.1 ms of 0.8 on them). A kernel takes each slot once per call; the
// buffers live until the thread ends. 64-byte aligned, uninitialised.
inline float* scratch_floats(int slot, size_t n) {
  struct Buf {
    float* p = nullptr;
    size_t n = 0;
    ~Buf() { std::free(p); }
  };
  static thread_local std::array<Buf, 4> bufs;
  Buf& b = bufs.at(size_t(slot));
  if (b.n < n) {
    std::free(b.p);
    b.p = nullptr;
    b.n = 0;
    b.p = static_cast<float*>(std::aligned_alloc(64, std::max<size_t>(64, (n * 4 + 63) / 64 * 64)));
    if (!b.p) throw std::bad_alloc();
    b.n = n;
  }
  return b.p;
}

// The destination of a packing function: `into` (an earlier result of the same call, reused
// when the weight changes every step: a fresh buffer of tens of MB costs more in first-touch
// page faults than the packing itself) or a new aligned buffer. `src` must not overlap it.
inline py::array packed_buffer(std::optional<py::array> into, py::ssize_t n, float** data,
                               const py::array& src, const char* fn) {
  if (!into) return aligned_array(n, data, /*zero=*/false);
  *data = out_ptr(*into, fn);
  if (into->ndim() != 1 || into->shape(0) != n)
    fail(std::string(fn) + ": into has shape " + shape_str(*into) + ", expected (" +
         std::to_string(n) + ",) for " + shape_str(src));
  check_no_overlap(fn, *into, src, "the weight");
  return *into;
}

// ---------------------------------------------------------------------------------------------
// Microkernel.  One call computes a tile of P output pixels x NB 16-channel blocks:
//   acc[b][p][0:16] = sum over segments i, j < L of  xseg[i*P + p][j] * (wseg[i] + b*wstride)[16*j : 16*j+16]
// i.e. P broadcast inputs times NB packed 64-byte weight rows per reduction step.  A pixel whose
// taps are padding points at a zero buffer, so the inner loop has no branches.
//   AVX-512 (32 zmm): P <= 6, NB <= 4 -> 24 accumulators, 4 weight loads + 6 broadcasts per
//                     24 FMAs.  (12 pixels x 2 blocks has the same accumulator count but needs
//                     12 pixel pointers + 2 weight pointers: GCC spills GPRs and the kernel drops
//                     from ~99% to ~92% of the FMA peak on Zen 4.)
//   AVX2    (16 ymm): P <= 6, NB = 1  -> 12 accumulators (16 channels = 2 ymm), 2 weight loads
//                     + 6 broadcasts per 12 FMAs.
// The accumulators are named variables (not arrays): GCC otherwise keeps arrays in memory when
// the loop nest is not fully unrolled, storing every accumulator on every step.
// ---------------------------------------------------------------------------------------------
constexpr int kBlock = 16;  // output channels per packed weight block

// Lane-blocked packing, the layout of every packed weight: dst[b*16 + l] = src[l*sa + b*sb] for
// lanes l < n (zero for n <= l < 16) and rows b < B.  Moves 16x16 tiles, so the strided side of
// the transpose stays within 16 cache lines (a lane-at-a-time loop touches a new line per
// element: 3 GB/s against 10+ for the tiles).
inline void pack_lanes(float* dst, const float* src, int64_t n, int64_t sa, int64_t B,
                       int64_t sb) {
  for (int64_t b0 = 0; b0 < B; b0 += kBlock) {
    const int64_t nb = std::min<int64_t>(kBlock, B - b0);
    for (int64_t l = 0; l < kBlock; ++l) {
      float* d = dst + b0 * kBlock + l;
      if (l >= n) {
        for (int64_t b = 0; b < nb; ++b) d[b * kBlock] = 0.f;
        continue;
      }
      const float* s = src + l * sa + b0 * sb;
      for (int64_t b = 0; b < nb; ++b) d[b * kBlock] = s[b * sb];
    }
  }
}

constexpr int kMaxPix = 6;  // pixels (GEMM rows) per microkernel call

#if defined(__AVX512F__)
#define IPUGRAPH_AVX512 1
constexpr int kMaxNB = 4;  // 16-channel blocks per microkernel call
#else
constexpr int kMaxNB = 1;
#endif
constexpr int kAccStride = kMaxPix * kBlock;  // floats between blocks in acc

#define IPG_REP6(M) M(0) M(1) M(2) M(3) M(4) M(5)

// Acc: add to the sums already in acc (a reduction split into blocks) instead of starting at 0.
#if defined(IPUGRAPH_AVX512)
template <int P, int NB, bool Acc = false>
static void ukernel(const float* const* wseg, int64_t wstride, const float* const* xseg, int nseg,
                    int L, float* acc) {
#define IPG_DECL(p)                                                          \
  __m512 a##p##0 = _mm512_setzero_ps(), a##p##1 = _mm512_setzero_ps(),       \
         a##p##2 = _mm512_setzero_ps(), a##p##3 = _mm512_setzero_ps();
  IPG_REP6(IPG_DECL)
#undef IPG_DECL
#define IPG_LOAD(p)                                                                     \
  if constexpr (P > p) {                                                                \
    a##p##0 = _mm512_loadu_ps(acc + 16 * p);                                            \
    if constexpr (NB > 1) a##p##1 = _mm512_loadu_ps(acc + kAccStride + 16 * p);         \
    if constexpr (NB > 2) a##p##2 = _mm512_loadu_ps(acc + 2 * kAccStride + 16 * p);     \
    if constexpr (NB > 3) a##p##3 = _mm512_loadu_ps(acc + 3 * kAccStride + 16 * p);     \
  }
  if constexpr (Acc) { IPG_REP6(IPG_LOAD) }
#undef IPG_LOAD
  for (int i = 0; i < nseg; ++i) {
    const float* w = wseg[i];
#define IPG_PTR(p) const float* x##p = (P > p) ? xseg[i * P + p] : nullptr;
    IPG_REP6(IPG_PTR)
#undef IPG_PTR
    for (int j = 0; j < L; ++j) {
      const float* wj = w + 16 * j;
      const __m512 w0 = _mm512_loadu_ps(wj);
      const __m512 w1 = NB > 1 ? _mm512_loadu_ps(wj + wstride) : w0;
      const __m512 w2 = NB > 2 ? _mm512_loadu_ps(wj + 2 * wstride) : w0;
      const __m512 w3 = NB > 3 ? _mm512_loadu_ps(wj + 3 * wstride) : w0;
#define IPG_STEP(p)                                                     \
  if constexpr (P > p) {                                                \
    const __m512 b = _mm512_set1_ps(x##p[j]);                           \
    a##p##0 = _mm512_fmadd_ps(b, w0, a##p##0);                          \
    if constexpr (NB > 1) a##p##1 = _mm512_fmadd_ps(b, w1, a##p##1);    \
    if constexpr (NB > 2) a##p##2 = _mm512_fmadd_ps(b, w2, a##p##2);    \
    if constexpr (NB > 3) a##p##3 = _mm512_fmadd_ps(b, w3, a##p##3);    \
  }
      IPG_REP6(IPG_STEP)
#undef IPG_STEP
    }
  }
#define IPG_STORE(p)                                                                   \
  if constexpr (P > p) {                                                               \
    _mm512_storeu_ps(acc + 16 * p, a##p##0);                                           \
    if constexpr (NB > 1) _mm512_storeu_ps(acc + kAccStride + 16 * p, a##p##1);        \
    if constexpr (NB > 2) _mm512_storeu_ps(acc + 2 * kAccStride + 16 * p, a##p##2);    \
    if constexpr (NB > 3) _mm512_storeu_ps(acc + 3 * kAccStride + 16 * p, a##p##3);    \
  }
  IPG_REP6(IPG_STORE)
#undef IPG_STORE
}
#elif defined(IPUGRAPH_AVX2)
template <int P, int NB, bool Acc = false>
static void ukernel(const float* const* wseg, int64_t, const float* const* xseg, int nseg, int L,
                    float* acc) {
  static_assert(NB == 1, "AVX2 kernel covers one 16-channel block");
#define IPG_DECL(p)                                                               \
  __m256 a##p##0 = Acc && P > p ? _mm256_loadu_ps(acc + 16 * p) : _mm256_setzero_ps(),     \
         a##p##1 = Acc && P > p ? _mm256_loadu_ps(acc + 16 * p + 8) : _mm256_setzero_ps();
  IPG_REP6(IPG_DECL)
#undef IPG_DECL
  for (int i = 0; i < nseg; ++i) {
    const float* w = wseg[i];
#define IPG_PTR(p) const float* x##p = (P > p) ? xseg[i * P + p] : nullptr;
    IPG_REP6(IPG_PTR)
#undef IPG_PTR
    for (int j = 0; j < L; ++j) {
      const __m256 w0 = _mm256_loadu_ps(w + 16 * j);
      const __m256 w1 = _mm256_loadu_ps(w + 16 * j + 8);
#define IPG_STEP(p)                               \
  if constexpr (P > p) {                          \
    const __m256 b = _mm256_broadcast_ss(x##p + j); \
    a##p##0 = _mm256_fmadd_ps(b, w0, a##p##0);    \
    a##p##1 = _mm256_fmadd_ps(b, w1, a##p##1);    \
  }
      IPG_REP6(IPG_STEP)
#undef IPG_STEP
    }
  }
#define IPG_STORE(p)                               \
  if constexpr (P > p) {                           \
    _mm256_storeu_ps(acc + 16 * p, a##p##0);       \
    _mm256_storeu_ps(acc + 16 * p + 8, a##p##1);   \
  }
  IPG_REP6(IPG_STORE)
#undef IPG_STORE
}
#else
// Portable fallback: the 16-lane inner loop is left to the auto-vectoriser (SSE2 on x86-64).
template <int P, int NB, bool Acc = false>
static void ukernel(const float* const* wseg, int64_t, const float* const* xseg, int nseg, int L,
                    float* acc) {
  static_assert(NB == 1, "portable kernel covers one 16-channel block");
  float c[P][16];
  for (int p = 0; p < P; ++p)
    for (int l = 0; l < 16; ++l) c[p][l] = Acc ? acc[16 * p + l] : 0.f;
  for (int i = 0; i < nseg; ++i) {
    const float* w = wseg[i];
    const float* x[P];
    for (int p = 0; p < P; ++p) x[p] = xseg[i * P + p];
    for (int j = 0; j < L; ++j) {
      const float* wj = w + 16 * j;
      for (int p = 0; p < P; ++p) {
        const float b = x[p][j];
        for (int l = 0; l < 16; ++l) c[p][l] += b * wj[l];
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int l = 0; l < 16; ++l) acc[16 * p + l] = c[p][l];
}
#endif

using UKernel = void (*)(const float* const*, int64_t, const float* const*, int, int, float*);

template <int NB, bool Acc, size_t... I>
constexpr std::array<UKernel, sizeof...(I) + 1> ukernel_table(std::index_sequence<I...>) {
  return {nullptr, &ukernel<int(I) + 1, NB, Acc>...};
}

// ukernel for P pixels (1..kMaxPix) and NB blocks (1..kMaxNB); accumulate: add to acc's sums.
inline UKernel get_ukernel(int P, int NB, bool accumulate = false) {
  using Seq = std::make_index_sequence<kMaxPix>;
#if defined(IPUGRAPH_AVX512)
  using Row = std::array<UKernel, kMaxPix + 1>;
  static const std::array<Row, 5> t = {Row{}, ukernel_table<1, false>(Seq{}),
                                       ukernel_table<2, false>(Seq{}),
                                       ukernel_table<3, false>(Seq{}),
                                       ukernel_table<4, false>(Seq{})};
  static const std::array<Row, 5> ta = {Row{}, ukernel_table<1, true>(Seq{}),
                                        ukernel_table<2, true>(Seq{}),
                                        ukernel_table<3, true>(Seq{}),
                                        ukernel_table<4, true>(Seq{})};
  return (accumulate ? ta : t)[NB][P];
#else
  static const auto t1 = ukernel_table<1, false>(Seq{});
  static const auto t1a = ukernel_table<1, true>(Seq{});
  (void)NB;
  return (accumulate ? t1a : t1)[P];
#endif
}

// Epilogue for one block of a microkernel result: lanes [lo, hi) of the 16-wide block are real
// output channels of this vertex; outp[p] + off / resp[p] + off / bias point at lane 0.
//   v = acc (+ out if accumulate) (+ bias) (+ residual); ReLU; store.
// ReLU is max(0, v) with v second so NaN propagates as in torch.
inline void epilogue(const float* acc, int P, float* const* outp, const float* const* resp,
                     const float* bias, int64_t off, int lo, int hi, bool accumulate, bool relu) {
#if defined(IPUGRAPH_AVX512)
  const __mmask16 m = __mmask16((0xFFFFu >> (16 - hi)) & (0xFFFFu << lo));
  const __m512 zero = _mm512_setzero_ps();
  const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias) : zero;
  for (int p = 0; p < P; ++p) {
    float* o = outp[p] + off;
    __m512 v = _mm512_add_ps(_mm512_loadu_ps(acc + 16 * p), b);
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o));
    if (resp) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, resp[p] + off));
    if (relu) v = _mm512_maskz_max_ps(0xFFFF, zero, v);  // maskz: avoids a GCC 12 false warning
    _mm512_mask_storeu_ps(o, m, v);
  }
  return;
#else
#if defined(IPUGRAPH_AVX2)
  if (lo == 0 && hi == 16) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 b0 = zero, b1 = zero;
    if (bias) { b0 = _mm256_loadu_ps(bias); b1 = _mm256_loadu_ps(bias + 8); }
    for (int p = 0; p < P; ++p) {
      float* o = outp[p] + off;
      __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(acc + 16 * p), b0);
      __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(acc + 16 * p + 8), b1);
      if (accumulate) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(o));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(o + 8));
      }
      if (resp) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(resp[p] + off));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(resp[p] + off + 8));
      }
      if (relu) { v0 = _mm256_max_ps(zero, v0); v1 = _mm256_max_ps(zero, v1); }
      _mm256_storeu_ps(o, v0);
      _mm256_storeu_ps(o + 8, v1);
    }
    return;
  }
#endif
  // Partial block (channel tail or a vertex boundary inside a block): touch only [lo, hi).
  for (int p = 0; p < P; ++p) {
    float* o = outp[p] + off;
    for (int l = lo; l < hi; ++l) {
      float v = acc[16 * p + l];
      if (bias) v += bias[l];
      if (accumulate) v += o[l];
      if (resp) v += resp[p][off + l];
      if (relu) v = v < 0.f ? 0.f : v;
      o[l] = v;
    }
  }
#endif
}

}  // namespace ipugraph
