// Pooling over NHWC activations.  C is the contiguous axis, so every window tap is a run of
// channels: the loops run over a block of up to 64 channels kept in a local accumulator (it stays
// in registers / L1) and the compiler vectorises the channel loop.
// Vertices: (n0, n1, c0, c1, oh0, oh1) for max/avg (all output columns), (n0, n1, c0, c1) global.
#include "common.h"

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
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) pool_vertex<true>(g, xp, o, vt + 6 * v, false);
}

void avg_pool2d_nhwc(const FArr& x, py::array out, const IArr& vertices, int64_t kh, int64_t kw,
                     int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool count_include_pad) {
  const char* fn = "avg_pool2d_nhwc";
  float* o = out_ptr(out, fn);
  const PoolGeom g = pool_checks(fn, x, out, vertices, kh, kw, sh, sw, ph, pw, 1, 1);
  const py::ssize_t V = vertices.shape(0);
  const float* xp = x.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) pool_vertex<false>(g, xp, o, vt + 6 * v, count_include_pad);
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
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) {
    const int32_t* vx = vt + 4 * v;
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
  }
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
}

}  // namespace ipugraph
