// Pooling over NHWC activations.  C is the contiguous axis, so every window tap is a run of
// channels: the loops run over a block of up to 64 channels kept in a local accumulator (it stays
// in registers / L1) and the compiler vectorises the channel loop.
// Vertices: (n0, n1, c0, c1, oh0, oh1) for max/avg (all output columns), (n0, n1, c0, c1) global.
#include "channel.h"

namespace ipugraph {

namespace {

constexpr int64_t kCB = 64;  // channels per accumulator block

struct PoolGeom {
  int64_t N, H, W, C, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw;
};

PoolGeom pool_checks(const char* fn, const FArr& x, const py::array& out, const IArr& vertices,
                     int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                     int64_t dh, int64_t dw) {
  check_ndim(x, 4, fn, "x", "[N, H, W, C]");
  check_ndim(out, 4, fn, "out", "[N, OH, OW, C]");
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0)
    fail(std::string(fn) + ": need kernel, stride, dilation >= 1 and padding >= 0, got kernel=(" +
         std::to_string(kh) + "," + std::to_string(kw) + ") stride=(" + std::to_string(sh) + "," +
         std::to_string(sw) + ") padding=(" + std::to_string(ph) + "," + std::to_string(pw) + ")");
  PoolGeom g{};
  g.N = x.shape(0); g.H = x.shape(1); g.W = x.shape(2); g.C = x.shape(3);
  g.kh = kh; g.kw = kw; g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw;
  if (2 * ph > dh * (kh - 1) + 1 || 2 * pw > dw * (kw - 1) + 1)
    fail(std::string(fn) + ": padding must be at most half the (dilated) kernel, got padding=(" +
         std::to_string(ph) + "," + std::to_string(pw) + ") kernel=(" + std::to_string(kh) + "," +
         std::to_string(kw) + ")");
  const int64_t eh = g.H + 2 * ph - dh * (kh - 1) - 1, ew = g.W + 2 * pw - dw * (kw - 1) - 1;
  if (eh < 0 || ew < 0)
    fail(std::string(fn) + ": window larger than the padded input of x " + shape_str(x));
  g.OH = eh / sh + 1; g.OW = ew / sw + 1;
  if (out.shape(0) != g.N || out.shape(1) != g.OH || out.shape(2) != g.OW || out.shape(3) != g.C)
    fail(std::string(fn) + ": out has shape " + shape_str(out) + ", expected (" +
         std::to_string(g.N) + ", " + std::to_string(g.OH) + ", " + std::to_string(g.OW) + ", " +
         std::to_string(g.C) + ") for x " + shape_str(x));
  check_vertices(vertices, 6, fn);
  check_range_cols(vertices, 0, g.N, fn, "batch (n0, n1)");
  check_range_cols(vertices, 2, g.C, fn, "channel (c0, c1)");
  check_range_cols(vertices, 4, g.OH, fn, "row (oh0, oh1)");
  return g;
}

template <bool IsMax>
void pool_vertex(const PoolGeom& g, const float* __restrict x, float* __restrict out,
                 const int32_t* vx, bool count_include_pad) {
  const int64_t n0 = vx[0], n1 = vx[1], c0 = vx[2], c1 = vx[3], oh0 = vx[4], oh1 = vx[5];
  alignas(64) float acc[kCB];
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
        float* o = out + ((n * g.OH + oh) * g.OW + ow) * g.C;
        for (int64_t cb = c0; cb < c1; cb += kCB) {
          const int64_t nc = std::min(kCB, c1 - cb);
          for (int64_t c = 0; c < nc; ++c)
            acc[c] = IsMax ? -std::numeric_limits<float>::infinity() : 0.f;
          int64_t cnt = 0;
          for (int64_t r = 0; r < g.kh; ++r) {
            const int64_t ih = h0 + r * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t s = 0; s < g.kw; ++s) {
              const int64_t iw = w0 + s * g.dw;
              if (iw < 0 || iw >= g.W) continue;
              ++cnt;
              const float* xp = x + ((n * g.H + ih) * g.W + iw) * g.C + cb;
              if (IsMax) {
                // torch semantics: NaN wins.
                for (int64_t c = 0; c < nc; ++c) {
                  const float v = xp[c];
                  acc[c] = (v > acc[c] || v != v) ? v : acc[c];
                }
              } else {
                for (int64_t c = 0; c < nc; ++c) acc[c] += xp[c];
              }
            }
          }
          if (IsMax) {
            for (int64_t c = 0; c < nc; ++c) o[cb + c] = acc[c];
          } else {
            // count_include_pad: torch divides by the window clipped to the padded input.
            int64_t div = cnt;
            if (count_include_pad) {
              const int64_t hend = std::min(h0 + g.kh, g.H + g.ph), wend = std::min(w0 + g.kw, g.W + g.pw);
              div = (hend - h0) * (wend - w0);
            }
            const float inv = div > 0 ? 1.f / float(div) : 0.f;
            for (int64_t c = 0; c < nc; ++c) o[cb + c] = acc[c] * inv;
          }
        }
      }
}

void max_pool2d_nhwc(const FArr& x, py::array out, const IArr& vertices, int64_t kh, int64_t kw,
                     int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  const char* fn = "max_pool2d_nhwc";
  float* o = out_ptr(out, fn);
  const PoolGeom g = pool_checks(fn, x, out, vertices, kh, kw, sh, sw, ph, pw, dh, dw);
  const py::ssize_t V = vertices.shape(0);
  const float* xp = x.data();
  const int32_t* vt = vertices.data();
  for_each_vertex(vt, V, 6, [&](const int32_t* row, int) {
    pool_vertex<true>(g, xp, o, row, false);
  });
}

void avg_pool2d_nhwc(const FArr& x, py::array out, const IArr& vertices, int64_t kh, int64_t kw,
                     int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool count_include_pad) {
  const char* fn = "avg_pool2d_nhwc";
  float* o = out_ptr(out, fn);
  const PoolGeom g = pool_checks(fn, x, out, vertices, kh, kw, sh, sw, ph, pw, 1, 1);
  const py::ssize_t V = vertices.shape(0);
  const float* xp = x.data();
  const int32_t* vt = vertices.data();
  for_each_vertex(vt, V, 6, [&](const int32_t* row, int) {
    pool_vertex<false>(g, xp, o, row, count_include_pad);
  });
}

// Mean over H*W, accumulated in double (H*W can be large), channels vectorised.
void global_avg_pool_nhwc(const FArr& x, py::array out, const IArr& vertices) {
  const char* fn = "global_avg_pool_nhwc";
  float* o = out_ptr(out, fn);
  check_ndim(x, 4, fn, "x", "[N, H, W, C]");
  check_ndim(out, 2, fn, "out", "[N, C]");
  const int64_t N = x.shape(0), HW = x.shape(1) * x.shape(2), C = x.shape(3);
  if (out.shape(0) != N || out.shape(1) != C)
    fail(std::string(fn) + ": out has shape " + shape_str(out) + ", expected (" +
         std::to_string(N) + ", " + std::to_string(C) + ") for x " + shape_str(x));
  const py::ssize_t V = check_vertices(vertices, 4, fn);
  check_range_cols(vertices, 0, N, fn, "batch (n0, n1)");
  check_range_cols(vertices, 2, C, fn, "channel (c0, c1)");
  const float* xp = x.data();
  const int32_t* vt = vertices.data();
  for_each_vertex(vt, V, 4, [&](const int32_t* vx, int) {
    alignas(64) double acc[kCB];
    const double inv = HW > 0 ? 1.0 / double(HW) : 0.0;
    for (int64_t n = vx[0]; n < vx[1]; ++n)
      for (int64_t cb = vx[2]; cb < vx[3]; cb += kCB) {
        const int64_t nc = std::min<int64_t>(kCB, vx[3] - cb);
        for (int64_t c = 0; c < nc; ++c) acc[c] = 0.0;
        const float* base = xp + n * HW * C + cb;
        for (int64_t i = 0; i < HW; ++i)
          for (int64_t c = 0; c < nc; ++c) acc[c] += double(base[i * C + c]);
        for (int64_t c = 0; c < nc; ++c) o[n * C + cb + c] = float(acc[c] * inv);
      }
  });
}

using chan::i2s;

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
  for_each_vertex(vt, V, 6, [&](const int32_t* row, int) {
    max_pool_bwd_vertex(g, xp, dyp, o, row);
  });
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
  for_each_vertex(vt, V, 6, [&](const int32_t* vx, int) {
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
  });
}


}  // namespace

void register_pool(py::module& m) {
  m.def("max_pool2d_nhwc", &max_pool2d_nhwc, py::arg("x"), py::arg("out"), py::arg("vertices"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
        py::arg("dh") = 1, py::arg("dw") = 1,
        "torch max_pool2d (ceil_mode=False) on NHWC; vertex rows (n0,n1,c0,c1,oh0,oh1).");
  m.def("avg_pool2d_nhwc", &avg_pool2d_nhwc, py::arg("x"), py::arg("out"), py::arg("vertices"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
        py::arg("count_include_pad") = true,
        "torch avg_pool2d (ceil_mode=False) on NHWC; vertex rows (n0,n1,c0,c1,oh0,oh1).");
  m.def("global_avg_pool_nhwc", &global_avg_pool_nhwc, py::arg("x"), py::arg("out"),
        py::arg("vertices"), "out[n, c] = mean over (h, w) of x[n, h, w, c]; rows (n0,n1,c0,c1).");
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
}

}  // namespace ipugraph
