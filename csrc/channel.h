// Per-channel reductions and maps shared by the norm and reduce codelets (bn_stats,
// bn_grad_stats, channel_sum, batch_norm_train).
//
// Layouts.  4-D tensors are stored NHWC (channels contiguous); [N, C] row-major (channels
// contiguous too); [N, C, L] row-major.  The per-channel ops see any of them as a contiguous
// [outer, C, inner] array: inner = 1 for NHWC and [N, C], inner = L for [N, C, L]; the channel of
// flat element i is (i / inner) % C.
//
// Accuracy: the per-channel sums accumulate in double (one rounding of each float input, then
// an error of ~1e-16 * M relative), so batch statistics over 10^5..10^7 elements are correct to
// float32 rounding.
#pragma once

#include "common.h"

#include <cmath>

namespace ipugraph {
namespace chan {

constexpr int64_t kCB = 64;  // channels per accumulator block

inline std::string i2s(int64_t v) { return std::to_string(v); }



// ---------------------------------------------------------------------------------------------
// Per-channel layout checks.
// ---------------------------------------------------------------------------------------------

struct ChanGeom {
  int64_t outer, C, inner, M;  // M = outer * inner: elements per channel
};

inline ChanGeom chan_geom(const char* fn, const py::array& x, const char* xname, int64_t C,
                   int64_t inner) {
  if (C < 0 || inner < 1)
    fail(std::string(fn) + ": need C >= 0 and inner >= 1, got C=" + i2s(C) + " inner=" +
         i2s(inner));
  const int64_t period = C * inner;
  if ((period == 0 && x.size() != 0) || (period > 0 && x.size() % period != 0))
    fail(std::string(fn) + ": " + xname + " " + shape_str(x) + " is not a whole number of [C=" +
         i2s(C) + ", inner=" + i2s(inner) + "] channel blocks");
  ChanGeom g{};
  g.C = C; g.inner = inner;
  g.outer = period > 0 ? x.size() / period : 0;
  g.M = g.outer * inner;
  return g;
}

inline void check_shape2(const char* fn, const py::array& a, const char* name, int64_t r, int64_t c) {
  if (a.ndim() != 2 || a.shape(0) != r || a.shape(1) != c)
    fail(std::string(fn) + ": " + name + " has shape " + shape_str(a) + ", expected (" + i2s(r) +
         ", " + i2s(c) + ")");
}

inline void check_shape1(const char* fn, const py::array& a, const char* name, int64_t c) {
  if (a.ndim() != 1 || a.shape(0) != c)
    fail(std::string(fn) + ": " + name + " has shape " + shape_str(a) + ", expected (" + i2s(c) +
         ",)");
}

inline void check_eps(const char* fn, double eps) {
  if (!(eps >= 0.0) || !std::isfinite(eps))
    fail(std::string(fn) + ": eps must be finite and >= 0, got " + std::to_string(eps));
}

// ---------------------------------------------------------------------------------------------
// Per-channel sums (bn_stats, bn_grad_stats, channel_sum), accumulated in double.  Kind:
//   0 channel_sum:   s1 = sum x
//   1 bn_stats:      s1 = sum (x - K), s2 = sum (x - K)^2   (K = shift per channel)
//   2 bn_grad_stats: s1 = sum dy,      s2 = sum dy * (x - K) (K = mean)
//
// x (and dy) are viewed as [N, R, Wc, C] (channels_last: NHWC, [N, C] with R = Wc = 1) or
// [N, C, R, Wc] (channel-major: [N, C, L] with R = L, Wc = 1; 5-D [N, C, D, ...] with R = D).
// Vertex rows are (c0, c1) or (c0, c1, n0, n1, h0, h1) (h over R): the planner may split the
// batch and rows too (reduce dims), each vertex then sums a box and the boxes covering a channel
// are added up here, in vertex-table order (deterministic whatever the thread count).
// ---------------------------------------------------------------------------------------------

struct RedGeom {
  int64_t N, C, R, Wc, M;
  bool cl;  // channels last
};

inline RedGeom red_geom(const char* fn, const py::array& x, int64_t C, int64_t rows, int64_t cols,
                 bool channels_last) {
  if (C < 0 || rows < 1 || cols < 1)
    fail(std::string(fn) + ": need C >= 0, rows >= 1 and cols >= 1, got C=" + i2s(C) +
         " rows=" + i2s(rows) + " cols=" + i2s(cols));
  const int64_t per = C * rows * cols;
  if ((per == 0 && x.size() != 0) || (per > 0 && x.size() % per != 0))
    fail(std::string(fn) + ": x " + shape_str(x) + " is not a whole number of [C=" + i2s(C) +
         ", rows=" + i2s(rows) + ", cols=" + i2s(cols) + "] blocks");
  RedGeom g{};
  g.C = C; g.R = rows; g.Wc = cols; g.cl = channels_last;
  g.N = per > 0 ? x.size() / per : 0;
  g.M = g.N * rows * cols;
  return g;
}

// Vertex rows as (c0, c1, n0, n1, h0, h1), checked; every channel a vertex names must be
// covered by boxes of total area N * R (a complete split of the reduction).
inline std::vector<int64_t> red_vertices(const char* fn, const IArr& vertices, const RedGeom& g) {
  if (vertices.ndim() != 2 || (vertices.shape(1) != 2 && vertices.shape(1) != 6))
    fail(std::string(fn) + ": vertices must be an int32 array of shape [V, 2] (c0, c1) or "
         "[V, 6] (c0, c1, n0, n1, h0, h1), got shape " + shape_str(vertices));
  const py::ssize_t V = vertices.shape(0), nc = vertices.shape(1);
  check_range_cols(vertices, 0, g.C, fn, "channel (c0, c1)");
  if (nc == 6) {
    check_range_cols(vertices, 2, g.N, fn, "batch (n0, n1)");
    check_range_cols(vertices, 4, g.R, fn, "row (h0, h1)");
  }
  std::vector<int64_t> t(size_t(V) * 6);
  std::vector<int64_t> vol(size_t(g.C) + 1, 0);
  const int32_t* p = vertices.data();
  for (py::ssize_t v = 0; v < V; ++v) {
    int64_t* r = &t[size_t(v) * 6];
    r[0] = p[v * nc]; r[1] = p[v * nc + 1];
    if (nc == 6) for (int j = 2; j < 6; ++j) r[j] = p[v * nc + j];
    else { r[2] = 0; r[3] = g.N; r[4] = 0; r[5] = g.R; }
    const int64_t area = (r[3] - r[2]) * (r[5] - r[4]);
    vol[r[0]] += area;
    vol[r[1]] -= area;
  }
  int64_t run = 0;
  for (int64_t c = 0; c < g.C; ++c) {
    run += vol[c];
    if (run != 0 && run != g.N * g.R)
      fail(std::string(fn) + ": the vertices' (n, h) boxes of channel " + i2s(c) + " cover " +
           i2s(run) + " of its " + i2s(g.N * g.R) + " (n, h) cells: not a complete split of "
           "the reduction");
  }
  return t;
}

// Channels-last sums over pixel rows [p0, p1) (row p at x + p * C), channels [c0, c1), added
// into s1 / s2 (indexed from c0).
template <int Kind>
inline void cl_sums(const float* __restrict x, const float* __restrict dy, const float* __restrict shift,
             int64_t C, int64_t p0, int64_t p1, int64_t c0, int64_t c1, double* __restrict s1o,
             double* __restrict s2o) {
  alignas(64) double s1[kCB], s2[kCB];
  alignas(64) float k[kCB];
  for (int64_t cb = c0; cb < c1; cb += kCB) {
    const int64_t nc = std::min(kCB, c1 - cb);
    for (int64_t c = 0; c < nc; ++c) {
      s1[c] = s1o[cb - c0 + c];
      s2[c] = Kind == 0 ? 0.0 : s2o[cb - c0 + c];
      k[c] = Kind == 0 ? 0.f : shift[cb + c];
    }
    for (int64_t row = p0; row < p1; ++row) {
      const float* xr = x + row * C + cb;
      if constexpr (Kind == 0) {
#pragma omp simd
        for (int64_t c = 0; c < nc; ++c) s1[c] += double(xr[c]);
      } else if constexpr (Kind == 1) {
#pragma omp simd
        for (int64_t c = 0; c < nc; ++c) {
          const double d = double(xr[c]) - double(k[c]);
          s1[c] += d;
          s2[c] += d * d;
        }
      } else {
        const float* dr = dy + row * C + cb;
#pragma omp simd
        for (int64_t c = 0; c < nc; ++c) {
          const double d = double(dr[c]);
          s1[c] += d;
          s2[c] += d * (double(xr[c]) - double(k[c]));
        }
      }
    }
    for (int64_t c = 0; c < nc; ++c) {
      s1o[cb - c0 + c] = s1[c];
      if (Kind != 0) s2o[cb - c0 + c] = s2[c];
    }
  }
}

// Channel-major sums of one contiguous run of one channel, added into a, b.
template <int Kind>
inline void cm_sums(const float* __restrict xr, const float* __restrict dr, int64_t len, double k,
             double& a_out, double& b_out) {
  double a = 0.0, b = 0.0;
  if constexpr (Kind == 0) {
#pragma omp simd reduction(+ : a)
    for (int64_t l = 0; l < len; ++l) a += double(xr[l]);
  } else if constexpr (Kind == 1) {
#pragma omp simd reduction(+ : a, b)
    for (int64_t l = 0; l < len; ++l) {
      const double d = double(xr[l]) - k;
      a += d;
      b += d * d;
    }
  } else {
#pragma omp simd reduction(+ : a, b)
    for (int64_t l = 0; l < len; ++l) {
      const double d = double(dr[l]);
      a += d;
      b += d * (double(xr[l]) - k);
    }
  }
  a_out += a;
  b_out += b;
}

// Runs the per-channel sums of every vertex box, each box split further into chunks of its
// (n, h) row groups so that one vertex (the host plan's usual single vertex over all channels)
// still uses every thread: the (chunk, vertex) tasks run in parallel (chunk-major: the vertices
// of one chunk run together and share its cache lines); then the partials are added per channel
// in (vertex, chunk) order and finish(c, s1, s2) is called once per covered channel (without
// the GIL).
constexpr int64_t kChunkElems = int64_t(1) << 16;  // elements of x per task, at least
constexpr int64_t kMaxChunks = 64;                  // tasks per vertex, at most

template <int Kind, class Finish>
void chan_reduce(const RedGeom& g, const float* x, const float* dy, const float* shift,
                 const std::vector<int64_t>& vt, Finish finish) {
  const int64_t V = int64_t(vt.size() / 6), C = g.C;
  std::vector<int64_t> nch(static_cast<size_t>(V)), gpc(nch), poff(static_cast<size_t>(V) + 1, 0);
  int64_t maxch = 0;
  for (int64_t v = 0; v < V; ++v) {
    const int64_t* r = &vt[size_t(v) * 6];
    const int64_t width = r[1] - r[0], groups = (r[3] - r[2]) * (r[5] - r[4]);
    int64_t n = 0, per = 1;
    if (width > 0 && groups > 0) {
      n = std::clamp<int64_t>((groups * g.Wc * width + kChunkElems - 1) / kChunkElems, 1,
                              std::min(kMaxChunks, groups));
      per = (groups + n - 1) / n;
      n = (groups + per - 1) / per;
    }
    nch[v] = n; gpc[v] = per;
    poff[v + 1] = poff[v] + n * std::max<int64_t>(width, 0);
    maxch = std::max(maxch, n);
  }
  std::vector<std::pair<int64_t, int64_t>> tasks;  // (vertex, chunk), chunk-major
  for (int64_t k = 0; k < maxch; ++k)
    for (int64_t v = 0; v < V; ++v)
      if (k < nch[v]) tasks.emplace_back(v, k);
  std::vector<double> p1(size_t(poff[V]), 0.0), p2(Kind == 0 ? 0 : size_t(poff[V]), 0.0);
  double* p1d = p1.data();
  double* p2d = p2.data();
  const int64_t T = int64_t(tasks.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t v = tasks[t].first, k = tasks[t].second;
    const int64_t* r = &vt[size_t(v) * 6];
    const int64_t c0 = r[0], c1 = r[1], hh = r[5] - r[4], width = c1 - c0;
    double* s1 = p1d + poff[v] + k * width;
    double* s2 = Kind == 0 ? nullptr : p2d + poff[v] + k * width;
    const int64_t j1 = std::min((r[3] - r[2]) * hh, (k + 1) * gpc[v]);
    for (int64_t j = k * gpc[v]; j < j1;) {  // runs of consecutive rows of one image
      const int64_t n = r[2] + j / hh, ha = r[4] + j % hh;
      const int64_t hb = std::min(r[5], ha + (j1 - j));
      if (g.cl) {
        cl_sums<Kind>(x, dy, shift, C, (n * g.R + ha) * g.Wc, (n * g.R + hb) * g.Wc, c0, c1, s1,
                      s2);
      } else {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t start = ((n * C + c) * g.R + ha) * g.Wc;
          double dummy = 0.0;
          cm_sums<Kind>(x + start, Kind == 2 ? dy + start : nullptr, (hb - ha) * g.Wc,
                        Kind == 0 ? 0.0 : double(shift[c]), s1[c - c0],
                        Kind == 0 ? dummy : s2[c - c0]);
        }
      }
      j += hb - ha;
    }
  }
  std::vector<double> a1(size_t(C), 0.0), a2(size_t(C), 0.0);
  std::vector<char> covered(size_t(C), 0);
  for (int64_t v = 0; v < V; ++v) {
    const int64_t c0 = vt[size_t(v) * 6], c1 = vt[size_t(v) * 6 + 1], width = c1 - c0;
    for (int64_t c = c0; c < c1; ++c) covered[c] = 1;
    for (int64_t k = 0; k < nch[v]; ++k)
      for (int64_t c = c0; c < c1; ++c) {
        a1[c] += p1d[poff[v] + k * width + c - c0];
        if (Kind != 0) a2[c] += p2d[poff[v] + k * width + c - c0];
      }
  }
  for (int64_t c = 0; c < C; ++c)
    if (covered[c]) finish(c, a1[c], a2[c]);
}

inline void check_out_2c(const char* fn, const py::array& out) {
  check_ndim(out, 2, fn, "out", "[2, C]");
  if (out.shape(0) != 2)
    fail(std::string(fn) + ": out has shape " + shape_str(out) + ", expected (2, C)");
}

}  // namespace chan
}  // namespace ipugraph
