// Convolution backward codelets, NHWC: backward-data (the transposed conv) and backward-weight.
//
// Backward-data  dx[n, ih, iw, g*Cg+c] = sum over k of group g, taps (r, s) with
//                ih = oh*sh - ph + r*dh, iw = ow*sw - pw + s*dw  of dy[n, oh, ow, k] * w[k, c, r, s].
//   The weight is packed transposed: [G][CB = ceil(Cg/16)][R][S][Kg][16] (lane l = input channel
//   cb*16 + l), so the forward microkernel (common.h) runs with dy as its "input" and Kg as the
//   reduction length of one segment.  No zero insertion for stride > 1: the dx pixels of one row
//   are split into output phases (iw mod sw); the pixels of a phase at consecutive positions
//   iw, iw + sw, ... read CONSECUTIVE dy columns for every tap, and the taps that reach a phase
//   are exactly those with (iw + pw - s*dw) % sw == 0 (likewise rows: (ih + ph - r*dh) % sh == 0).
//   So each tile of <= 6 same-phase pixels runs the microkernel over only its valid taps
//   (stride 2, 3x3: 1, 2 or 4 taps instead of 9 mostly-zero ones); taps outside dy read a shared
//   zero buffer, and a pixel no tap reaches gets 0.
//   Vertex rows (n0,n1,c0,c1,ih0,ih1,iw0,iw1,k0,k1[,slab]): c over the C channels of dx, k (the
//   reduction) within the group.  The partial variant stores into slab `slab` of partials
//   [P, N, H, W, C]; reduce_partials sums the slabs.
//
// Backward-weight  dw[k, r, s, c] (stored [K, R, S, Cg]) =
//                sum over n, oh, ow of dy[n, oh, ow, k] * xpad[n, oh*sh + r*dh, ow*sw + s*dw, g*Cg+c]
//   For one kernel row r this is a GEMM (k) x (s, c) reduced over the pixels: an outer-product
//   register tile of 6..12 output channels (broadcast dy) x up to 64 lanes (vector loads of x,
//   <= 24 accumulators) accumulates over a block of output rows small enough that its x lanes
//   and dy values stay in L1 while every k tile passes over it; the tiles accumulate into a
//   per-thread [k][lanes] buffer that is added into out once per chunk.  Per chunk (several
//   whole images, or a band of output rows of one image) the x rows it reads are copied, zero
//   padded, into per-thread scratch holding only the vertex's channels [c0, c1) of one group, so
//   with dilation 1 the S taps of a kernel row are S*(c1-c0) CONTIGUOUS floats: the lane axis is
//   (s, c) (the 7x7 stem with C = 3 gets 21 lanes, not 3 of 16). Where even those are few
//   (under 32) and the output channels many, the same microkernel runs with the roles
//   swapped: k on the lanes (dy rows as vectors), the (s, c) values broadcast.
//   Depthwise (Cg = Kg = 1) vectorises over the channels instead.
//   Vertex rows (k0,k1,c0,c1,r0,r1,n0,n1,oh0,oh1[,slab]): k over K, c within the group; the
//   vertex zeroes its box of out (resp. of its slab) and accumulates its (n, oh) ranges into it.
#include "common.h"
#include "gemm_tn.h"

#include <optional>
#include <pybind11/stl.h>

namespace ipugraph {

namespace {

std::string geom_str(int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                     int64_t dh, int64_t dw, int64_t groups) {
  std::ostringstream s;
  s << "R=" << R << " S=" << S << " stride=(" << sh << "," << sw << ") pad=(" << ph << "," << pw
    << ") dil=(" << dh << "," << dw << ") groups=" << groups;
  return s.str();
}

void check_geom(const char* fn, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                int64_t pw, int64_t dh, int64_t dw, int64_t groups) {
  if (R < 1 || S < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0 || groups < 1)
    fail(std::string(fn) + ": need R, S, strides, dilations, groups >= 1 and pads >= 0, got " +
         geom_str(R, S, sh, sw, ph, pw, dh, dw, groups));
}

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t e = in + 2 * p - d * (k - 1) - 1;
  return e < 0 ? -1 : e / s + 1;
}

// ---------------------------------------------------------------------------------------------
// Backward-data
// ---------------------------------------------------------------------------------------------

py::array pack_conv_data_weight(const FArr& w, int64_t groups, bool channels_last,
                                std::optional<py::array> into) {
  const char* fn = "pack_conv_data_weight";
  const WeightView v = weight_view(w, channels_last, fn);
  const int64_t K = v.K, Cg = v.Cg, R = v.R, S = v.S;
  if (groups < 1 || K % groups != 0)
    fail(std::string(fn) + ": groups=" + std::to_string(groups) +
         " must be >= 1 and divide K of w " + shape_str(w));
  const int64_t G = groups, Kg = K / G, CB = (Cg + kBlock - 1) / kBlock;
  float* dst = nullptr;
  auto out = packed_buffer(into, G * CB * R * S * Kg * kBlock, &dst, w, fn);
  const float* src = w.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t g = 0; g < G; ++g)
    for (int64_t cb = 0; cb < CB; ++cb) {  // 16 input channels: rows (r, s, k), lanes c
      const int64_t n = std::min<int64_t>(kBlock, Cg - cb * kBlock);
      const float* wc = src + g * Kg * v.sk + cb * kBlock * v.sc;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          pack_lanes(dst + (((g * CB + cb) * R + r) * S + s) * Kg * kBlock,
                     wc + r * v.sr + s * v.ss, n, v.sc, Kg, v.sk);
    }
  return out;
}

struct DGeom {
  int64_t N, H, W, C, K, OH, OW, R, S, sh, sw, ph, pw, dh, dw, G, Cg, Kg, CB;
};

struct DScratch {
  std::vector<const float*> wseg, xseg;
};

// One vertex of backward-data: out (an [N, H, W, C] array) over the box
// vx = (n0,n1,c0,c1,ih0,ih1,iw0,iw1), reduction over k in [ka, kb) of the group.
void data_vertex(const DGeom& g, const float* dy, const float* wp, float* out, const int32_t* vx,
                 int64_t ka, int64_t kb, const float* zeros, DScratch& sc) {
  const int64_t n0 = vx[0], n1 = vx[1], c0 = vx[2], c1 = vx[3];
  const int64_t ih0 = vx[4], ih1 = vx[5], iw0 = vx[6], iw1 = vx[7];
  if (n1 <= n0 || c1 <= c0 || ih1 <= ih0 || iw1 <= iw0) return;
  const int L = int(std::max<int64_t>(0, kb - ka));
  const int64_t wblock = g.R * g.S * g.Kg * kBlock;  // floats per (group, 16-channel block)

  // Rows per chunk: the dy rows they read (OW*K floats each) stay around 512 KiB.
  const int64_t dy_row = std::max<int64_t>(1, g.OW * g.K * 4);
  const int64_t rows_dy = std::max<int64_t>(1, (512 * 1024) / dy_row);
  const int64_t chunk = std::max<int64_t>(1, rows_dy * g.sh - (g.R - 1) * g.dh);

  alignas(64) float acc[kMaxNB * kAccStride];
  float* outp[kMaxPix];
  int64_t rv[64], ohv[64];  // valid kernel rows of a dx row (R <= 64 checked by the caller)
  int64_t sv[64];

  for (int64_t n = n0; n < n1; ++n)
    for (int64_t ha = ih0; ha < ih1; ha += chunk) {
      const int64_t hb = std::min(ih1, ha + chunk);
      for (int64_t c = c0; c < c1;) {
        const int64_t gi = c / g.Cg;
        const int64_t cb = (c - gi * g.Cg) / kBlock;
        const int64_t cstart = gi * g.Cg + cb * kBlock;  // dx channel of lane 0
        const int lo = int(c - cstart);
        const int hi = int(std::min<int64_t>({kBlock, g.Cg - cb * kBlock, c1 - cstart}));
        int NB = 1, hib[kMaxNB];
        hib[0] = hi;
        while (NB < kMaxNB && hib[NB - 1] == kBlock && cb + NB < g.CB &&
               cstart + NB * kBlock < c1) {
          hib[NB] = int(std::min<int64_t>(
              {kBlock, g.Cg - (cb + NB) * kBlock, c1 - cstart - NB * kBlock}));
          ++NB;
        }
        c = cstart + (NB - 1) * kBlock + hib[NB - 1];
        const float* wblk = wp + (gi * g.CB + cb) * wblock + ka * kBlock;
        const int64_t kin = gi * g.Kg + ka;  // first dy channel read
        const UKernel uk_full = get_ukernel(kMaxPix, NB);

        for (int64_t ih = ha; ih < hb; ++ih) {
          int nr = 0;
          for (int64_t r = 0; r < g.R; ++r) {
            const int64_t t = ih + g.ph - r * g.dh;
            if (t < 0 || t % g.sh) continue;
            const int64_t oh = t / g.sh;
            if (oh >= g.OH) continue;
            rv[nr] = r; ohv[nr] = oh; ++nr;
          }
          if (L == 0) nr = 0;
          for (int64_t ps = iw0; ps < std::min(iw1, iw0 + g.sw); ++ps) {
            const int64_t m = (iw1 - ps + g.sw - 1) / g.sw;  // pixels of this phase
            int ns = 0;
            for (int64_t s = 0; s < g.S && nr; ++s) {
              const int64_t t = ps + g.pw - s * g.dw;
              if (((t % g.sw) + g.sw) % g.sw == 0) sv[ns++] = s;
            }
            const int64_t ntile = (m + kMaxPix - 1) / kMaxPix;
            const int64_t tbase = m / ntile, trem = m % ntile;
            int64_t j0 = 0;
            for (int64_t ti = 0; ti < ntile; ++ti) {
              const int P = int(tbase + (ti < trem));
              for (int p = 0; p < P; ++p)
                outp[p] = out + ((n * g.H + ih) * g.W + ps + (j0 + p) * g.sw) * g.C + cstart;
              int nseg = 0;
              const float** xs = sc.xseg.data();
              const float** ws = sc.wseg.data();
              for (int ri = 0; ri < nr; ++ri) {
                const float* dyrow = dy + ((n * g.OH + ohv[ri]) * g.OW) * g.K + kin;
                for (int si = 0; si < ns; ++si) {
                  const int64_t s = sv[si];
                  // ow of pixel p: (ps + (j0+p)*sw + pw - s*dw) / sw, exact (the phase matches).
                  const int64_t t0 = ps + j0 * g.sw + g.pw - s * g.dw;
                  bool any = false;
                  for (int p = 0; p < P; ++p) {
                    const int64_t t = t0 + p * g.sw;
                    const int64_t ow = t >= 0 ? t / g.sw : -1;
                    const bool in = t >= 0 && ow < g.OW;
                    any |= in;
                    xs[nseg * P + p] = in ? dyrow + ow * g.K : zeros;
                  }
                  if (any) ws[nseg++] = wblk + (rv[ri] * g.S + s) * g.Kg * kBlock;
                }
              }
              (P == kMaxPix ? uk_full : get_ukernel(P, NB))(ws, wblock, xs, nseg, L, acc);
              for (int b = 0; b < NB; ++b)
                epilogue(acc + b * kAccStride, P, outp, nullptr, nullptr, b * kBlock, b ? 0 : lo,
                         hib[b], false, false);
              j0 += P;
            }
          }
        }
      }
    }
}

DGeom data_geom(const char* fn, const FArr& dy, const FArr& wp, const py::array& out, int first,
                int64_t Cg, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                int64_t dh, int64_t dw, int64_t groups) {
  check_ndim(dy, 4, fn, "dy", "[N, OH, OW, K]");
  check_geom(fn, R, S, sh, sw, ph, pw, dh, dw, groups);
  if (R > 64 || S > 64)
    fail(std::string(fn) + ": kernels larger than 64x64 are not supported, got " +
         geom_str(R, S, sh, sw, ph, pw, dh, dw, groups));
  if (Cg < 1) fail(std::string(fn) + ": Cg must be >= 1, got " + std::to_string(Cg));
  DGeom g{};
  g.N = dy.shape(0); g.OH = dy.shape(1); g.OW = dy.shape(2); g.K = dy.shape(3);
  g.R = R; g.S = S; g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw;
  g.G = groups; g.Cg = Cg; g.C = Cg * groups;
  if (g.K % groups != 0)
    fail(std::string(fn) + ": groups=" + std::to_string(groups) + " must divide K of dy " +
         shape_str(dy));
  g.Kg = g.K / groups; g.CB = (Cg + kBlock - 1) / kBlock;
  const char* oname = first ? "partials" : "out";
  check_ndim(out, 4 + first, fn, oname, first ? "[P, N, H, W, C]" : "[N, H, W, C]");
  g.H = out.shape(first + 1); g.W = out.shape(first + 2);
  if (out.shape(first) != g.N || out.shape(first + 3) != g.C ||
      out_size(g.H, R, sh, ph, dh) != g.OH || out_size(g.W, S, sw, pw, dw) != g.OW)
    fail(std::string(fn) + ": " + oname + " " + shape_str(out) + " does not match dy " +
         shape_str(dy) + " (dx [N, H, W, C=" + std::to_string(g.C) +
         "] whose conv output is dy's OH x OW) for " + geom_str(R, S, sh, sw, ph, pw, dh, dw, groups));
  const int64_t wsize = g.G * g.CB * R * S * g.Kg * kBlock;
  if (wp.ndim() != 1 || wp.shape(0) != wsize)
    fail(std::string(fn) + ": packed weight wp has shape " + shape_str(wp) + ", expected (" +
         std::to_string(wsize) + ",) for K=" + std::to_string(g.K) + " Cg=" + std::to_string(Cg) +
         " R=" + std::to_string(R) + " S=" + std::to_string(S) + " groups=" +
         std::to_string(groups) + " (use pack_conv_data_weight)");
  return g;
}

void check_data_cols(const IArr& v, const DGeom& g, const char* fn) {
  check_range_cols(v, 0, g.N, fn, "batch (n0, n1)");
  check_range_cols(v, 2, g.C, fn, "channel (c0, c1)");
  check_range_cols(v, 4, g.H, fn, "row (ih0, ih1)");
  check_range_cols(v, 6, g.W, fn, "column (iw0, iw1)");
  check_range_cols(v, 8, g.Kg, fn, "output channel within the group (k0, k1)");
}

void run_data(const DGeom& g, const FArr& dy, const FArr& wp, float* o, int64_t slab_size,
              const IArr& vertices, int cols) {
  const py::ssize_t V = vertices.shape(0);
  const int nt = max_threads();
  std::vector<float> zeros(g.Kg + kBlock, 0.f);
  std::vector<DScratch> scratch(nt);
  for (auto& s : scratch) {
    s.wseg.resize(g.R * g.S);
    s.xseg.resize(g.R * g.S * kMaxPix);
  }
  const float* dyp = dy.data();
  const float* wpp = wp.data();
  const int32_t* vt = vertices.data();
  for_each_vertex(vt, V, cols, [&](const int32_t* row, int t) {
    float* dst = o + (cols == 11 ? row[10] * slab_size : 0);
    data_vertex(g, dyp, wpp, dst, row, row[8], row[9], zeros.data(), scratch[t]);
  });
}

void conv2d_backward_data_nhwc(const FArr& dy, const FArr& wp, py::array out,
                               const IArr& vertices, int64_t Cg, int64_t R, int64_t S,
                               int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                               int64_t dil_h, int64_t dil_w, int64_t groups) {
  const char* fn = "conv2d_backward_data_nhwc";
  float* o = out_ptr(out, fn);
  const DGeom g = data_geom(fn, dy, wp, out, 0, Cg, R, S, stride_h, stride_w, pad_h, pad_w,
                            dil_h, dil_w, groups);
  check_vertices(vertices, 10, fn);
  check_data_cols(vertices, g, fn);
  run_data(g, dy, wp, o, 0, vertices, 10);
}

void conv2d_backward_data_nhwc_partial(const FArr& dy, const FArr& wp, py::array partials,
                                       const IArr& vertices, int64_t Cg, int64_t R, int64_t S,
                                       int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                       int64_t pad_w, int64_t dil_h, int64_t dil_w,
                                       int64_t groups) {
  const char* fn = "conv2d_backward_data_nhwc_partial";
  float* o = out_ptr(partials, fn);
  const DGeom g = data_geom(fn, dy, wp, partials, 1, Cg, R, S, stride_h, stride_w, pad_h, pad_w,
                            dil_h, dil_w, groups);
  check_vertices(vertices, 11, fn);
  check_data_cols(vertices, g, fn);
  check_index_col(vertices, 10, partials.shape(0), fn, "slab", "partials " + shape_str(partials));
  run_data(g, dy, wp, o, g.N * g.H * g.W * g.C, vertices, 11);
}

// ---------------------------------------------------------------------------------------------
// Backward-weight
// ---------------------------------------------------------------------------------------------

using gemm_tn::get_wg_kernel;
using gemm_tn::kWLanes;
using gemm_tn::kWRows;
using gemm_tn::spread_stride;
using gemm_tn::wg_rows;

struct WGeom {
  int64_t N, H, W, C, K, OH, OW, R, S, sh, sw, ph, pw, dh, dw, G, Cg, Kg;
};

struct WScratch {
  float* xbuf;     // padded x rows of a chunk
  float* dybuf;    // the chunk's dy rows, restrided (see weight_vertex)
  float* dwbuf;    // depthwise: R*S*K accumulators
  float* acc;      // [Kg][FL rounded up to 16] accumulators of one kernel row / segment
  std::vector<const float*> dyr, xr;
};

// Per-thread budget of a chunk (padded x rows + the dy rows it reads), in floats.
constexpr int64_t kWBudget = 256 * 1024;

struct WChunk {
  int64_t Wp, cap, dcap;  // padded row width; floats of a thread's x and dy buffers
};


WChunk w_chunk(const WGeom& g) {
  WChunk c{};
  c.Wp = g.W + 2 * g.pw;
  // a vertex's pixel stride is spread_stride(c1 - c0) <= Cg + 16 (not monotone in c1 - c0)
  c.cap = std::max<int64_t>(kWBudget, ((g.R - 1) * g.dh + 1) * c.Wp * (g.Cg + 16)) + kWLanes;
  c.dcap = kWBudget + g.OW * (g.Kg + 32);  // a chunk's dy (need() <= kWBudget, or one row)
  return c;
}

void weight_vertex_depthwise(const WGeom& g, const float* x, const float* dy, float* out,
                             const int32_t* vx, WScratch& sc) {
  const int64_t k0 = vx[0], k1 = vx[1], r0 = vx[4], r1 = vx[5];
  const int64_t n0 = vx[6], n1 = vx[7], oh0 = vx[8], oh1 = vx[9];
  const int64_t KL = k1 - k0;
  float* acc = sc.dwbuf;  // [R][S][KL]
  std::fill(acc, acc + g.R * g.S * KL, 0.f);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t ih = oh * g.sh - g.ph + r * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        const float* xrow = x + (n * g.H + ih) * g.W * g.C + k0;  // channel k of group k
        const float* dyrow = dy + (n * g.OH + oh) * g.OW * g.K + k0;
        for (int64_t s = 0; s < g.S; ++s) {
          float* a = acc + (r * g.S + s) * KL;
          // ow with 0 <= ow*sw - pw + s*dw < W
          const int64_t t = g.pw - s * g.dw;
          const int64_t owa = t <= 0 ? 0 : (t + g.sw - 1) / g.sw;
          const int64_t owb = std::min<int64_t>(g.OW, (g.W - 1 + t) >= 0 ? (g.W - 1 + t) / g.sw + 1 : 0);
          for (int64_t ow = owa; ow < owb; ++ow) {
            const float* xp = xrow + (ow * g.sw - t) * g.C;
            const float* dp = dyrow + ow * g.K;
#pragma omp simd
            for (int64_t k = 0; k < KL; ++k) a[k] += dp[k] * xp[k];
          }
        }
      }
  for (int64_t k = 0; k < KL; ++k)
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t s = 0; s < g.S; ++s) out[((k0 + k) * g.R + r) * g.S + s] = acc[(r * g.S + s) * KL + k];
}

// One vertex: out[k, r, s, c] (an [K, R, S, Cg] array) for k in [k0, k1), c in [c0, c1),
// r in [r0, r1), all s = the sum over n in [n0, n1), oh in [oh0, oh1).
void weight_vertex(const WGeom& g, const WChunk& ch, const float* x, const float* dy, float* out,
                   const int32_t* vx, WScratch& sc) {
  const int64_t k0 = vx[0], k1 = vx[1], c0 = vx[2], c1 = vx[3], r0 = vx[4], r1 = vx[5];
  const int64_t n0 = vx[6], n1 = vx[7], oh0 = vx[8], oh1 = vx[9];
  const int64_t CL = c1 - c0;
  if (k1 <= k0 || CL <= 0 || r1 <= r0) return;
  // Zero the box.
  for (int64_t k = k0; k < k1; ++k)
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t s = 0; s < g.S; ++s)
        std::fill_n(out + ((k * g.R + r) * g.S + s) * g.Cg + c0, CL, 0.f);
  if (n1 <= n0 || oh1 <= oh0) return;
  if (g.Cg == 1 && g.Kg == 1) {
    weight_vertex_depthwise(g, x, dy, out, vx, sc);
    return;
  }
  const int64_t ps = spread_stride(CL);       // floats per pixel in xbuf
  const bool fused = g.dw == 1 && ps == CL;   // the S taps of a row are contiguous in xbuf
  const int64_t FL = fused ? g.S * CL : CL;   // lanes of one segment
  const int64_t nseg = fused ? 1 : g.S;
  const int64_t xstep = g.sw * ps;
  const int64_t rowf = ch.Wp * ps;            // floats of one padded x row
  // dy rows are read in place unless their pixel stride (K) is a multiple of 128 floats.
  const bool copy_dy = spread_stride(g.K) != g.K;
  const int64_t FLp = (FL + 15) / 16 * 16;    // accumulator row stride
  // Few (s, c) lanes (the 7x7 stem: 21 of 32) and many output channels: the register tile
  // takes k on its lanes instead (x values broadcast, dy rows as vectors), its accumulators
  // transposed ([lane][k]); Kg >= 2 FL keeps FL x ceil16(KL) inside run_weight's buffer.
  const int64_t KLmin = std::min(k1, (k0 / g.Kg + 1) * g.Kg) - k0;  // (the first group's)
  const bool klanes = FL < 32 && KLmin >= 2 * FL;

  // Chunk: images [na, na + nimg) x output rows [oa, oa + rows) (several whole images when
  // they fit the budget, else a band of rows of one image).
  auto xrows_of = [&](int64_t rows) { return (rows - 1) * g.sh + (r1 - 1 - r0) * g.dh + 1; };
  // dy floats per pixel that a chunk holds (copied: restrided to kd_max at most)
  const int64_t kd_max = copy_dy ? spread_stride((std::min(k1 - k0, g.Kg) + 15) / 16 * 16)
                                 : k1 - k0;
  auto need = [&](int64_t rows, int64_t nimg) {
    return nimg * (xrows_of(rows) * rowf + rows * g.OW * kd_max);
  };
  const int64_t OHV = oh1 - oh0;
  int64_t rows = OHV, nimg = 1;
  if (need(OHV, 1) <= kWBudget) {
    while (nimg < n1 - n0 && need(OHV, nimg + 1) <= kWBudget) ++nimg;
  } else {
    while (rows > 1 && need(rows, 1) > kWBudget) --rows;
  }
  while (rows > 1 && nimg * xrows_of(rows) * rowf > ch.cap - kWLanes) --rows;  // fits xbuf
  const int64_t img_f = xrows_of(rows) * rowf;

  for (int64_t gi = k0 / g.Kg; gi <= (k1 - 1) / g.Kg; ++gi) {
    const int64_t ka = std::max(k0, gi * g.Kg), kb = std::min(k1, (gi + 1) * g.Kg);
    const int64_t cin = gi * g.Cg + c0;
    const int64_t kd = copy_dy ? spread_stride((kb - ka + 15) / 16 * 16) : g.K;  // dy stride

    for (int64_t na = n0; na < n1; na += nimg)
      for (int64_t oa = oh0; oa < oh1; oa += rows) {
        const int64_t nb = std::min(n1, na + nimg), ob = std::min(oh1, oa + rows);
        if (copy_dy)
          for (int64_t n = na; n < nb; ++n)
            for (int64_t oh = oa; oh < ob; ++oh)
              for (int64_t ow = 0; ow < g.OW; ++ow)
                std::memcpy(sc.dybuf + (((n - na) * rows + (oh - oa)) * g.OW + ow) * kd,
                            dy + ((n * g.OH + oh) * g.OW + ow) * g.K + ka,
                            size_t(kb - ka) * sizeof(float));
        // Padded x rows ih in [ihA, ihB] of each image, channels [cin, cin + CL).
        const int64_t ihA = oa * g.sh - g.ph + r0 * g.dh;
        const int64_t ihB = (ob - 1) * g.sh - g.ph + (r1 - 1) * g.dh;
        for (int64_t n = na; n < nb; ++n)
          for (int64_t ih = std::max<int64_t>(ihA, 0); ih <= std::min(ihB, g.H - 1); ++ih) {
            float* dst = sc.xbuf + (n - na) * img_f + (ih - ihA) * rowf;
            std::fill_n(dst, g.pw * ps, 0.f);
            std::fill_n(dst + (g.pw + g.W) * ps, g.pw * ps, 0.f);
            const float* src = x + ((n * g.H + ih) * g.W) * g.C + cin;
            float* d = dst + g.pw * ps;
            if (CL == g.C && ps == CL) {
              std::memcpy(d, src, g.W * g.C * sizeof(float));
            } else {
              for (int64_t iw = 0; iw < g.W; ++iw)
                std::memcpy(d + iw * ps, src + iw * g.C, CL * sizeof(float));
            }
          }
        for (int64_t r = r0; r < r1; ++r) {
          // Output rows of the chunk whose input row for kernel row r is inside x.
          int nrows = 0;
          for (int64_t n = na; n < nb; ++n)
            for (int64_t oh = oa; oh < ob; ++oh) {
              const int64_t ih = oh * g.sh - g.ph + r * g.dh;
              if (ih < 0 || ih >= g.H) continue;
              sc.dyr[nrows] = copy_dy ? sc.dybuf + ((n - na) * rows + (oh - oa)) * g.OW * kd
                                      : dy + ((n * g.OH + oh) * g.OW) * g.K + ka;
              sc.xr[nrows] = sc.xbuf + (n - na) * img_f + (ih - ihA) * rowf;
              ++nrows;
            }
          if (!nrows) continue;
          const float** xrow = sc.xr.data() + nrows;
          const float** dyrow = sc.dyr.data() + nrows;
          // Rows per block: the block's x lanes and dy values stay in L1 across the k tiles.
          const int64_t RB = std::max<int64_t>(1, (32 * 1024) / (g.OW * (std::min<int64_t>(FL, kWLanes) + 16) * 4));
          const int64_t KL = kb - ka, KLp = (KL + 15) / 16 * 16;
          // element (k, lane j) of the accumulators: A[(k - ka) * ak + j * aj]
          const int64_t ak = klanes ? 1 : FLp, aj = klanes ? KLp : 1;
          for (int64_t sg = 0; sg < nseg; ++sg) {
            float* A = sc.acc;
            std::fill_n(A, klanes ? FL * KLp : KL * FLp, 0.f);
            for (int64_t rb = 0; rb < nrows; rb += RB) {
              const int nr = int(std::min<int64_t>(RB, nrows - rb));
              if (klanes) {
                for (int64_t kt = 0; kt < KL; kt += kWLanes) {
                  const int64_t nk = std::min<int64_t>(kWLanes, KL - kt);
                  const int NV = int((nk + 15) / 16);
                  const int tail = int(nk - (NV - 1) * 16);
                  for (int i = 0; i < nr; ++i) dyrow[i] = sc.dyr[rb + i] + kt;
                  const int PR = wg_rows(NV);
                  for (int64_t jt = 0; jt < FL; jt += PR) {
                    const int P = int(std::min<int64_t>(PR, FL - jt));
                    for (int i = 0; i < nr; ++i) xrow[i] = sc.xr[rb + i] + sg * g.dw * ps + jt;
                    get_wg_kernel(P, NV)(xrow, dyrow, nr, g.OW, xstep, kd, tail,
                                         A + jt * KLp + kt, KLp);
                  }
                }
                continue;
              }
              for (int64_t jt = 0; jt < FL; jt += kWLanes) {
                const int64_t nl = std::min<int64_t>(kWLanes, FL - jt);
                const int NV = int((nl + 15) / 16);
                const int tail = int(nl - (NV - 1) * 16);
                const int64_t xoff = sg * g.dw * ps + jt;
                for (int i = 0; i < nr; ++i) xrow[i] = sc.xr[rb + i] + xoff;
                const int PR = wg_rows(NV);
                for (int64_t kt = ka; kt < kb; kt += PR) {
                  const int P = int(std::min<int64_t>(PR, kb - kt));
                  for (int i = 0; i < nr; ++i) dyrow[i] = sc.dyr[rb + i] + (kt - ka);
                  get_wg_kernel(P, NV)(dyrow, xrow, nr, g.OW, kd, xstep, tail,
                                       A + (kt - ka) * FLp + jt, FLp);
                }
              }
            }
            for (int64_t k = ka; k < kb; ++k) {
              const float* tp = A + (k - ka) * ak;
              float* orow = out + (k * g.R + r) * g.S * g.Cg;
              if (!fused || CL == g.Cg) {     // lane j -> one contiguous run
                float* od = orow + (fused ? 0 : sg * g.Cg + c0);
#pragma omp simd
                for (int64_t j = 0; j < FL; ++j) od[j] += tp[j * aj];
              } else {                        // runs of c per tap s
                for (int64_t s = 0; s < g.S; ++s) {
                  float* od = orow + s * g.Cg + c0;
                  const float* ts = tp + s * CL * aj;
#pragma omp simd
                  for (int64_t q = 0; q < CL; ++q) od[q] += ts[q * aj];
                }
              }
            }
          }
        }
      }
  }
}

WGeom weight_geom(const char* fn, const FArr& x, const FArr& dy, const py::array& out, int first,
                  int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                  int64_t dw, int64_t groups) {
  check_ndim(x, 4, fn, "x", "[N, H, W, C]");
  check_ndim(dy, 4, fn, "dy", "[N, OH, OW, K]");
  check_geom(fn, R, S, sh, sw, ph, pw, dh, dw, groups);
  WGeom g{};
  g.N = x.shape(0); g.H = x.shape(1); g.W = x.shape(2); g.C = x.shape(3);
  g.OH = dy.shape(1); g.OW = dy.shape(2); g.K = dy.shape(3);
  g.R = R; g.S = S; g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw;
  g.G = groups;
  if (g.C % groups != 0 || g.K % groups != 0)
    fail(std::string(fn) + ": groups=" + std::to_string(groups) + " must divide C of x " +
         shape_str(x) + " and K of dy " + shape_str(dy));
  g.Cg = g.C / groups; g.Kg = g.K / groups;
  if (dy.shape(0) != g.N || out_size(g.H, R, sh, ph, dh) != g.OH ||
      out_size(g.W, S, sw, pw, dw) != g.OW)
    fail(std::string(fn) + ": dy " + shape_str(dy) + " is not the conv output of x " +
         shape_str(x) + " for " + geom_str(R, S, sh, sw, ph, pw, dh, dw, groups));
  const char* oname = first ? "partials" : "out";
  check_ndim(out, 4 + first, fn, oname, first ? "[P, K, R, S, Cg]" : "[K, R, S, Cg]");
  if (out.shape(first) != g.K || out.shape(first + 1) != R || out.shape(first + 2) != S ||
      out.shape(first + 3) != g.Cg)
    fail(std::string(fn) + ": " + oname + " has shape " + shape_str(out) + ", expected (" +
         (first ? "P, " : "") + std::to_string(g.K) + ", " + std::to_string(R) + ", " +
         std::to_string(S) + ", " + std::to_string(g.Cg) + ") ([K, R, S, Cg]) for x " +
         shape_str(x) + " and dy " + shape_str(dy));
  return g;
}

void check_weight_cols(const IArr& v, const WGeom& g, const char* fn) {
  check_range_cols(v, 0, g.K, fn, "output channel (k0, k1)");
  check_range_cols(v, 2, g.Cg, fn, "input channel within the group (c0, c1)");
  check_range_cols(v, 4, g.R, fn, "kernel row (r0, r1)");
  check_range_cols(v, 6, g.N, fn, "batch (n0, n1)");
  check_range_cols(v, 8, g.OH, fn, "output row (oh0, oh1)");
}

void run_weight(const WGeom& g, const FArr& x, const FArr& dy, float* o, int64_t slab_size,
                const IArr& vertices, int cols) {
  const py::ssize_t V = vertices.shape(0);
  const int nt = max_threads();
  const WChunk ch = w_chunk(g);
  const bool dwise = g.Cg == 1 && g.Kg == 1;
  const int64_t xper = dwise ? 0 : (ch.cap + 15) / 16 * 16;   // threads' buffers 64-B aligned
  const int64_t dper = dwise ? (g.R * g.S * g.K + 15) / 16 * 16 : 0;
  float* xbuf = scratch_floats(0, size_t(std::max<int64_t>(1, xper * nt)));
  const int64_t dyper = dwise ? 0 : (ch.dcap + 15) / 16 * 16;
  float* dybuf = scratch_floats(1, size_t(std::max<int64_t>(1, dyper * nt)));
  float* dbuf = scratch_floats(2, size_t(std::max<int64_t>(1, dper * nt)));
  const int64_t aper = dwise ? 0 : g.Kg * ((g.S * g.Cg + 15) / 16 * 16 + 16);
  float* abuf = scratch_floats(3, size_t(std::max<int64_t>(1, aper * nt)));
  std::vector<WScratch> scratch(nt);
  for (int t = 0; t < nt; ++t) {
    scratch[t].acc = abuf + aper * t;
    scratch[t].xbuf = xbuf + xper * t;
    scratch[t].dybuf = dybuf + dyper * t;
    scratch[t].dwbuf = dbuf + dper * t;
    scratch[t].dyr.resize(2 * g.N * g.OH + 2);
    scratch[t].xr.resize(2 * g.N * g.OH + 2);
  }
  const float* xp = x.data();
  const float* dyp = dy.data();
  const int32_t* vt = vertices.data();
  for_each_vertex(vt, V, cols, [&](const int32_t* row, int t) {
    float* dst = o + (cols == 11 ? row[10] * slab_size : 0);
    weight_vertex(g, ch, xp, dyp, dst, row, scratch[t]);
  });
}

void conv2d_backward_weight_nhwc(const FArr& x, const FArr& dy, py::array out,
                                 const IArr& vertices, int64_t R, int64_t S, int64_t stride_h,
                                 int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                                 int64_t dil_w, int64_t groups) {
  const char* fn = "conv2d_backward_weight_nhwc";
  float* o = out_ptr(out, fn);
  const WGeom g = weight_geom(fn, x, dy, out, 0, R, S, stride_h, stride_w, pad_h, pad_w, dil_h,
                              dil_w, groups);
  check_vertices(vertices, 10, fn);
  check_weight_cols(vertices, g, fn);
  run_weight(g, x, dy, o, 0, vertices, 10);
}

void conv2d_backward_weight_nhwc_partial(const FArr& x, const FArr& dy, py::array partials,
                                         const IArr& vertices, int64_t R, int64_t S,
                                         int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                         int64_t pad_w, int64_t dil_h, int64_t dil_w,
                                         int64_t groups) {
  const char* fn = "conv2d_backward_weight_nhwc_partial";
  float* o = out_ptr(partials, fn);
  const WGeom g = weight_geom(fn, x, dy, partials, 1, R, S, stride_h, stride_w, pad_h, pad_w,
                              dil_h, dil_w, groups);
  check_vertices(vertices, 11, fn);
  check_weight_cols(vertices, g, fn);
  check_index_col(vertices, 10, partials.shape(0), fn, "slab", "partials " + shape_str(partials));
  run_weight(g, x, dy, o, g.K * g.R * g.S * g.Cg, vertices, 11);
}

}  // namespace

void register_conv_grad(py::module& m) {
  m.def("pack_conv_data_weight", &pack_conv_data_weight, py::arg("w"), py::arg("groups") = 1,
        py::arg("channels_last") = false, py::arg("into") = py::none(),
        "Pack float32 w[K, Cg, R, S] (or, channels_last, its [K, R, S, Cg] storage) transposed into [G][ceil(Cg/16)][R][S][Kg][16] (1-D, zero "
        "padded; lane = input channel) for conv2d_backward_data_nhwc.");
  m.def("conv2d_backward_data_nhwc", &conv2d_backward_data_nhwc, py::arg("dy"), py::arg("wp"),
        py::arg("out"), py::arg("vertices"), py::arg("Cg"), py::arg("R"), py::arg("S"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("dil_h"), py::arg("dil_w"), py::arg("groups"),
        "dx = the transposed conv of dy [N, OH, OW, K] with the packed weight (from "
        "pack_conv_data_weight) into out [N, H, W, C] for every vertex row "
        "(n0,n1,c0,c1,ih0,ih1,iw0,iw1,k0,k1): the sum over output channels [k0, k1) of each "
        "group (a plain store).");
  m.def("conv2d_backward_data_nhwc_partial", &conv2d_backward_data_nhwc_partial, py::arg("dy"),
        py::arg("wp"), py::arg("partials"), py::arg("vertices"), py::arg("Cg"), py::arg("R"),
        py::arg("S"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dil_h"), py::arg("dil_w"), py::arg("groups"),
        "As conv2d_backward_data_nhwc into slab `slab` of partials [P, N, H, W, C] for every "
        "vertex row (n0,n1,c0,c1,ih0,ih1,iw0,iw1,k0,k1,slab); reduce with reduce_partials.");
  m.def("conv2d_backward_weight_nhwc", &conv2d_backward_weight_nhwc, py::arg("x"), py::arg("dy"),
        py::arg("out"), py::arg("vertices"), py::arg("R"), py::arg("S"), py::arg("stride_h"),
        py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"), py::arg("dil_h"),
        py::arg("dil_w"), py::arg("groups"),
        "dw[k, r, s, c] (out [K, R, S, Cg]) = sum of dy[n, oh, ow, k] * xpad[n, oh*sh + r*dh, "
        "ow*sw + s*dw, g*Cg + c] over n in [n0, n1), oh in [oh0, oh1) and all ow, for every "
        "vertex row (k0,k1,c0,c1,r0,r1,n0,n1,oh0,oh1); x [N, H, W, C], dy [N, OH, OW, K].");
  m.def("conv2d_backward_weight_nhwc_partial", &conv2d_backward_weight_nhwc_partial,
        py::arg("x"), py::arg("dy"), py::arg("partials"), py::arg("vertices"), py::arg("R"),
        py::arg("S"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dil_h"), py::arg("dil_w"), py::arg("groups"),
        "As conv2d_backward_weight_nhwc into slab `slab` of partials [P, K, R, S, Cg] for every "
        "vertex row (k0,k1,c0,c1,r0,r1,n0,n1,oh0,oh1,slab); vertices writing one slab must own "
        "disjoint boxes.  Reduce with reduce_partials (as [P, K, R, S, Cg]).");
}

}  // namespace ipugraph
