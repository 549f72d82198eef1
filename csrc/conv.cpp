// 2-D convolution, NHWC activations, as an implicit GEMM over a packed weight layout.
//
// Packed weights: [G][KB = ceil(Kg/16)][R][S][Cg][16], zero padded in the last axis.  For one
// 16-channel output block the weights of tap (r, s) and input channel c form one 64-byte row,
// so the microkernel streams them contiguously, and for a fixed r the S*Cg rows are contiguous.
// That matches NHWC input: with dilation 1 and groups 1 the S taps of one output pixel in input
// row ih are S*C consecutive floats, so a whole kernel row (s, c) is ONE reduction segment of
// length S*Cg (the 7x7 stem with C=3 gets segments of 21 instead of 3).
//
// Work decomposition inside a vertex (region [n0,n1) x [oh0,oh1) x [ow0,ow1) x [k0,k1)):
//   for each chunk of output pixels (sized so its input window stays in L2)
//     for each group of <= kMaxNB 16-channel blocks      (weights NB*R*S*Cg*64 B: L2-resident)
//       for each tile of <= 6 consecutive pixels         (raster order; may cross rows/images)
//         build per-pixel input pointers per segment, run the microkernel, fused epilogue
// Taps in the padding read a shared zero buffer; pixels whose kernel row is partly in the
// padding get that row gathered (with zeros) into per-thread scratch, so the microkernel never
// branches.  Non-contiguous taps (dilation > 1 or groups > 1) use one segment per (r, s) with
// direct pointers when Cg >= 16, otherwise every pixel's row is gathered.
//
// Partial sums (conv2d_nhwc_partial): a vertex may also own only input channels [c0, c1) of
// its group and kernel rows [r0, r1).  It stores its partial sum (no epilogue) into one slab
// of a partials buffer [P, N, OH, OW, K]; reduce_partials (elementwise.cpp) then sums the
// slabs and applies bias / residual / ReLU.  Restricting the kernel rows keeps the segment
// layout (a segment is one row or one tap); a proper sub-range of the channels does not
// (S*(c1-c0) floats of a kernel row are no longer contiguous), so it uses one segment per
// tap of length c1-c0, as the Split mode does.
#include "pointwise.h"

#include <optional>
#include <pybind11/stl.h>

namespace ipugraph {

namespace {

struct ConvGeom {
  int64_t N, H, W, C, K, OH, OW, R, S, sh, sw, ph, pw, dh, dw, G, Cg, Kg, KB;
};

enum class Mode { Fused, Split, Gather };

py::array pack_conv_weight(const FArr& w, int groups, bool channels_last,
                           std::optional<py::array> into) {
  const char* fn = "pack_conv_weight";
  const WeightView v = weight_view(w, channels_last, fn);
  const int64_t K = v.K, Cg = v.Cg, R = v.R, S = v.S;
  if (groups < 1 || K % groups != 0)
    fail(std::string(fn) + ": groups=" + std::to_string(groups) + " must be >= 1 and divide K of w " +
         shape_str(w));
  const int64_t G = groups, Kg = K / G, KB = (Kg + kBlock - 1) / kBlock;
  float* dst = nullptr;
  auto out = packed_buffer(into, G * KB * R * S * Cg * kBlock, &dst, w, fn);
  const float* src = w.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t g = 0; g < G; ++g)
    for (int64_t kb = 0; kb < KB; ++kb) {  // 16 output channels: rows (r, s, c), lanes k
      const int64_t n = std::min<int64_t>(kBlock, Kg - kb * kBlock);
      const float* wk = src + (g * Kg + kb * kBlock) * v.sk;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          pack_lanes(dst + (((g * KB + kb) * R + r) * S + s) * Cg * kBlock,
                     wk + r * v.sr + s * v.ss, n, v.sk, Cg, v.sc);
    }
  return out;
}

// Per-thread buffers (allocated before the parallel region: nothing throws inside it).
struct Scratch {
  std::vector<const float*> wseg, xseg;
  float* gather;  // R * kMaxPix * S * Cg floats
};

// Reduction range of a vertex: input channels [c0, c1) within the group, kernel rows [r0, r1).
struct RedRange {
  int64_t c0, c1, r0, r1;
};

// One vertex: out[n, oh, ow, k] = act(bias + sum over red's channels and rows + residual) for
// the box vx = (n0, n1, k0, k1, oh0, oh1, ow0, ow1) of `out` (an [N, OH, OW, K] array).
void conv_vertex(const ConvGeom& g, Mode mode, const float* x, const float* wp, const float* bias,
                 const float* res, float* out, const int32_t* vx, const RedRange& red,
                 const float* zeros, bool relu, Scratch& sc,
                 const PointwiseProgram* epi = nullptr, float* epi_scratch = nullptr) {
  const int64_t n0 = vx[0], n1 = vx[1], k0 = vx[2], k1 = vx[3];
  const int64_t oh0 = vx[4], oh1 = vx[5], ow0 = vx[6], ow1 = vx[7];
  const int64_t NV = n1 - n0, OHV = oh1 - oh0, OWV = ow1 - ow0;
  const int64_t npix = NV * OHV * OWV;
  if (npix == 0 || k1 <= k0) return;
  const int64_t ca = red.c0, ra = red.r0, rb = red.r1;
  const int64_t CL = red.c1 - red.c0;          // reduction channels per tap
  // A proper sub-range of the group's channels: one segment per tap (see the header).
  if (CL != g.Cg) mode = Mode::Split;

  const int64_t SC = g.S * g.Cg;               // one kernel row, (s, c)
  const int64_t wblock = g.R * SC * kBlock;    // floats per (group, 16-channel block)

  // Chunk of output pixels whose input window (rows x cols x C floats) stays around 160 KiB.
  const int64_t win_w = std::min<int64_t>(g.W, (OWV - 1) * g.sw + (g.S - 1) * g.dw + 1);
  const int64_t row_bytes = std::max<int64_t>(1, win_w * g.C * 4);
  const int64_t rows_in = std::max<int64_t>(1, (160 * 1024) / row_bytes);
  const int64_t RV = std::max<int64_t>(1, rb - ra);  // kernel rows this vertex reads
  const int64_t rows_out = std::max<int64_t>(1, (rows_in - (RV - 1) * g.dh - 1) / g.sh + 1);
  int64_t chunk = std::max<int64_t>(kMaxPix, (rows_out * OWV + kMaxPix - 1) / kMaxPix * kMaxPix);

  alignas(64) float acc[kMaxNB * kAccStride];
  float* outp[kMaxPix];
  const float* resp[kMaxPix];
  int64_t pn[kMaxPix], poh[kMaxPix], pow_[kMaxPix];

  for (int64_t c0 = 0; c0 < npix; c0 += chunk) {
    const int64_t c1 = std::min(npix, c0 + chunk);
    // Output channel blocks overlapping [k0, k1), up to kMaxNB adjacent blocks of one group per
    // microkernel call; a block never crosses a group boundary.
    for (int64_t k = k0; k < k1;) {
      const int64_t gi = k / g.Kg;
      const int64_t kb = (k - gi * g.Kg) / kBlock;
      const int64_t kstart = gi * g.Kg + kb * kBlock;  // global channel of lane 0
      const int lo = int(k - kstart);
      const int hi = int(std::min<int64_t>({kBlock, g.Kg - kb * kBlock, k1 - kstart}));
      int NB = 1, hib[kMaxNB];
      hib[0] = hi;
      while (NB < kMaxNB && hib[NB - 1] == kBlock && kb + NB < g.KB && kstart + NB * kBlock < k1) {
        hib[NB] = int(std::min<int64_t>({kBlock, g.Kg - (kb + NB) * kBlock, k1 - kstart - NB * kBlock}));
        ++NB;
      }
      k = kstart + (NB - 1) * kBlock + hib[NB - 1];
      const float* wblk = wp + (gi * g.KB + kb) * wblock;
      const float* bptr = bias ? bias + kstart : nullptr;
      const int64_t cin = gi * g.Cg;  // first input channel of the group

      // Balanced tiles: 49 pixels -> 10+10+10+10+9, not 12+12+12+12+1 (a 1-pixel tile streams
      // the whole weight block for one pixel's worth of FMAs).
      const int64_t ntile = (c1 - c0 + kMaxPix - 1) / kMaxPix;
      const int64_t tbase = (c1 - c0) / ntile, trem = (c1 - c0) % ntile;
      int64_t t0 = c0;
      for (int64_t ti = 0; ti < ntile; ++ti) {
        const int P = int(tbase + (ti < trem));
        // Decode the tile's pixels (raster order over the vertex region).
        {
          int64_t q = t0;
          int64_t n = q / (OHV * OWV);
          q -= n * OHV * OWV;
          int64_t oh = q / OWV, ow = q - oh * OWV;
          for (int p = 0; p < P; ++p) {
            pn[p] = n0 + n; poh[p] = oh0 + oh; pow_[p] = ow0 + ow;
            const int64_t o = ((pn[p] * g.OH + poh[p]) * g.OW + pow_[p]) * g.K + kstart;
            outp[p] = out + o;
            resp[p] = res ? res + o : nullptr;
            if (++ow == OWV) { ow = 0; if (++oh == OHV) { oh = 0; ++n; } }
          }
        }
        int nseg = 0;
        const float** xs = sc.xseg.data();
        const float** ws = sc.wseg.data();
        int L;
        if (mode == Mode::Split) {
          // One segment per (r, s), channels [ca, ca + CL) of the group: contiguous per pixel.
          for (int64_t r = ra; r < rb; ++r)
            for (int64_t s = 0; s < g.S; ++s) {
              bool any = false;
              for (int p = 0; p < P; ++p) {
                const int64_t ih = poh[p] * g.sh - g.ph + r * g.dh;
                const int64_t iw = pow_[p] * g.sw - g.pw + s * g.dw;
                const bool in = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
                any |= in;
                xs[nseg * P + p] =
                    in ? x + ((pn[p] * g.H + ih) * g.W + iw) * g.C + cin + ca : zeros;
              }
              if (any) ws[nseg++] = wblk + ((r * g.S + s) * g.Cg + ca) * kBlock;
            }
          L = int(CL);
        } else {
          // One segment per kernel row r: S*Cg floats per pixel.
          for (int64_t r = ra; r < rb; ++r) {
            bool any = false;
            for (int p = 0; p < P; ++p) {
              const int64_t ih = poh[p] * g.sh - g.ph + r * g.dh;
              const float* ptr = zeros;
              if (ih >= 0 && ih < g.H) {
                any = true;
                const int64_t iw0 = pow_[p] * g.sw - g.pw;
                const float* xrow = x + (pn[p] * g.H + ih) * g.W * g.C + cin;
                if (mode == Mode::Fused && iw0 >= 0 && iw0 + (g.S - 1) * g.dw < g.W) {
                  ptr = xrow + iw0 * g.C;
                } else {
                  float* dst = sc.gather + (r * kMaxPix + p) * SC;
                  for (int64_t s = 0; s < g.S; ++s) {
                    const int64_t iw = iw0 + s * g.dw;
                    if (iw >= 0 && iw < g.W)
                      std::memcpy(dst + s * g.Cg, xrow + iw * g.C, g.Cg * sizeof(float));
                    else
                      std::memset(dst + s * g.Cg, 0, g.Cg * sizeof(float));
                  }
                  ptr = dst;
                }
              }
              xs[nseg * P + p] = ptr;
            }
            if (any) ws[nseg++] = wblk + r * SC * kBlock;
          }
          L = int(SC);
        }
        get_ukernel(P, NB)(ws, wblock, xs, nseg, L, acc);
        const float* const* rp = res ? resp : nullptr;
        for (int b = 0; b < NB; ++b)
          epilogue(acc + b * kAccStride, P, outp, rp, bptr ? bptr + b * kBlock : nullptr,
                   b * kBlock, b ? 0 : lo, hib[b], false, relu);
        t0 += P;
      }
    }
    if (epi) {  // the fused pointwise epilogue over this chunk's pixels, still in cache
      EpilogueRuns runs(epi, epi_scratch);
      int64_t q = c0, n = q / (OHV * OWV), oh = (q / OWV) % OHV, ow = q % OWV;
      for (; q < c1; ++q) {
        const int64_t o = (((n0 + n) * g.OH + oh0 + oh) * g.OW + ow0 + ow) * g.K;
        runs.add(o + k0, o + k1);
        if (++ow == OWV) { ow = 0; if (++oh == OHV) { oh = 0; ++n; } }
      }
    }
  }
}

// Geometry of a conv call from x, the packed weight and the scalar arguments; every check that
// conv2d_nhwc and conv2d_nhwc_partial share (messages name the entry point `fn`).
ConvGeom conv_geom(const char* fn, const FArr& x, const FArr& wp, int64_t K, int64_t R, int64_t S,
                   int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                   int64_t dil_w, int64_t groups) {
  check_ndim(x, 4, fn, "x", "[N, H, W, C]");
  if (K < 1 || R < 1 || S < 1 || stride_h < 1 || stride_w < 1 || dil_h < 1 || dil_w < 1 ||
      pad_h < 0 || pad_w < 0 || groups < 1)
    fail(std::string(fn) + ": need K, R, S, strides, dilations, groups >= 1 and pads >= 0, got K=" +
         std::to_string(K) + " R=" + std::to_string(R) + " S=" + std::to_string(S) +
         " stride=(" + std::to_string(stride_h) + "," + std::to_string(stride_w) + ") pad=(" +
         std::to_string(pad_h) + "," + std::to_string(pad_w) + ") dil=(" + std::to_string(dil_h) +
         "," + std::to_string(dil_w) + ") groups=" + std::to_string(groups));
  ConvGeom g{};
  g.N = x.shape(0); g.H = x.shape(1); g.W = x.shape(2); g.C = x.shape(3); g.K = K;
  g.R = R; g.S = S; g.sh = stride_h; g.sw = stride_w; g.ph = pad_h; g.pw = pad_w;
  g.dh = dil_h; g.dw = dil_w; g.G = groups;
  if (g.C % groups != 0 || K % groups != 0)
    fail(std::string(fn) + ": groups=" + std::to_string(groups) + " must divide C of x " +
         shape_str(x) + " and K=" + std::to_string(K));
  g.Cg = g.C / groups; g.Kg = K / groups; g.KB = (g.Kg + kBlock - 1) / kBlock;
  const int64_t eh = g.H + 2 * g.ph - g.dh * (g.R - 1) - 1, ew = g.W + 2 * g.pw - g.dw * (g.S - 1) - 1;
  if (eh < 0 || ew < 0)
    fail(std::string(fn) + ": kernel " + std::to_string(R) + "x" + std::to_string(S) +
         " (dilated) is larger than the padded input of x " + shape_str(x));
  g.OH = eh / g.sh + 1; g.OW = ew / g.sw + 1;
  const int64_t wsize = g.G * g.KB * g.R * g.S * g.Cg * kBlock;
  if (wp.ndim() != 1 || wp.shape(0) != wsize)
    fail(std::string(fn) + ": packed weight wp has shape " + shape_str(wp) + ", expected (" +
         std::to_string(wsize) + ",) for K=" + std::to_string(K) + " Cg=" + std::to_string(g.Cg) +
         " R=" + std::to_string(R) + " S=" + std::to_string(S) + " groups=" + std::to_string(groups) +
         " (use pack_conv_weight)");
  return g;
}

// out (or one slab of partials) must be [N, OH, OW, K]; `what` names the array in the message.
void check_out_shape(const char* fn, const py::array& a, const char* what, py::ssize_t first,
                     const ConvGeom& g, const FArr& x) {
  const int nd = int(first) + 4;
  bool ok = a.ndim() == nd;
  for (int d = 0; ok && d < 4; ++d) {
    const int64_t want[4] = {g.N, g.OH, g.OW, g.K};
    ok = a.shape(first + d) == want[d];
  }
  if (!ok)
    fail(std::string(fn) + ": " + what + " has shape " + shape_str(a) + ", expected (" +
         (first ? "P, " : "") + std::to_string(g.N) + ", " + std::to_string(g.OH) + ", " +
         std::to_string(g.OW) + ", " + std::to_string(g.K) + ") for x " + shape_str(x));
}

// The segment layout of a full (all channels, all rows) vertex; see the header.
Mode conv_mode(const ConvGeom& g) {
  const bool contiguous_row = (g.S == 1) || (g.dw == 1 && g.Cg == g.C);
  return contiguous_row ? Mode::Fused : (g.Cg >= 16 ? Mode::Split : Mode::Gather);
}

// Per-thread scratch and the shared zero buffer for a call (allocated with the GIL held).
struct ConvBuffers {
  std::vector<float> zeros, gather;
  std::vector<Scratch> scratch;
  ConvBuffers(const ConvGeom& g, bool any_gather) {
    const int nt = max_threads();
    const int64_t SC = g.S * g.Cg;
    zeros.assign(std::max<int64_t>(SC, 1) + kBlock, 0.f);
    const int64_t gather_per = any_gather ? g.R * kMaxPix * SC : 0;
    gather.assign(std::max<int64_t>(1, gather_per * nt), 0.f);
    scratch.resize(nt);
    for (int t = 0; t < nt; ++t) {
      scratch[t].wseg.resize(g.R * g.S);
      scratch[t].xseg.resize(g.R * g.S * kMaxPix);
      scratch[t].gather = gather.data() + gather_per * t;
    }
  }
};

void check_box_cols(const IArr& vertices, const ConvGeom& g, const char* fn) {
  check_nhwc_boxes(vertices, g.N, g.K, g.OH, g.OW, fn);
}

void conv2d_nhwc(const FArr& x, const FArr& wp, std::optional<FArr> bias,
                 std::optional<FArr> residual, py::array out, const IArr& vertices, int64_t K,
                 int64_t R, int64_t S, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                 int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups, bool relu,
                 const PointwiseProgram* epilogue) {
  const char* fn = "conv2d_nhwc";
  check_ndim(x, 4, fn, "x", "[N, H, W, C]");
  float* o = out_ptr(out, fn);
  check_ndim(out, 4, fn, "out", "[N, OH, OW, K]");
  const ConvGeom g = conv_geom(fn, x, wp, K, R, S, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                               groups);
  check_out_shape(fn, out, "out", 0, g, x);
  check_bias_residual(fn, bias, residual, out, K);
  const py::ssize_t V = check_vertices(vertices, 8, fn);
  check_box_cols(vertices, g, fn);

  check_epilogue(fn, epilogue, out);
  const Mode mode = conv_mode(g);
  ConvBuffers buf(g, mode != Mode::Split);
  const RedRange full{0, g.Cg, 0, g.R};
  const float* xp = x.data();
  const float* wpp = wp.data();
  const float* bp = bias ? bias->data() : nullptr;
  const float* rp = residual ? residual->data() : nullptr;
  const int32_t* vt = vertices.data();
  const int64_t per = epilogue ? epilogue->scratch_floats() : 0;
  std::vector<float> epi_scratch(size_t(per) * size_t(max_threads()));
  for_each_vertex(vt, V, 8, [&](const int32_t* row, int t) {
    conv_vertex(g, mode, xp, wpp, bp, rp, o, row, full, buf.zeros.data(), relu, buf.scratch[t],
                epilogue, epi_scratch.data() + per * t);
  });
}

// Vertex rows (n0,n1,k0,k1,oh0,oh1,ow0,ow1,c0,c1,r0,r1,slab): partials[slab] over the box =
// the sum over channels [c0, c1) of the group and kernel rows [r0, r1).  Vertices writing the
// same slab must own disjoint boxes (each element of a slab has one writer).
void conv2d_nhwc_partial(const FArr& x, const FArr& wp, py::array partials, const IArr& vertices,
                         int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                         int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                         int64_t groups) {
  const char* fn = "conv2d_nhwc_partial";
  constexpr int kCols = 13;
  check_ndim(x, 4, fn, "x", "[N, H, W, C]");
  float* o = out_ptr(partials, fn);
  check_ndim(partials, 5, fn, "partials", "[P, N, OH, OW, K]");
  const ConvGeom g = conv_geom(fn, x, wp, K, R, S, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                               groups);
  check_out_shape(fn, partials, "partials", 1, g, x);
  const int64_t P = partials.shape(0);
  const py::ssize_t V = check_vertices(vertices, kCols, fn);
  check_box_cols(vertices, g, fn);
  check_range_cols(vertices, 8, g.Cg, fn, "input channel within the group (c0, c1)");
  check_range_cols(vertices, 10, g.R, fn, "kernel row (r0, r1)");
  check_index_col(vertices, 12, P, fn, "slab", "partials " + shape_str(partials));

  const int32_t* vt = vertices.data();
  const Mode mode = conv_mode(g);
  // Row segments (Fused or Gather mode, whole channel range) gather into per-thread scratch.
  bool any_gather = false;
  for (py::ssize_t v = 0; v < V && mode != Mode::Split && !any_gather; ++v)
    any_gather = vt[kCols * v + 9] - vt[kCols * v + 8] == g.Cg;
  ConvBuffers buf(g, any_gather);
  const float* xp = x.data();
  const float* wpp = wp.data();
  const int64_t slab = g.N * g.OH * g.OW * g.K;
  for_each_vertex(vt, V, kCols, [&](const int32_t* row, int t) {
    const RedRange red{row[8], row[9], row[10], row[11]};
    conv_vertex(g, mode, xp, wpp, nullptr, nullptr, o + row[12] * slab, row, red,
                buf.zeros.data(), false, buf.scratch[t]);
  });
}

}  // namespace

void register_conv(py::module& m) {
  m.def("pack_conv_weight", &pack_conv_weight, py::arg("w"), py::arg("groups") = 1,
        py::arg("channels_last") = false, py::arg("into") = py::none(),
        "Pack float32 w[K, Cg, R, S] (or, channels_last, its [K, R, S, Cg] storage) into the "
        "blocked layout [G][ceil(Kg/16)][R][S][Cg][16] (1-D, zero padded) that conv2d_nhwc "
        "consumes.");
  m.def("conv2d_nhwc", &conv2d_nhwc, py::arg("x"), py::arg("wp"), py::arg("bias"),
        py::arg("residual"), py::arg("out"), py::arg("vertices"), py::arg("K"), py::arg("R"),
        py::arg("S"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("dil_h"), py::arg("dil_w"), py::arg("groups"), py::arg("relu"),
        py::arg("epilogue") = nullptr,
        "out[n,oh,ow,k] = act(bias[k] + conv(x, w)[n,oh,ow,k] + residual[n,oh,ow,k]) for every "
        "vertex row (n0,n1,k0,k1,oh0,oh1,ow0,ow1); NHWC, packed weights from pack_conv_weight. "
        "epilogue: a PointwiseProgram over out, run on each chunk of pixels once it is written.");
  m.def("conv2d_nhwc_partial", &conv2d_nhwc_partial, py::arg("x"), py::arg("wp"),
        py::arg("partials"), py::arg("vertices"), py::arg("K"), py::arg("R"), py::arg("S"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("dil_h"), py::arg("dil_w"), py::arg("groups"),
        "Partial sums of a conv split over input channels and kernel rows: for every vertex row "
        "(n0,n1,k0,k1,oh0,oh1,ow0,ow1,c0,c1,r0,r1,slab), partials[slab,n,oh,ow,k] = the sum of "
        "x*w over input channels [c0,c1) within the group, kernel rows [r0,r1) and all kernel "
        "columns (a plain store: no bias, residual or ReLU).  partials is float32 "
        "[P, N, OH, OW, K]; reduce the slabs with reduce_partials.");
}

}  // namespace ipugraph
