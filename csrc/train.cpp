// Training codelets: pooling backward, batch norm in training mode (statistics, normalise,
// gradient statistics, backward), the running-statistics update, select and channel sums.
//
// Layouts.  4-D tensors are stored NHWC (channels contiguous); [N, C] row-major (channels
// contiguous too); [N, C, L] row-major.  The per-channel ops see any of them as a contiguous
// [outer, C, inner] array: inner = 1 for NHWC and [N, C], inner = L for [N, C, L]; the channel of
// flat element i is (i / inner) % C.
//
// Vertices:
//   pooling backward     (n0, n1, c0, c1, ih0, ih1): rows of dx; each vertex writes exactly its
//                        box of dx, so vertices never race.
//   per-channel sums     (c0, c1): bn_stats, bn_grad_stats, channel_sum (out [2, C] or [C]).
//   flat                 (start, end) element ranges of the output's storage: batch_norm_train,
//                        batch_norm_backward, running_stat_update, select_rows.
//
// Accuracy: the per-channel sums accumulate in double (one rounding of each float input, then
// an error of ~1e-16 * M relative), so batch statistics over 10^5..10^7 elements are correct to
// float32 rounding.  bn_stats shifts every channel by its first element before summing x and x^2
// (var = E[(x-K)^2] - E[x-K]^2 in double), so a large mean does not cancel the variance away.
#include "common.h"

#include <cmath>

namespace ipugraph {

namespace {

constexpr int64_t kCB = 64;  // channels per accumulator block

std::string i2s(int64_t v) { return std::to_string(v); }

// Fails if the byte ranges of a and b overlap (an output that is read from elsewhere).
void check_no_overlap(const char* fn, const py::array& out, const py::array& in, const char* what) {
  const char* ob = static_cast<const char*>(out.data());
  const char* ib = static_cast<const char*>(in.data());
  const size_t on = size_t(out.nbytes()), in_n = size_t(in.nbytes());
  if (on && in_n && ob < ib + in_n && ib < ob + on)
    fail(std::string(fn) + ": out " + shape_str(out) + " overlaps " + what + " " + shape_str(in));
}

// ---------------------------------------------------------------------------------------------
// Pooling backward.
// ---------------------------------------------------------------------------------------------

struct PoolBwdGeom {
  int64_t N, H, W, C, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw;
};

// dx is [N, H, W, C] (the output), dy [N, OH, OW, C]; OH, OW must follow from H, W.
PoolBwdGeom pool_bwd_checks(const char* fn, const py::array& dy, const py::array& dx,
                            const IArr& vertices, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                            int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  check_ndim(dy, 4, fn, "dy", "[N, OH, OW, C]");
  check_ndim(dx, 4, fn, "out", "[N, H, W, C]");
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0)
    fail(std::string(fn) + ": need kernel, stride, dilation >= 1 and padding >= 0, got kernel=(" +
         i2s(kh) + "," + i2s(kw) + ") stride=(" + i2s(sh) + "," + i2s(sw) + ") padding=(" +
         i2s(ph) + "," + i2s(pw) + ") dilation=(" + i2s(dh) + "," + i2s(dw) + ")");
  if (2 * ph > dh * (kh - 1) + 1 || 2 * pw > dw * (kw - 1) + 1)
    fail(std::string(fn) + ": padding must be at most half the (dilated) kernel, got padding=(" +
         i2s(ph) + "," + i2s(pw) + ") kernel=(" + i2s(kh) + "," + i2s(kw) + ")");
  PoolBwdGeom g{};
  g.N = dx.shape(0); g.H = dx.shape(1); g.W = dx.shape(2); g.C = dx.shape(3);
  g.kh = kh; g.kw = kw; g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw;
  const int64_t eh = g.H + 2 * ph - dh * (kh - 1) - 1, ew = g.W + 2 * pw - dw * (kw - 1) - 1;
  if (eh < 0 || ew < 0)
    fail(std::string(fn) + ": window larger than the padded input of out " + shape_str(dx));
  g.OH = eh / sh + 1; g.OW = ew / sw + 1;
  if (dy.shape(0) != g.N || dy.shape(1) != g.OH || dy.shape(2) != g.OW || dy.shape(3) != g.C)
    fail(std::string(fn) + ": dy has shape " + shape_str(dy) + ", expected (" + i2s(g.N) + ", " +
         i2s(g.OH) + ", " + i2s(g.OW) + ", " + i2s(g.C) + ") for out " + shape_str(dx));
  check_vertices(vertices, 6, fn);
  check_range_cols(vertices, 0, g.N, fn, "batch (n0, n1)");
  check_range_cols(vertices, 2, g.C, fn, "channel (c0, c1)");
  check_range_cols(vertices, 4, g.H, fn, "input row (ih0, ih1)");
  return g;
}

// Output rows [oh_lo, oh_hi) whose windows may have a tap in input rows [ih0, ih1).
inline void windows_touching(int64_t ih0, int64_t ih1, int64_t ext_k, int64_t s, int64_t p,
                             int64_t OH, int64_t* lo, int64_t* hi) {
  // window oh covers rows [oh*s - p, oh*s - p + ext_k); need oh*s - p + ext_k > ih0 and
  // oh*s - p < ih1.
  const int64_t a = ih0 + p - ext_k + 1;  // oh*s >= a
  int64_t l = a <= 0 ? 0 : (a + s - 1) / s;
  const int64_t b = ih1 - 1 + p;  // oh*s <= b
  int64_t h = b < 0 ? -1 : b / s;
  *lo = std::max<int64_t>(0, l);
  *hi = std::min<int64_t>(OH, h + 1);
  if (*hi < *lo) *hi = *lo;
}

// One vertex of max-pool backward: zero its box of dx, then for every window with a tap in its
// rows find the window's argmax per channel (torch's rule: the first in-bounds tap starts it, a
// later tap replaces it if strictly greater or NaN) and add dy to that tap if the vertex owns it.
void max_pool_bwd_vertex(const PoolBwdGeom& g, const float* __restrict x,
                         const float* __restrict dy, float* __restrict dx, const int32_t* vx) {
  const int64_t n0 = vx[0], n1 = vx[1], c0 = vx[2], c1 = vx[3], ih0 = vx[4], ih1 = vx[5];
  if (n0 >= n1 || c0 >= c1 || ih0 >= ih1) return;
  const int64_t C = g.C;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t ih = ih0; ih < ih1; ++ih)
      for (int64_t iw = 0; iw < g.W; ++iw)
        std::memset(dx + ((n * g.H + ih) * g.W + iw) * C + c0, 0, size_t(c1 - c0) * sizeof(float));
  int64_t oh_lo, oh_hi;
  windows_touching(ih0, ih1, g.dh * (g.kh - 1) + 1, g.sh, g.ph, g.OH, &oh_lo, &oh_hi);
  alignas(64) float mx[kCB];
  alignas(64) int32_t idx[kCB];
  // In-bounds taps of the current window: offset of the pixel in x / dx, and whether owned.
  std::vector<int64_t> tap_off(size_t(g.kh * g.kw));
  std::vector<char> tap_own(size_t(g.kh * g.kw));
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t oh = oh_lo; oh < oh_hi; ++oh)
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
        int nt = 0;
        bool any_own = false;
        for (int64_t r = 0; r < g.kh; ++r) {
          const int64_t ih = h0 + r * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          const bool own = ih >= ih0 && ih < ih1;
          for (int64_t s = 0; s < g.kw; ++s) {
            const int64_t iw = w0 + s * g.dw;
            if (iw < 0 || iw >= g.W) continue;
            tap_off[nt] = ((n * g.H + ih) * g.W + iw) * C;
            tap_own[nt] = own;
            any_own |= own;
            ++nt;
          }
        }
        if (!any_own || nt == 0) continue;
        const float* dyp = dy + ((n * g.OH + oh) * g.OW + ow) * C;
        for (int64_t cb = c0; cb < c1; cb += kCB) {
          const int64_t nc = std::min(kCB, c1 - cb);
          {
            const float* xp = x + tap_off[0] + cb;
#pragma omp simd
            for (int64_t c = 0; c < nc; ++c) { mx[c] = xp[c]; idx[c] = 0; }
          }
          for (int t = 1; t < nt; ++t) {
            const float* xp = x + tap_off[t] + cb;
#pragma omp simd
            for (int64_t c = 0; c < nc; ++c) {
              const float v = xp[c];
              const bool take = v > mx[c] || v != v;
              mx[c] = take ? v : mx[c];
              idx[c] = take ? t : idx[c];
            }
          }
          const float* d = dyp + cb;
          for (int t = 0; t < nt; ++t) {
            if (!tap_own[t]) continue;
            float* o = dx + tap_off[t] + cb;
#pragma omp simd
            for (int64_t c = 0; c < nc; ++c) o[c] += idx[c] == t ? d[c] : 0.f;
          }
        }
      }
}

void max_pool2d_backward_nhwc(const FArr& x, const FArr& dy, py::array out, const IArr& vertices,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                              int64_t pw, int64_t dh, int64_t dw) {
  const char* fn = "max_pool2d_backward_nhwc";
  float* o = out_ptr(out, fn);
  const PoolBwdGeom g = pool_bwd_checks(fn, dy, out, vertices, kh, kw, sh, sw, ph, pw, dh, dw);
  check_ndim(x, 4, fn, "x", "[N, H, W, C]");
  for (int d = 0; d < 4; ++d)
    if (x.shape(d) != out.shape(d))
      fail(std::string(fn) + ": x has shape " + shape_str(x) + ", expected out's " +
           shape_str(out));
  check_no_overlap(fn, out, x, "x");
  check_no_overlap(fn, out, dy, "dy");
  const py::ssize_t V = vertices.shape(0);
  const float* xp = x.data();
  const float* dyp = dy.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) max_pool_bwd_vertex(g, xp, dyp, o, vt + 6 * v);
}

// Avg-pool backward as a gather: dx[n, ih, iw, c] = sum over the windows (oh, ow) containing
// (ih, iw) of dy[n, oh, ow, c] / count(oh, ow).  count is separable: rows(oh) * cols(ow).
void avg_pool2d_backward_nhwc(const FArr& dy, py::array out, const IArr& vertices, int64_t kh,
                              int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                              bool count_include_pad) {
  const char* fn = "avg_pool2d_backward_nhwc";
  float* o = out_ptr(out, fn);
  const PoolBwdGeom g = pool_bwd_checks(fn, dy, out, vertices, kh, kw, sh, sw, ph, pw, 1, 1);
  check_no_overlap(fn, out, dy, "dy");
  // Reciprocal row / column window counts (torch: with count_include_pad the window clipped to
  // the padded input, else to the input).
  std::vector<float> rinv(static_cast<size_t>(g.OH)), cinv(static_cast<size_t>(g.OW));
  auto count = [&](int64_t start, int64_t k, int64_t ext, int64_t pad) {
    if (count_include_pad) return std::min(start + k, ext + pad) - start;
    return std::min(start + k, ext) - std::max<int64_t>(start, 0);
  };
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t c = count(oh * sh - ph, kh, g.H, ph);
    rinv[oh] = c > 0 ? float(1.0 / double(c)) : 0.f;
  }
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    const int64_t c = count(ow * sw - pw, kw, g.W, pw);
    cinv[ow] = c > 0 ? float(1.0 / double(c)) : 0.f;
  }
  const py::ssize_t V = vertices.shape(0);
  const float* dyp = dy.data();
  const int32_t* vt = vertices.data();
  const float* rp = rinv.data();
  const float* cp = cinv.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) {
    const int32_t* vx = vt + 6 * v;
    const int64_t C = g.C;
    alignas(64) float acc[kCB];
    for (int64_t n = vx[0]; n < vx[1]; ++n)
      for (int64_t ih = vx[4]; ih < vx[5]; ++ih) {
        int64_t oh_lo, oh_hi;
        windows_touching(ih, ih + 1, kh, sh, ph, g.OH, &oh_lo, &oh_hi);
        for (int64_t iw = 0; iw < g.W; ++iw) {
          int64_t ow_lo, ow_hi;
          windows_touching(iw, iw + 1, kw, sw, pw, g.OW, &ow_lo, &ow_hi);
          float* op = o + ((n * g.H + ih) * g.W + iw) * C;
          for (int64_t cb = vx[2]; cb < vx[3]; cb += kCB) {
            const int64_t nc = std::min(kCB, int64_t(vx[3]) - cb);
            for (int64_t c = 0; c < nc; ++c) acc[c] = 0.f;
            for (int64_t oh = oh_lo; oh < oh_hi; ++oh)
              for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
                const float w = rp[oh] * cp[ow];
                const float* d = dyp + ((n * g.OH + oh) * g.OW + ow) * C + cb;
#pragma omp simd
                for (int64_t c = 0; c < nc; ++c) acc[c] += d[c] * w;
              }
#pragma omp simd
            for (int64_t c = 0; c < nc; ++c) op[cb + c] = acc[c];
          }
        }
      }
  }
}

// ---------------------------------------------------------------------------------------------
// Per-channel layout checks.
// ---------------------------------------------------------------------------------------------

struct ChanGeom {
  int64_t outer, C, inner, M;  // M = outer * inner: elements per channel
};

ChanGeom chan_geom(const char* fn, const py::array& x, const char* xname, int64_t C,
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

void check_shape2(const char* fn, const py::array& a, const char* name, int64_t r, int64_t c) {
  if (a.ndim() != 2 || a.shape(0) != r || a.shape(1) != c)
    fail(std::string(fn) + ": " + name + " has shape " + shape_str(a) + ", expected (" + i2s(r) +
         ", " + i2s(c) + ")");
}

void check_shape1(const char* fn, const py::array& a, const char* name, int64_t c) {
  if (a.ndim() != 1 || a.shape(0) != c)
    fail(std::string(fn) + ": " + name + " has shape " + shape_str(a) + ", expected (" + i2s(c) +
         ",)");
}

void check_eps(const char* fn, double eps) {
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

RedGeom red_geom(const char* fn, const py::array& x, int64_t C, int64_t rows, int64_t cols,
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
std::vector<int64_t> red_vertices(const char* fn, const IArr& vertices, const RedGeom& g) {
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
void cl_sums(const float* __restrict x, const float* __restrict dy, const float* __restrict shift,
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
void cm_sums(const float* __restrict xr, const float* __restrict dr, int64_t len, double k,
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

void check_out_2c(const char* fn, const py::array& out) {
  check_ndim(out, 2, fn, "out", "[2, C]");
  if (out.shape(0) != 2)
    fail(std::string(fn) + ": out has shape " + shape_str(out) + ", expected (2, C)");
}

void channel_sum(const FArr& x, py::array out, int64_t rows, int64_t cols, bool channels_last,
                 const IArr& vertices) {
  const char* fn = "channel_sum";
  float* o = out_ptr(out, fn);
  check_ndim(out, 1, fn, "out", "[C]");
  const RedGeom g = red_geom(fn, x, out.shape(0), rows, cols, channels_last);
  const std::vector<int64_t> vt = red_vertices(fn, vertices, g);
  check_no_overlap(fn, out, x, "x");
  const float* xp = x.data();
  py::gil_scoped_release nogil;
  chan_reduce<0>(g, xp, nullptr, nullptr, vt,
                 [&](int64_t c, double s1, double) { o[c] = float(s1); });
}

void bn_stats(const FArr& x, py::array out, int64_t rows, int64_t cols, bool channels_last,
              const IArr& vertices) {
  const char* fn = "bn_stats";
  float* o = out_ptr(out, fn);
  check_out_2c(fn, out);
  const RedGeom g = red_geom(fn, x, out.shape(1), rows, cols, channels_last);
  const std::vector<int64_t> vt = red_vertices(fn, vertices, g);
  check_no_overlap(fn, out, x, "x");
  const float* xp = x.data();
  const int64_t C = g.C;
  // Shift: the first element of each channel (keeps E[x^2] - E[x]^2 from cancelling).
  std::vector<float> shift(static_cast<size_t>(C), 0.f);
  if (g.M > 0)
    for (int64_t c = 0; c < C; ++c) shift[c] = xp[g.cl ? c : c * g.R * g.Wc];
  const float* sh = shift.data();
  const double M = double(g.M);
  py::gil_scoped_release nogil;
  chan_reduce<1>(g, xp, nullptr, sh, vt, [&](int64_t c, double s1, double s2) {
    const double m1 = s1 / M;  // M == 0: NaN, as torch's mean of nothing
    const double var = s2 / M - m1 * m1;
    o[c] = float(double(sh[c]) + m1);
    o[C + c] = float(var > 0.0 ? var : (var == var ? 0.0 : var));
  });
}

void bn_grad_stats(const FArr& dy, const FArr& x, const FArr& stats, py::array out, int64_t rows,
                   int64_t cols, bool channels_last, double eps, const IArr& vertices) {
  const char* fn = "bn_grad_stats";
  float* o = out_ptr(out, fn);
  check_out_2c(fn, out);
  const RedGeom g = red_geom(fn, x, out.shape(1), rows, cols, channels_last);
  check_same_size(fn, dy, "dy", x, "x");
  check_shape2(fn, stats, "stats", 2, g.C);
  check_eps(fn, eps);
  const std::vector<int64_t> vt = red_vertices(fn, vertices, g);
  check_no_overlap(fn, out, x, "x");
  check_no_overlap(fn, out, dy, "dy");
  check_no_overlap(fn, out, stats, "stats");
  const float* xp = x.data();
  const float* dp = dy.data();
  const float* sp = stats.data();
  const int64_t C = g.C;
  py::gil_scoped_release nogil;
  chan_reduce<2>(g, xp, dp, sp, vt, [&](int64_t c, double s1, double s2) {
    o[c] = float(s1);
    o[C + c] = float(s2 / std::sqrt(double(sp[C + c]) + eps));
  });
}


// ---------------------------------------------------------------------------------------------
// Flat per-channel maps: out[i] = p[c] * dy[i] + q[c] * (x[i] - m[c]) + r[c], c = channel of i.
// batch_norm_train: p = 0 (no dy), q = gamma * invstd, m = mean, r = beta.
// batch_norm_backward: p = gamma * invstd, q = -p * invstd * gstats[1] / M, r = -p * gstats[0] / M.
// out may alias x or dy (every element is read before it is written at the same index).
// ---------------------------------------------------------------------------------------------

template <bool HasDy>
void chan_map_range(const ChanGeom& g, const float* x, const float* dy, const float* p,
                    const float* q, const float* m, const float* r, float* out, int64_t i,
                    int64_t i1) {
  const int64_t C = g.C;
  if (g.inner == 1) {
    while (i < i1) {
      const int64_t c0 = i % C;
      const int64_t n = std::min(C - c0, i1 - i);
      const float* xr = x + i - c0;
      const float* dr = HasDy ? dy + i - c0 : nullptr;
      float* orow = out + i - c0;
      if constexpr (HasDy) {
#pragma omp simd
        for (int64_t c = c0; c < c0 + n; ++c)
          orow[c] = p[c] * dr[c] + q[c] * (xr[c] - m[c]) + r[c];
      } else {
#pragma omp simd
        for (int64_t c = c0; c < c0 + n; ++c) orow[c] = q[c] * (xr[c] - m[c]) + r[c];
      }
      i += n;
    }
    return;
  }
  const int64_t L = g.inner;
  while (i < i1) {
    const int64_t l0 = i % L, c = (i / L) % C;
    const int64_t n = std::min(L - l0, i1 - i);
    const float pc = HasDy ? p[c] : 0.f, qc = q[c], mc = m[c], rc = r[c];
    if constexpr (HasDy) {
#pragma omp simd
      for (int64_t j = i; j < i + n; ++j) out[j] = pc * dy[j] + qc * (x[j] - mc) + rc;
    } else {
#pragma omp simd
      for (int64_t j = i; j < i + n; ++j) out[j] = qc * (x[j] - mc) + rc;
    }
    i += n;
  }
}

void batch_norm_train(const FArr& x, const FArr& gamma, const FArr& beta, const FArr& stats,
                      py::array out, int64_t inner, double eps, const IArr& vertices) {
  const char* fn = "batch_norm_train";
  float* o = out_ptr(out, fn);
  check_ndim(gamma, 1, fn, "gamma", "[C]");
  const int64_t C = gamma.shape(0);
  const ChanGeom g = chan_geom(fn, x, "x", C, inner);
  check_same_size(fn, x, "x", out, "out");
  check_shape1(fn, beta, "beta", C);
  check_shape2(fn, stats, "stats", 2, C);
  check_eps(fn, eps);
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  std::vector<float> q(static_cast<size_t>(C)), m(q), r(q);
  const float* gp = gamma.data();
  const float* bp = beta.data();
  const float* sp = stats.data();
  for (int64_t c = 0; c < C; ++c) {
    q[c] = float(double(gp[c]) / std::sqrt(double(sp[C + c]) + eps));
    m[c] = sp[c];
    r[c] = bp[c];
  }
  const float* xp = x.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v)
    chan_map_range<false>(g, xp, nullptr, nullptr, q.data(), m.data(), r.data(), o, vt[2 * v],
                          vt[2 * v + 1]);
}

void batch_norm_backward(const FArr& dy, const FArr& x, const FArr& gamma, const FArr& stats,
                         const FArr& gstats, py::array out, int64_t inner, double eps,
                         const IArr& vertices) {
  const char* fn = "batch_norm_backward";
  float* o = out_ptr(out, fn);
  check_ndim(gamma, 1, fn, "gamma", "[C]");
  const int64_t C = gamma.shape(0);
  const ChanGeom g = chan_geom(fn, x, "x", C, inner);
  check_same_size(fn, x, "x", out, "out");
  check_same_size(fn, dy, "dy", out, "out");
  check_shape2(fn, stats, "stats", 2, C);
  check_shape2(fn, gstats, "gstats", 2, C);
  check_eps(fn, eps);
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  std::vector<float> p(static_cast<size_t>(C)), q(p), m(p), r(p);
  const float* gp = gamma.data();
  const float* sp = stats.data();
  const float* gs = gstats.data();
  const double M = double(g.M);
  for (int64_t c = 0; c < C; ++c) {
    const double invstd = 1.0 / std::sqrt(double(sp[C + c]) + eps);
    const double k = double(gp[c]) * invstd;
    p[c] = float(k);
    q[c] = float(-k * invstd * double(gs[C + c]) / M);
    r[c] = float(-k * double(gs[c]) / M);
    m[c] = sp[c];
  }
  const float* xp = x.data();
  const float* dp = dy.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v)
    chan_map_range<true>(g, xp, dp, p.data(), q.data(), m.data(), r.data(), o, vt[2 * v],
                         vt[2 * v + 1]);
}

// out[c] = (1 - momentum) * running[c] + momentum * stat[c], stat = stats[0] (row 0) or
// stats[1] * count / (count - 1) (row 1: torch's unbiased running variance).
void running_stat_update(const FArr& running, const FArr& stats, py::array out, int64_t row,
                         double momentum, int64_t count, const IArr& vertices) {
  const char* fn = "running_stat_update";
  float* o = out_ptr(out, fn);
  check_ndim(running, 1, fn, "running", "[C]");
  const int64_t C = running.shape(0);
  check_shape1(fn, out, "out", C);
  check_shape2(fn, stats, "stats", 2, C);
  if (row != 0 && row != 1) fail(std::string(fn) + ": row must be 0 or 1, got " + i2s(row));
  if (!std::isfinite(momentum))
    fail(std::string(fn) + ": momentum must be finite, got " + std::to_string(momentum));
  if (row == 1 && count < 2)
    fail(std::string(fn) + ": the unbiased variance needs count >= 2 values per channel, got " +
         i2s(count));
  const py::ssize_t V = check_flat_vertices(vertices, C, fn);
  const double corr = row == 1 ? double(count) / double(count - 1) : 1.0;
  const float a = float(1.0 - momentum), b = float(momentum * corr);
  const float* rp = running.data();
  const float* sp = stats.data() + row * C;
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
  for (py::ssize_t v = 0; v < V; ++v) {  // C elements: not worth threads
#pragma omp simd
    for (int64_t i = vt[2 * v]; i < vt[2 * v + 1]; ++i) o[i] = a * rp[i] + b * sp[i];
  }
}

// out (flat, S elements) = t[index] with t viewed as [R, S] row-major.
void select_rows(const FArr& t, py::array out, int64_t index, const IArr& vertices) {
  const char* fn = "select_rows";
  float* o = out_ptr(out, fn);
  if (t.ndim() < 1) fail(std::string(fn) + ": t must have at least one axis, got a scalar");
  const int64_t R = t.shape(0), S = out.size();
  if (R * S != t.size())
    fail(std::string(fn) + ": t " + shape_str(t) + " is not [R, out.size] for out " +
         shape_str(out));
  if (index < 0 || index >= R)
    fail(std::string(fn) + ": index " + i2s(index) + " outside [0, " + i2s(R) + ") of t " +
         shape_str(t));
  const py::ssize_t V = check_flat_vertices(vertices, S, fn);
  check_no_overlap(fn, out, t, "t");
  const float* src = t.data() + index * S;
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) {
    const int64_t i0 = vt[2 * v], i1 = vt[2 * v + 1];
    if (i1 > i0) std::memcpy(o + i0, src + i0, size_t(i1 - i0) * sizeof(float));
  }
}

}  // namespace

void register_train(py::module& m) {
  m.def("max_pool2d_backward_nhwc", &max_pool2d_backward_nhwc, py::arg("x"), py::arg("dy"),
        py::arg("out"), py::arg("vertices"), py::arg("kh"), py::arg("kw"), py::arg("sh"),
        py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh") = 1, py::arg("dw") = 1,
        "dx of torch max_pool2d (ceil_mode=False) on NHWC x [N,H,W,C], dy [N,OH,OW,C]: each "
        "window's dy goes to its first maximum (torch's tie rule); vertex rows "
        "(n0,n1,c0,c1,ih0,ih1) are boxes of dx, each written whole by its vertex.");
  m.def("avg_pool2d_backward_nhwc", &avg_pool2d_backward_nhwc, py::arg("dy"), py::arg("out"),
        py::arg("vertices"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
        py::arg("ph"), py::arg("pw"), py::arg("count_include_pad") = true,
        "dx [N,H,W,C] of torch avg_pool2d (ceil_mode=False) from dy [N,OH,OW,C]; vertex rows "
        "(n0,n1,c0,c1,ih0,ih1) are boxes of dx.");
  m.def("bn_stats", &bn_stats, py::arg("x"), py::arg("out"), py::arg("rows"), py::arg("cols"),
        py::arg("channels_last"), py::arg("vertices"),
        "out[0, c] = mean, out[1, c] = biased variance of channel c (C = out.shape[1]) of x "
        "viewed as [N, rows, cols, C] (channels_last) or [N, C, rows, cols]; vertex rows (c0, c1) "
        "or (c0, c1, n0, n1, h0, h1) (h over rows): boxes whose sums are added per channel.");
  m.def("batch_norm_train", &batch_norm_train, py::arg("x"), py::arg("gamma"), py::arg("beta"),
        py::arg("stats"), py::arg("out"), py::arg("inner"), py::arg("eps"), py::arg("vertices"),
        "out = (x - stats[0]) / sqrt(stats[1] + eps) * gamma + beta per channel "
        "((i / inner) % C) over flat element ranges (start, end).");
  m.def("bn_grad_stats", &bn_grad_stats, py::arg("dy"), py::arg("x"), py::arg("stats"),
        py::arg("out"), py::arg("rows"), py::arg("cols"), py::arg("channels_last"),
        py::arg("eps"), py::arg("vertices"),
        "out[0, c] = sum dy, out[1, c] = sum dy * xhat per channel; layout and vertex rows as "
        "bn_stats.");
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("dy"), py::arg("x"),
        py::arg("gamma"), py::arg("stats"), py::arg("gstats"), py::arg("out"), py::arg("inner"),
        py::arg("eps"), py::arg("vertices"),
        "dx = gamma * invstd * (dy - (gstats[0] + xhat * gstats[1]) / M) over flat element "
        "ranges (start, end); M = x.size / C.");
  m.def("running_stat_update", &running_stat_update, py::arg("running"), py::arg("stats"),
        py::arg("out"), py::arg("row"), py::arg("momentum"), py::arg("count"),
        py::arg("vertices"),
        "out = (1 - momentum) * running + momentum * stat (row 0: mean; row 1: unbiased "
        "variance stats[1] * count / (count - 1)) over element ranges (start, end).");
  m.def("select_rows", &select_rows, py::arg("t"), py::arg("out"), py::arg("index"),
        py::arg("vertices"),
        "out.flat = t[index].flat with t viewed as [R, out.size], over element ranges.");
  m.def("channel_sum", &channel_sum, py::arg("x"), py::arg("out"), py::arg("rows"),
        py::arg("cols"), py::arg("channels_last"), py::arg("vertices"),
        "out[c] = sum of channel c (C = out.size) of x, in double; layout and vertex rows as "
        "bn_stats.");
}

}  // namespace ipugraph
