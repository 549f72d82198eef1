// The weight gradient of a 3x3 stride-1 conv by Winograd: dw[k, c] (3x3) = sum over the
// output pixels (i, j) of x[c, i + r, j + s] dy[k, i, j], taken over 2x2 tiles of dy.
//
// F(2x2, 3x3) computes y = A^T [(G g G^T) (.) (B^T d B)] A. Read as a trilinear form in
// (y, g, d), its derivative in g is the weight gradient of one tile:
//     dw_tile = G^T [ (A dy A^T) (.) (B^T x B) ] G
// (F(2x2, 3x3) as in Lavin & Gray, CVPR 2016; transposing its bilinear algorithm -- the
// transposition, or matrix-exchange, principle -- gives F(3x3, 2x2)). The sum over tiles
// commutes with G^T . G, so per position xi of the 4x4 domain it is one GEMM over the tiles t:
//     M[xi][k][c] = sum_t D[xi][t][k] X[xi][t][c],  D = A dy A^T,  X = B^T x B,
// 16 multiplications per (tile, k, c) instead of 36: 2.25x fewer. The transforms use 0, +-1 and
// 1/2 only, so the result is the direct sum's but for rounding.
//
// One vertex (k0, k1, c0, c1) takes every tile, TB at a time: X and D of the block (row-major
// over tiles, channels padded by gemm_tn::spread_stride) then the 16 GEMMs on the weight-
// gradient microkernel (gemm_tn.h), accumulating into M; at the end G^T M G into the vertex's
// box of out [K, 3, 3, C].
#include "common.h"
#include "gemm_tn.h"
#include "winograd.h"

namespace ipugraph {

namespace {

using gemm_tn::get_wg_kernel;
using gemm_tn::kWLanes;
using gemm_tn::spread_stride;
using gemm_tn::wg_rows;
using wino::V16;
using wino::Wino;

constexpr int kXi = 16;                     // positions of the 4x4 transformed domain
constexpr int64_t kL2Floats = (1 << 20) / 4;   // X + D of a block kept in L2 (1 MB)
constexpr int64_t kBlockFloats = 2 << 20;      // the most X + D of one block (8 MB)

// Tiles per block for a vertex of KL x CLp channels over T tiles (row strides ps, kd). X and
// D (4x the data they transform) are written and read back once: within L2 when a block fits
// it; the accumulators M (16 x KL x CLp) are re-read and re-written once per block: free while
// M fits L2 too, else a few large blocks cost less than many small ones.
int64_t grad_tile_block(int64_t T, int64_t KL, int64_t CLp, int64_t ps, int64_t kd) {
  const int64_t per_tile = kXi * (ps + kd);
  auto fit = [&](int64_t floats) {  // tiles of a block of `floats`: >= 6 and <= T (>= 1)
    return std::max<int64_t>(1, std::min(T, std::max<int64_t>(6, floats / per_tile)));
  };
  const int64_t small = fit(kL2Floats);
  const int64_t m = kXi * KL * CLp;
  if (m <= kL2Floats || small >= T) return small;
  const int64_t all = fit(kBlockFloats);
  const double cost_small = double((T + small - 1) / small) * 2.0 * double(m);
  const double cost_all = double((T + all - 1) / all) * 2.0 * double(m) +
                          2.0 * double(per_tile) * double(T);
  return cost_all < cost_small ? all : small;
}

struct GGeom {
  int64_t N, H, W, C, K, OH, OW, ph, pw, TH, TW, T;
};

// A vertex's channel counts, padded row strides of X (ps) and D (kd), and tiles per block.
struct GLayout {
  int64_t KL, CL, CLp, ps, kd, TB;
};

GLayout grad_layout(const GGeom& g, const int32_t* vx) {
  GLayout l{};
  l.KL = int64_t(vx[1]) - vx[0];
  l.CL = int64_t(vx[3]) - vx[2];
  l.CLp = (l.CL + 15) / 16 * 16;
  l.ps = spread_stride(l.CLp);
  l.kd = spread_stride((l.KL + 15) / 16 * 16);
  l.TB = grad_tile_block(g.T, l.KL, l.CLp, l.ps, l.kd);
  return l;
}

// A dy A^T for one column pair (dy rows 0, 1): A = [[1,0],[1,1],[1,-1],[0,-1]].
inline void a_col(V16 y0, V16 y1, V16* r) {
  r[0] = y0;
  r[1] = y0 + y1;
  r[2] = y0 - y1;
  r[3] = V16::zero() - y1;
}

// G^T m for one column of 4: G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]].
inline void gt_col(const V16* m, V16* r) {
  const V16 s = m[1] + m[2], d = m[1] - m[2];
  r[0] = V16::fma(s, 0.5f, m[0]);
  r[1] = V16::fma(d, 0.5f, V16::zero());
  r[2] = V16::fma(s, 0.5f, m[3]);
}

// 16 lanes of channel block [c, c + n) at pixel p (zero-padded to 16 in tmp when n < 16).
inline const float* lanes16(const float* p, int64_t n, float* tmp) {
  if (n >= 16) return p;
  for (int l = 0; l < 16; ++l) tmp[l] = l < n ? p[l] : 0.f;
  return tmp;
}

struct GScratch {
  float *X, *D, *M;
};

// dw = G^T M G for k < KL and c < CL, into out[k0 + k, r, s, c0 + c]; M[xi] at xi * mstride,
// row k at k * ldm.
void output_transform(const GGeom& g, const float* M, int64_t mstride, int64_t ldm, int64_t KL,
                      int64_t CL, int64_t k0, int64_t c0, float* out) {
  alignas(64) float tmp[16];
  for (int64_t k = 0; k < KL; ++k)
    for (int64_t c = 0; c < CL; c += 16) {
      const int64_t nc = std::min<int64_t>(16, CL - c);
      V16 m[4], cols[4][3], r[3];
      for (int j = 0; j < 4; ++j) {       // G^T over rows, column by column
        for (int i = 0; i < 4; ++i) m[i] = V16::load(M + (i * 4 + j) * mstride + k * ldm + c);
        gt_col(m, cols[j]);
      }
      for (int rr = 0; rr < 3; ++rr) {    // then over columns
        for (int j = 0; j < 4; ++j) m[j] = cols[j][rr];
        gt_col(m, r);
        for (int s = 0; s < 3; ++s) {
          float* o = out + (((k0 + k) * 3 + rr) * 3 + s) * g.C + c0 + c;
          if (nc == 16) {
            r[s].store(o);
          } else {
            r[s].store(tmp);
            std::copy_n(tmp, nc, o);
          }
        }
      }
    }
}

void grad_vertex(const GGeom& g, const float* x, const float* dy, float* out, const int32_t* vx,
                 const float* zeros, const GScratch& sc) {
  const int64_t k0 = vx[0], c0 = vx[2];
  const GLayout l = grad_layout(g, vx);
  const int64_t KL = l.KL, CL = l.CL, CLp = l.CLp, ps = l.ps, kd = l.kd, TB = l.TB;
  if (KL <= 0 || CL <= 0) return;
  float* M = sc.M;                           // [16][KL][CLp]
  std::fill_n(M, kXi * KL * CLp, 0.f);
  alignas(64) float tmp[kXi * 16], pad[16 * 16];
  for (int64_t t0 = 0; t0 < g.T; t0 += TB) {
    const int64_t nt = std::min(TB, g.T - t0);
    for (int64_t t = 0; t < nt; ++t) {
      const int64_t tile = t0 + t, n = tile / (g.TH * g.TW);
      const int64_t th = tile / g.TW % g.TH, tw = tile % g.TW;
      // X = B^T x B over the 4x4 input patch (rows 2th - ph + i, columns 2tw - pw + j).
      const float* px[16];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const int64_t ih = 2 * th - g.ph + i, iw = 2 * tw - g.pw + j;
          px[i * 4 + j] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                              ? x + ((n * g.H + ih) * g.W + iw) * g.C + c0 : zeros;
        }
      for (int64_t c = 0; c < CL; c += 16) {
        const int64_t nc = std::min<int64_t>(16, CL - c);
        V16 col[4], r[4];
        for (int j = 0; j < 4; ++j) {
          for (int i = 0; i < 4; ++i)
            col[i] = V16::load(px[i * 4 + j] == zeros ? zeros
                                                      : lanes16(px[i * 4 + j] + c, nc, pad + 16 * i));
          Wino<2>::bt(col, r);
          for (int i = 0; i < 4; ++i) r[i].store(tmp + (i * 4 + j) * 16);
        }
        for (int i = 0; i < 4; ++i) {
          for (int j = 0; j < 4; ++j) col[j] = V16::load(tmp + (i * 4 + j) * 16);
          Wino<2>::bt(col, r);
          for (int j = 0; j < 4; ++j) r[j].store(sc.X + ((i * 4 + j) * TB + t) * ps + c);
        }
      }
      // D = A dy A^T over the 2x2 output patch (rows 2th + a, columns 2tw + b).
      const float* pd[4];
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
          const int64_t oh = 2 * th + a, ow = 2 * tw + b;
          pd[a * 2 + b] = (oh < g.OH && ow < g.OW) ? dy + ((n * g.OH + oh) * g.OW + ow) * g.K + k0
                                                   : zeros;
        }
      for (int64_t k = 0; k < KL; k += 16) {
        const int64_t nk = std::min<int64_t>(16, KL - k);
        V16 v[4], cols[2][4], r[4];
        for (int q = 0; q < 4; ++q)
          v[q] = V16::load(pd[q] == zeros ? zeros : lanes16(pd[q] + k, nk, pad + 16 * q));
        a_col(v[0], v[2], cols[0]);     // column b = 0: rows a = 0, 1
        a_col(v[1], v[3], cols[1]);     // column b = 1
        for (int i = 0; i < 4; ++i) {
          a_col(cols[0][i], cols[1][i], r);
          for (int j = 0; j < 4; ++j) r[j].store(sc.D + ((i * 4 + j) * TB + t) * kd + k);
        }
      }
    }
    // M[xi] += D[xi]^T X[xi] over the block's tiles.
    for (int xi = 0; xi < kXi; ++xi) {
      const float* Dx = sc.D + xi * TB * kd;
      const float* Xx = sc.X + xi * TB * ps;
      float* Mx = M + xi * KL * CLp;
      for (int64_t jt = 0; jt < CL; jt += kWLanes) {
        const int64_t nl = std::min<int64_t>(kWLanes, CL - jt);
        const int NV = int((nl + 15) / 16);
        const int tail = int(nl - (NV - 1) * 16);
        const int PR = wg_rows(NV);
        const float* xr = Xx + jt;
        for (int64_t kt = 0; kt < KL; kt += PR) {
          const int P = int(std::min<int64_t>(PR, KL - kt));
          const float* dr = Dx + kt;
          get_wg_kernel(P, NV)(&dr, &xr, 1, nt, kd, ps, tail, Mx + kt * CLp + jt, CLp);
        }
      }
    }
  }
  output_transform(g, M, KL * CLp, CLp, KL, CL, k0, c0, out);
}

void conv2d_backward_weight_winograd(const FArr& x, const FArr& dy, py::array out,
                                     const IArr& vertices, int64_t pad_h, int64_t pad_w) {
  const char* fn = "conv2d_backward_weight_winograd";
  float* o = out_ptr(out, fn);
  check_ndim(x, 4, fn, "x", "[N, H, W, C]");
  check_ndim(dy, 4, fn, "dy", "[N, OH, OW, K]");
  GGeom g{};
  g.N = x.shape(0); g.H = x.shape(1); g.W = x.shape(2); g.C = x.shape(3);
  g.K = dy.shape(3); g.OH = dy.shape(1); g.OW = dy.shape(2); g.ph = pad_h; g.pw = pad_w;
  if (pad_h < 0 || pad_w < 0 || pad_h > 2 || pad_w > 2)
    fail(std::string(fn) + ": pads must be in [0, 2], got (" + std::to_string(pad_h) + ", " +
         std::to_string(pad_w) + ")");
  if (dy.shape(0) != g.N || g.OH != g.H + 2 * pad_h - 2 || g.OW != g.W + 2 * pad_w - 2 ||
      g.OH < 1 || g.OW < 1)
    fail(std::string(fn) + ": dy " + shape_str(dy) + " is not the 3x3 stride-1 conv output of x " +
         shape_str(x) + " with pad (" + std::to_string(pad_h) + ", " + std::to_string(pad_w) +
         ")");
  check_ndim(out, 4, fn, "out", "[K, 3, 3, C]");
  if (out.shape(0) != g.K || out.shape(1) != 3 || out.shape(2) != 3 || out.shape(3) != g.C)
    fail(std::string(fn) + ": out has shape " + shape_str(out) + ", expected (" +
         std::to_string(g.K) + ", 3, 3, " + std::to_string(g.C) + ") ([K, R, S, C])");
  check_no_overlap(fn, out, x, "x");
  check_no_overlap(fn, out, dy, "dy");
  const py::ssize_t V = check_vertices(vertices, 4, fn);
  check_range_cols(vertices, 0, g.K, fn, "output channel (k0, k1)");
  check_range_cols(vertices, 2, g.C, fn, "input channel (c0, c1)");
  g.TH = (g.OH + 1) / 2; g.TW = (g.OW + 1) / 2; g.T = g.N * g.TH * g.TW;

  // Per-thread scratch for the largest vertex.
  int64_t xd = 1, m = 1;
  for (py::ssize_t v = 0; v < V; ++v) {
    const GLayout l = grad_layout(g, vertices.data() + 4 * v);
    xd = std::max(xd, kXi * l.TB * (l.ps + l.kd) + 64);
    m = std::max(m, kXi * l.KL * l.CLp + 16);
  }
  const int nt = max_threads();
  float* xdbuf = scratch_floats(0, size_t(xd) * size_t(nt));
  float* mbuf = scratch_floats(1, size_t(m) * size_t(nt));
  std::vector<float> zeros(size_t(g.C + g.K) + 16, 0.f);
  const float* xp = x.data();
  const float* dp = dy.data();
  for_each_vertex(vertices.data(), V, 4, [&](const int32_t* row, int t) {
    const GLayout l = grad_layout(g, row);
    GScratch sc{xdbuf + xd * t, xdbuf + xd * t + kXi * l.TB * l.ps, mbuf + m * t};
    grad_vertex(g, xp, dp, o, row, zeros.data(), sc);
  });
}

}  // namespace

void register_winograd_grad(py::module& m) {
  m.def("conv2d_backward_weight_winograd", &conv2d_backward_weight_winograd, py::arg("x"),
        py::arg("dy"), py::arg("out"), py::arg("vertices"), py::arg("pad_h"), py::arg("pad_w"),
        "Weight gradient of a 3x3 stride-1 conv (NHWC x [N, H, W, C], dy [N, OH, OW, K]) by "
        "Winograd over 2x2 tiles of dy: out[K, 3, 3, C] for every vertex row (k0, k1, c0, c1), "
        "the sum over every image and pixel.");
}

}  // namespace ipugraph
