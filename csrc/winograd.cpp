// Winograd F(4x4, 3x3) and F(2x2, 3x3) convolution for 3x3 stride-1 convs, NHWC activations.
//
// Y = A^T [ (G g G^T) (.) (B^T d B) ] A over a x a input tiles d (a = m + 2, stride m) gives
// m x m outputs with a^2 multiplications per (tile, in-channel, out-channel) instead of 9 m^2:
// the transformed product is a^2 independent GEMMs [tiles x C] . [C x K], one per position xi
// of the tile (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).
// F(4x4) (a = 6, points 0, +-1, +-2, infinity; fp32 error ~5e-6 relative) does 4x fewer
// multiplications but its transformed weights are 4x the weights; F(2x2) (a = 4, points 0, +-1,
// infinity; exact but for rounding) does 2.25x fewer with 16/9 the weights: the planner takes it
// where weight traffic dominates (batch 1, deep layers).
//
// Layouts (shown for F(4x4): 36 positions):
//   U (winograd_weights, once per weight) [36][KB][C][16]: for position xi and 16-channel output
//       block kb, the C rows of 16 lanes the microkernel streams (as pack_conv_weight's rows).
//   V (per thread, per block of TB tiles)  [36][TB][Cp]: the input transform, channels last.
//   M (per thread, per 64 output channels) [36][TB/6][4][6][16]: the GEMM results before
//       A^T . A, each group of 6 tiles in the microkernel's own accumulator layout.
// Per vertex (a box of output pixels and channels, as conv2d_nhwc's) the tiles overlapping the
// box are taken TB at a time: transform their inputs into V (L2-resident), then for every chunk
// of up to 64 output channels run the 36 GEMMs with the shared microkernel (common.h: 6 tiles x
// 4 blocks per call, the reduction over C), inverse-transform and apply the epilogue (bias,
// residual, ReLU, then a fused pointwise program) on the pixels of the box. U is streamed once
// per tile block: TB is as large as L2 allows, and the planner's cost model (ops/conv.py) counts
// that traffic when it chooses between this and the direct conv.
//
// The transforms run on 16 channels at a time in one vector type (V16: one zmm, two ymm, or a
// portable loop), so the AVX-512, AVX2 and portable builds share this code.
#include "pointwise.h"
#include "winograd.h"

#include <memory>
#include <optional>
#include <pybind11/stl.h>

namespace ipugraph {

namespace {

using wino::V16;
using wino::Wino;

constexpr int kChunk = kMaxNB * kBlock;  // output channels per GEMM pass

struct WGeom {
  int64_t N, H, W, C, K, OH, OW, ph, pw, KB, Cp, TH, TW;
};

// Per-thread buffers (common.h scratch_floats), uninitialised: every element is written before
// it is read.
struct WScratch {
  float *V, *M, *acc, *Ul, *taps;  // Ul, taps: U transformed in the vertex (WForm other than U)
};

// Input transform of tile (n, th, tw) into V[xi][slot][:] (xi stride vstride).
template <int Mt>
void input_tile(const WGeom& g, const float* x, const float* zeros, int64_t n, int64_t th,
                int64_t tw, float* V, int64_t vstride, float* tmp) {
  constexpr int A = Wino<Mt>::A, XI = A * A;
  const int64_t ih0 = th * Mt - g.ph, iw0 = tw * Mt - g.pw;
  const float* px[XI];
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j) {
      const int64_t ih = ih0 + i, iw = iw0 + j;
      px[i * A + j] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                          ? x + ((n * g.H + ih) * g.W + iw) * g.C : zeros;
    }
  alignas(64) float tail[XI * 16];
  for (int64_t c = 0; c < g.C; c += 16) {
    const float* src[XI];
    if (c + 16 <= g.C) {
      for (int q = 0; q < XI; ++q) src[q] = px[q] + c;
    } else {  // channel tail: zero-padded copies
      const int64_t nc = g.C - c;
      for (int q = 0; q < XI; ++q) {
        float* t = tail + q * 16;
        for (int l = 0; l < 16; ++l) t[l] = l < nc ? px[q][c + l] : 0.f;
        src[q] = t;
      }
    }
    V16 col[A], r[A];
    for (int j = 0; j < A; ++j) {  // rows of B^T d, column by column, into tmp[i][j]
      for (int i = 0; i < A; ++i) col[i] = V16::load(src[i * A + j]);
      Wino<Mt>::bt(col, r);
      for (int i = 0; i < A; ++i) r[i].store(tmp + (i * A + j) * 16);
    }
    for (int i = 0; i < A; ++i) {  // (B^T d) B, row by row, into V
      for (int j = 0; j < A; ++j) col[j] = V16::load(tmp + (i * A + j) * 16);
      Wino<Mt>::bt(col, r);
      for (int j = 0; j < A; ++j) r[j].store(V + (i * A + j) * vstride + c);
    }
  }
}

// Tiles per block for a vertex of `tiles` tiles and `kv` output channels. U (36 x C x kv
// floats) is streamed once per block, V (36 x TB x Cp) is re-read once per 64-channel chunk:
// keep V within ~1 MiB of the core's L2 when U is small enough to stay cached too, else take
// all the vertex's tiles at once (up to kMaxV floats of V) and stream U once, re-reading V.
// (ops/conv.py's Winograd cost model makes the same choice.)
constexpr int64_t kL2Floats = (1 << 20) / 4;
constexpr int64_t kMaxV = (16 << 20) / 4;

int64_t tile_block(const WGeom& g, int64_t xis, int64_t tiles, int64_t kv, bool fused) {
  // Transforming the weights in the vertex repeats the transform per block: take every tile
  // (the planner does so only for vertices of <= 48 tiles, ops/conv.py winograd_fused_gain).
  if (fused)
    return std::clamp<int64_t>(tiles, 1, std::max<int64_t>(kMaxPix, kMaxV / (xis * g.Cp)));
  const int64_t small = std::clamp<int64_t>(kL2Floats / (xis * g.Cp), kMaxPix, 8 * kMaxPix);
  if (tiles <= small) return std::max<int64_t>(tiles, 1);
  const int64_t u = xis * g.C * ((kv + kBlock - 1) / kBlock * kBlock);
  if (u <= kL2Floats) return small;
  const int64_t all = std::max<int64_t>(kMaxPix, std::min<int64_t>(tiles, kMaxV / (xis * g.Cp)));
  const int64_t chunks = (kv + kChunk - 1) / kChunk;
  const double cost_small = double((tiles + small - 1) / small) * double(u);
  const double cost_all = double((tiles + all - 1) / all) * double(u) +
                          double(chunks) * double(xis * g.Cp) * double(tiles);
  return cost_all < cost_small ? all : small;
}

// The forms conv2d_winograd takes its weights in.  U: winograd_weights' output, read as it is.
// The others hold the 9 taps, transformed inside the vertex kUl floats of U at a time
// (positions x NB blocks x cbl reduction channels, [xi][b][cbl][16]): that reads 9 / a^2 of U
// from memory (a quarter for F(4x4)) and skips the pass that rewrites U whenever a trained
// weight changes, for ~10 vector ops per (channel, 16 output channels, position) -- cheap
// beside the GEMM's one per tile once a vertex has ~16 tiles (ops/conv.py winograd_fused_gain).
//   Taps:           pack_conv_weight's [KB][3][3][C][16] (groups 1)
//   TapsFlipped:    pack_conv_data_weight's, for the backward-data conv: taps reversed
//   Storage:        the weight's own channels-last storage [K][3][3][C]: 16 output channels
//                   at a stride of 9C, transposed into lanes in the vertex
//   StorageFlipped: the same storage for the backward-data conv (out = C, reduction = K):
//                   16 channels contiguous, taps reversed
enum class WForm { U, Taps, TapsFlipped, Storage, StorageFlipped };

constexpr int64_t kUl = (640 << 10) / 4;

template <int Mt>
int64_t ul_channels() {  // a multiple of 16: the taps are gathered 16 channels at a time
  constexpr int64_t xis = (Mt + 2) * (Mt + 2);
  return std::clamp<int64_t>(kUl / (xis * kMaxNB * kBlock) / 16 * 16, 16, 128);
}

#if defined(IPUGRAPH_AVX512)
// r[i][j] <- r[j][i] for a 16 x 16 block of floats in 16 registers.  (GCC 12 warns that the
// builtins' undefined pass-through operand "may be used uninitialized": a false positive.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {  // interleave pairs of rows
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 4 x 4 blocks within each 128-bit lane
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {      // then the 128-bit lanes across rows 4 apart, 8 apart
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}
#pragma GCC diagnostic pop
#endif

// taps[t][cc][0:16] = tap t (r * 3 + s of the conv this kernel computes) of reduction channel
// c0 + cc for the 16 output channels of block ob, cc < nc <= 16; lanes past K are zero.
void load_taps(WForm form, const float* W, int64_t C, int64_t K, int64_t ob, int64_t c0,
               int64_t nc, float* taps) {
  const int64_t o0 = ob * kBlock, nl = std::min<int64_t>(kBlock, K - o0);
  switch (form) {
    case WForm::Storage:
#if defined(IPUGRAPH_AVX512)
      {  // 16 rows of 16 channels per tap, transposed in registers
        const __mmask16 m = __mmask16(0xFFFFu >> (16 - nc));
        for (int t = 0; t < 9; ++t) {
          __m512 r[16];
          for (int64_t l = 0; l < kBlock; ++l)
            r[l] = l < nl ? _mm512_maskz_loadu_ps(m, W + (o0 + l) * 9 * C + t * C + c0)
                          : _mm512_setzero_ps();
          transpose16(r);
          for (int64_t cc = 0; cc < nc; ++cc) _mm512_storeu_ps(taps + (t * 16 + cc) * kBlock, r[cc]);
        }
        return;
      }
#endif
      for (int64_t l = 0; l < kBlock; ++l) {
        if (l >= nl) {
          for (int t = 0; t < 9; ++t)
            for (int64_t cc = 0; cc < nc; ++cc) taps[(t * 16 + cc) * kBlock + l] = 0.f;
          continue;
        }
        const float* wk = W + (o0 + l) * 9 * C + c0;
        for (int t = 0; t < 9; ++t)
          for (int64_t cc = 0; cc < nc; ++cc) taps[(t * 16 + cc) * kBlock + l] = wk[t * C + cc];
      }
      return;
    case WForm::StorageFlipped:  // the last block of a K that is not a multiple of 16
      for (int64_t cc = 0; cc < nc; ++cc)
        for (int t = 0; t < 9; ++t) {
          float* d = taps + (t * 16 + cc) * kBlock;
          const float* src = W + ((c0 + cc) * 9 + (8 - t)) * K + o0;
          if (nl == kBlock) {
            V16::load(src).store(d);
          } else {
            for (int64_t l = 0; l < kBlock; ++l) d[l] = l < nl ? src[l] : 0.f;
          }
        }
      return;
    case WForm::U:
    case WForm::Taps:
    case WForm::TapsFlipped:  // read in place (transform_group)
      return;
  }
}

// The storage forms read 64-byte pieces of rows 2-18 KiB apart, a pattern the hardware
// prefetchers miss: fetch the next group of 16 channels while this one is transformed.
void prefetch_taps(WForm form, const float* W, int64_t C, int64_t K, int64_t kb0, int NB,
                   int64_t c0) {
  if (c0 >= C) return;
  const int64_t o0 = kb0 * kBlock, o1 = std::min<int64_t>(K, (kb0 + NB) * kBlock);
  if (form == WForm::Storage) {
    for (int64_t o = o0; o < o1; ++o)
      for (int t = 0; t < 9; ++t) _mm_prefetch((const char*)(W + (o * 9 + t) * C + c0), _MM_HINT_T0);
  } else if (form == WForm::StorageFlipped) {
    for (int64_t c = c0; c < std::min<int64_t>(C, c0 + 16); ++c)
      for (int t = 0; t < 9; ++t)
        for (int64_t o = o0; o < o1; o += kBlock)
          _mm_prefetch((const char*)(W + (c * 9 + t) * K + o), _MM_HINT_T0);
  }
}

// U = G g G^T of one input channel for 16 output channels: g[r * 3 + s] the 9 taps, position
// xi = i * a + j stored at dst + xi * xstride.
template <int Mt>
inline void weight_tile(const V16* g, float* dst, int64_t xstride) {
  constexpr int A = Wino<Mt>::A;
  V16 col[3], t[A][3], row[A], u3[3];
  for (int q = 0; q < 3; ++q) {  // G g, column by column
    for (int r = 0; r < 3; ++r) col[r] = g[r * 3 + q];
    V16 out[A];
    Wino<Mt>::gt(col, out);
    for (int i = 0; i < A; ++i) t[i][q] = out[i];
  }
  for (int i = 0; i < A; ++i) {  // (G g) G^T, row by row
    for (int q = 0; q < 3; ++q) u3[q] = t[i][q];
    Wino<Mt>::gt(u3, row);
    for (int j = 0; j < A; ++j) row[j].store(dst + (i * A + j) * xstride);
  }
}

template <int Mt>
void transform_group(WForm form, const float* W, int64_t C, int64_t K, int64_t kb0, int b,
                     int64_t cb0, int64_t c0, int64_t nc, int64_t cbl, float* Ul, float* taps) {
  // The 16 lanes of tap t of channel c0 + cc at src + t * tst + cc * cst, read in place where
  // the form holds them contiguous (a copy measured 25 % slower on ResNet-34's layer 4 at
  // batch 1), else gathered into `taps` (load_taps).
  const int64_t o0 = (kb0 + b) * kBlock;
  const float* src = taps;
  int64_t tst = 16 * kBlock, cst = kBlock;
  bool flip = false;
  if (form == WForm::Taps || form == WForm::TapsFlipped) {
    src = W + ((kb0 + b) * 9 * C + c0) * kBlock;
    tst = C * kBlock;
    flip = form == WForm::TapsFlipped;
  } else if (form == WForm::StorageFlipped && o0 + kBlock <= K) {
    src = W + c0 * 9 * K + o0;
    tst = K;
    cst = 9 * K;
    flip = true;
  } else {
    load_taps(form, W, C, K, kb0 + b, c0, nc, taps);
  }
  for (int64_t cc = 0; cc < nc; ++cc) {
    V16 g[9];
    for (int t = 0; t < 9; ++t) g[t] = V16::load(src + (flip ? 8 - t : t) * tst + cc * cst);
    weight_tile<Mt>(g, Ul + (b * cbl + c0 - cb0 + cc) * kBlock, kMaxNB * cbl * kBlock);
  }
}

// Ul for output blocks kb0 .. kb0 + NB and reduction channels [cb0, cb0 + ncb), 16 at a time.
// The order follows the form's layout: packed taps block by block (9 runs of 1 KiB per group),
// the storage forms group by group (the NB blocks of one storage row are adjacent), fetching
// the next group ahead.
template <int Mt>
void transform_block(WForm form, const float* W, int64_t C, int64_t K, int64_t kb0, int NB,
                     int64_t cb0, int64_t ncb, int64_t cbl, float* Ul, float* taps) {
  const int64_t c1 = cb0 + ncb;
  if (form == WForm::Taps || form == WForm::TapsFlipped) {
    for (int b = 0; b < NB; ++b)
      for (int64_t c0 = cb0; c0 < c1; c0 += 16)
        transform_group<Mt>(form, W, C, K, kb0, b, cb0, c0, std::min<int64_t>(16, c1 - c0), cbl,
                            Ul, taps);
    return;
  }
  for (int64_t c0 = cb0; c0 < c1; c0 += 16) {
    prefetch_taps(form, W, C, K, kb0, NB, c0 + 16);
    for (int b = 0; b < NB; ++b)
      transform_group<Mt>(form, W, C, K, kb0, b, cb0, c0, std::min<int64_t>(16, c1 - c0), cbl,
                          Ul, taps);
  }
}

int64_t vertex_tiles(const int32_t* vx, int64_t m) {
  const int64_t th = (int64_t(vx[5]) + m - 1) / m - vx[4] / m;
  const int64_t tw = (int64_t(vx[7]) + m - 1) / m - vx[6] / m;
  return (vx[1] > vx[0] && vx[3] > vx[2] && vx[5] > vx[4] && vx[7] > vx[6])
             ? int64_t(vx[1] - vx[0]) * th * tw : 0;
}

template <int Mt>
void winograd_vertex(const WGeom& g, const float* x, const float* U, WForm form,
                     const float* bias, const float* res, float* out, const int32_t* vx,
                     const float* zeros, bool relu, WScratch& sc, const PointwiseProgram* epi,
                     float* epi_scratch) {
  constexpr int kM = Mt, kA = Wino<Mt>::A, kXi = kA * kA;
  const int64_t n0 = vx[0], n1 = vx[1], k0 = vx[2], k1 = vx[3];
  const int64_t oh0 = vx[4], oh1 = vx[5], ow0 = vx[6], ow1 = vx[7];
  if (n1 <= n0 || k1 <= k0 || oh1 <= oh0 || ow1 <= ow0) return;
  const int64_t th0 = oh0 / kM, th1 = (oh1 + kM - 1) / kM;
  const int64_t tw0 = ow0 / kM, tw1 = (ow1 + kM - 1) / kM;
  const int64_t nth = th1 - th0, ntw = tw1 - tw0;
  const int64_t ntiles = (n1 - n0) * nth * ntw;
  const bool packed = form != WForm::U;
  const int64_t TB = tile_block(g, kXi, ntiles, k1 - k0, packed);
  const int64_t cbl = ul_channels<Mt>();
  const int64_t ulstride = kMaxNB * cbl * kBlock;  // floats between positions of Ul
  // Planes 64 bytes longer than their data: 36 accesses at a stride that is a multiple of 4 KiB
  // would all fall into one L1 set.
  const int64_t vstride = TB * g.Cp + 16;   // floats between xi planes of V
  const int64_t grp = kMaxNB * kAccStride;  // M: a microkernel's acc per group of 6 tiles
  const int64_t mstride = (TB + kMaxPix - 1) / kMaxPix * grp + 16;
  const int64_t ustride = g.KB * g.C * kBlock;
  float* V = sc.V;
  float* M = sc.M;
  float* acc = sc.acc;                      // kMaxNB * kAccStride
  float* tmp = acc + kMaxNB * kAccStride;   // a^2 x 16: the half-transformed tile
  const float* xseg[kMaxPix];
  const float* wseg[1];
  alignas(64) float ytile[kM * kM * 16];
  float* outp[kM];
  const float* resp[kM];
  EpilogueRuns runs(epi, epi_scratch);

  for (int64_t t0 = 0; t0 < ntiles; t0 += TB) {
    const int64_t tb = std::min(TB, ntiles - t0);
    for (int64_t s = 0; s < tb; ++s) {
      const int64_t q = t0 + s, n = n0 + q / (nth * ntw), r = q % (nth * ntw);
      input_tile<Mt>(g, x, zeros, n, th0 + r / ntw, tw0 + r % ntw, V + s * g.Cp, vstride, tmp);
    }
    // Output channels [k0, k1) in chunks of up to kMaxNB blocks.
    for (int64_t kb0 = k0 / kBlock; kb0 * kBlock < k1; kb0 += kMaxNB) {
      const int NB = int(std::min<int64_t>(kMaxNB, (k1 + kBlock - 1) / kBlock - kb0));
      // The reduction over C: whole from U, or cbl channels at a time from Ul.
      for (int64_t cb0 = 0; cb0 < g.C; cb0 += packed ? cbl : g.C) {
        const int64_t ncb = packed ? std::min(cbl, g.C - cb0) : g.C;
        if (packed) transform_block<Mt>(form, U, g.C, g.K, kb0, NB, cb0, ncb, cbl, sc.Ul, sc.taps);
        for (int xi = 0; xi < kXi; ++xi) {
          wseg[0] = packed ? sc.Ul + xi * ulstride : U + xi * ustride + kb0 * g.C * kBlock;
          const float* vxi = V + xi * vstride + cb0;
          float* mxi = M + xi * mstride;
          // Groups of 6 tiles; each microkernel call leaves its acc in place as M's group.
          for (int64_t s0 = 0; s0 < tb; s0 += kMaxPix) {
            const int P = int(std::min<int64_t>(kMaxPix, tb - s0));
            for (int p = 0; p < P; ++p) xseg[p] = vxi + (s0 + p) * g.Cp;
            get_ukernel(P, NB, cb0 > 0)(wseg, packed ? cbl * kBlock : g.C * kBlock, xseg, 1,
                                        int(ncb), mxi + s0 / kMaxPix * grp);
          }
        }
      }
      // Inverse transform, epilogue, store: the box's pixels of each tile.
      for (int64_t s = 0; s < tb; ++s) {
        const int64_t q = t0 + s, n = n0 + q / (nth * ntw), r = q % (nth * ntw);
        const int64_t oh_t = (th0 + r / ntw) * kM, ow_t = (tw0 + r % ntw) * kM;
        const int64_t ia = std::max(oh0, oh_t), ib = std::min(oh1, oh_t + kM);
        const int64_t ja = std::max(ow0, ow_t), jb = std::min(ow1, ow_t + kM);
        for (int b = 0; b < NB; ++b) {
          const int64_t kstart = (kb0 + b) * kBlock;
          const int lo = int(std::max<int64_t>(0, k0 - kstart));
          const int hi = int(std::min<int64_t>(kBlock, k1 - kstart));
          if (hi <= lo) continue;
          V16 m[kXi], col[kA], y[kM];
          const float* mt = M + s / kMaxPix * grp + b * kAccStride + s % kMaxPix * kBlock;
          for (int xi = 0; xi < kXi; ++xi) m[xi] = V16::load(mt + xi * mstride);
          V16 half[kM][kA];  // A^T m: m rows x a columns
          for (int j = 0; j < kA; ++j) {
            for (int i = 0; i < kA; ++i) col[i] = m[i * kA + j];
            Wino<Mt>::at(col, y);
            for (int i = 0; i < kM; ++i) half[i][j] = y[i];
          }
          for (int i = 0; i < kM; ++i) {
            Wino<Mt>::at(half[i], y);
            for (int j = 0; j < kM; ++j) y[j].store(ytile + (i * kM + j) * 16);
          }
          for (int64_t i = ia; i < ib; ++i) {
            const int P = int(jb - ja);
            for (int p = 0; p < P; ++p) {
              const int64_t o = ((n * g.OH + i) * g.OW + ja + p) * g.K + kstart;
              outp[p] = out + o;
              resp[p] = res ? res + o : nullptr;
            }
            epilogue(ytile + ((i - oh_t) * kM + (ja - ow_t)) * 16, P, outp,
                     res ? resp : nullptr, bias ? bias + kstart : nullptr, 0, lo, hi, false,
                     relu);
          }
        }
        if (epi)
          for (int64_t i = ia; i < ib; ++i)
            for (int64_t j = ja; j < jb; ++j) {
              const int64_t o = ((n * g.OH + i) * g.OW + j) * g.K;
              runs.add(o + std::max(k0, kb0 * kBlock),
                       o + std::min(k1, (kb0 + NB) * kBlock));
            }
      }
      runs.flush();
    }
  }
}

void check_tile(const char* fn, int64_t tile) {
  if (tile != 2 && tile != 4)
    fail(std::string(fn) + ": tile must be 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)), got " +
         std::to_string(tile));
}

WGeom winograd_geom(const char* fn, const FArr& x, const FArr& U, int64_t K, int64_t pad_h,
                    int64_t pad_w, int64_t tile, WForm form) {
  check_tile(fn, tile);
  const int64_t xis = (tile + 2) * (tile + 2);
  check_ndim(x, 4, fn, "x", "[N, H, W, C]");
  if (K < 1 || pad_h < 0 || pad_w < 0 || pad_h > 2 || pad_w > 2)
    fail(std::string(fn) + ": need K >= 1 and pads in [0, 2], got K=" + std::to_string(K) +
         " pad=(" + std::to_string(pad_h) + "," + std::to_string(pad_w) + ")");
  WGeom g{};
  g.N = x.shape(0); g.H = x.shape(1); g.W = x.shape(2); g.C = x.shape(3); g.K = K;
  g.ph = pad_h; g.pw = pad_w;
  g.OH = g.H + 2 * pad_h - 2; g.OW = g.W + 2 * pad_w - 2;
  if (g.OH < 1 || g.OW < 1 || g.C < 1)
    fail(std::string(fn) + ": a 3x3 kernel does not fit x " + shape_str(x) + " with pad (" +
         std::to_string(pad_h) + "," + std::to_string(pad_w) + ")");
  g.KB = (K + kBlock - 1) / kBlock;
  g.Cp = (g.C + 15) / 16 * 16;
  g.TH = (g.OH + tile - 1) / tile; g.TW = (g.OW + tile - 1) / tile;
  if (form == WForm::Storage || form == WForm::StorageFlipped) {
    // [K][3][3][C] of the forward conv: (K, C) = (out, reduction), or swapped when flipped
    const bool fl = form == WForm::StorageFlipped;
    const int64_t kw = fl ? g.C : K, cw = fl ? K : g.C;
    if (U.ndim() != 4 || U.shape(0) != kw || U.shape(1) != 3 || U.shape(2) != 3 ||
        U.shape(3) != cw)
      fail(std::string(fn) + ": weight storage has shape " + shape_str(U) + ", expected (" +
           std::to_string(kw) + ", 3, 3, " + std::to_string(cw) + ") [K, R, S, C] for " +
           (fl ? "the backward-data conv of dy with " : "x with ") + std::to_string(g.C) +
           " channels into " + std::to_string(K));
    return g;
  }
  const bool packed = form != WForm::U;
  const int64_t usize = (packed ? 9 : xis) * g.KB * g.C * kBlock;
  if (U.ndim() != 1 || U.shape(0) != usize)
    fail(std::string(fn) + ": " + (packed ? "packed weight" : "transformed weight U") +
         " has shape " + shape_str(U) + ", expected (" + std::to_string(usize) + ",) for " +
         (packed ? std::string("a 3x3 kernel") : "F(" + std::to_string(tile) + "x" +
                                                     std::to_string(tile) + ", 3x3)") +
         ", K=" + std::to_string(K) + " C=" + std::to_string(g.C) +
         (packed ? " (use pack_conv_weight, or pack_conv_data_weight for taps_flipped)"
                 : " (use winograd_weights with the same tile)"));
  return g;
}

// Copy n floats (a multiple of 16, both ends 64-byte aligned) past the caches when `stream`.
inline void copy_rows(float* dst, const float* src, int64_t n, bool stream) {
#if defined(IPUGRAPH_AVX512)
  if (stream) {
    for (int64_t i = 0; i < n; i += 16) _mm512_stream_ps(dst + i, _mm512_load_ps(src + i));
    return;
  }
#endif
  (void)stream;
  std::memcpy(dst, src, size_t(n) * sizeof(float));
}

// U = G g G^T per (k, c), stored [a^2][KB][C][16] (zero padded lanes). Per 16-channel output
// block: the 9 taps packed into lane rows (pack_lanes, as pack_conv_weight), then G g G^T on
// 16 lanes at a time for 16 input channels into a local [a^2][16][16] block, written out as
// a^2 runs of 1 KB: one 64-byte row per position per channel would scatter a^2 write streams
// over the whole of U (the transform then ran at ~3.5 GB/s). A U beyond L2 is written with
// non-temporal stores (it is read back by the next conv, not kept).
template <int Mt>
void transform_weights(const WeightView& v, const float* src, float* dst, float* taps,
                       bool aligned) {
  constexpr int A = Wino<Mt>::A;
  constexpr int kC = 16;                       // input channels per local block
  const int64_t K = v.K, C = v.Cg, KB = (K + kBlock - 1) / kBlock;
  const int64_t ustride = KB * C * kBlock;
  const bool stream = aligned && A * A * ustride * int64_t(sizeof(float)) > (4 << 20);
#pragma omp parallel
  {
    alignas(64) float local[A * A * kC * kBlock];
#pragma omp for schedule(dynamic, 1)
    for (int64_t kb = 0; kb < KB; ++kb) {
      float* tp = taps + size_t(thread_id()) * size_t(9 * C * kBlock);
      const int64_t n = std::min<int64_t>(kBlock, K - kb * kBlock);
      for (int r = 0; r < 3; ++r)
        for (int q = 0; q < 3; ++q)
          pack_lanes(tp + (r * 3 + q) * C * kBlock,
                     src + kb * kBlock * v.sk + r * v.sr + q * v.ss, n, v.sk, C, v.sc);
      for (int64_t c0 = 0; c0 < C; c0 += kC) {
        const int64_t nc = std::min<int64_t>(kC, C - c0);
        for (int64_t cc = 0; cc < nc; ++cc) {
          V16 g[9];
          for (int t = 0; t < 9; ++t) g[t] = V16::load(tp + (t * C + c0 + cc) * kBlock);
          weight_tile<Mt>(g, local + cc * kBlock, kC * kBlock);
        }
        for (int xi = 0; xi < A * A; ++xi)
          copy_rows(dst + xi * ustride + (kb * C + c0) * kBlock, local + xi * kC * kBlock,
                    nc * kBlock, stream);
      }
    }
#if defined(IPUGRAPH_AVX512)
    if (stream) _mm_sfence();  // each thread orders its own non-temporal stores
#endif
  }
}

py::array winograd_weights(const FArr& w, bool channels_last, int64_t tile, bool transposed,
                            std::optional<py::array> into) {
  const char* fn = "winograd_weights";
  check_tile(fn, tile);
  WeightView v = weight_view(w, channels_last, fn);
  if (v.R != 3 || v.S != 3)
    fail(std::string(fn) + ": F(" + std::to_string(tile) + "x" + std::to_string(tile) +
         ", 3x3) needs a 3x3 kernel, w has shape " + shape_str(w));
  const float* src = w.data();
  if (transposed) {
    // The gradient of x is a conv of dy with w'[c, k, r, s] = w[k, c, 2-r, 2-s]: the same
    // storage read with in/out channels swapped and the taps reversed.
    src += 2 * v.sr + 2 * v.ss;
    v = WeightView{v.Cg, v.K, 3, 3, v.sc, v.sk, -v.sr, -v.ss};
  }
  const int64_t xis = (tile + 2) * (tile + 2), KB = (v.K + kBlock - 1) / kBlock;
  const int64_t size = xis * KB * v.Cg * kBlock;
  float* dst = nullptr;
  py::array out = packed_buffer(into, size, &dst, w, fn);
  const bool aligned = reinterpret_cast<uintptr_t>(dst) % 64 == 0;
  std::vector<float> taps(size_t(max_threads()) * size_t(9 * v.Cg * kBlock));
  py::gil_scoped_release nogil;
  if (tile == 4)
    transform_weights<4>(v, src, dst, taps.data(), aligned);
  else
    transform_weights<2>(v, src, dst, taps.data(), aligned);
  return out;
}

void conv2d_winograd(const FArr& x, const FArr& U, std::optional<FArr> bias,
                     std::optional<FArr> residual, py::array out, const IArr& vertices,
                     int64_t K, int64_t pad_h, int64_t pad_w, bool relu,
                     const PointwiseProgram* epilogue_prog, int64_t tile,
                     const std::string& weights) {
  const char* fn = "conv2d_winograd";
  float* o = out_ptr(out, fn);
  static const std::pair<const char*, WForm> forms[] = {
      {"U", WForm::U}, {"taps", WForm::Taps}, {"taps_flipped", WForm::TapsFlipped},
      {"storage", WForm::Storage}, {"storage_flipped", WForm::StorageFlipped}};
  WForm form = WForm::U;
  bool known = false;
  for (const auto& [name, f] : forms)
    if (weights == name) { form = f; known = true; }
  if (!known)
    fail(std::string(fn) + ": weights must be 'U', 'taps', 'taps_flipped', 'storage' or "
         "'storage_flipped', got '" + weights + "'");
  const bool packed = form != WForm::U;
  const WGeom g = winograd_geom(fn, x, U, K, pad_h, pad_w, tile, form);
  const int64_t xis = (tile + 2) * (tile + 2);
  check_ndim(out, 4, fn, "out", "[N, OH, OW, K]");
  if (out.shape(0) != g.N || out.shape(1) != g.OH || out.shape(2) != g.OW || out.shape(3) != K)
    fail(std::string(fn) + ": out has shape " + shape_str(out) + ", expected (" +
         std::to_string(g.N) + ", " + std::to_string(g.OH) + ", " + std::to_string(g.OW) +
         ", " + std::to_string(K) + ") for x " + shape_str(x));
  check_bias_residual(fn, bias, residual, out, K);
  check_no_overlap(fn, out, x, "x");
  const py::ssize_t V = check_vertices(vertices, 8, fn);
  check_nhwc_boxes(vertices, g.N, K, g.OH, g.OW, fn);
  check_epilogue(fn, epilogue_prog, out);

  // Scratch for the largest tile block any vertex takes.
  int64_t TB = 1;
  for (py::ssize_t v = 0; v < V; ++v) {
    const int32_t* row = vertices.data() + 8 * v;
    TB = std::max(TB, tile_block(g, xis, vertex_tiles(row, tile), int64_t(row[3]) - row[2],
                                 packed));
  }
  const int nt = max_threads();
  const size_t nv = size_t((xis * (TB * g.Cp + 16) + 15) / 16 * 16);
  const size_t nm =
      size_t((xis * ((TB + kMaxPix - 1) / kMaxPix * kMaxNB * kAccStride + 16) + 15) / 16 * 16);
  const size_t na = size_t((kMaxNB * kAccStride + xis * 16 + 15) / 16 * 16);
  float* vbuf = scratch_floats(0, nv * size_t(nt));
  float* mbuf = scratch_floats(1, nm * size_t(nt));
  float* abuf = scratch_floats(2, na * size_t(nt));
  const size_t nu = packed ? size_t(xis * kMaxNB * kBlock *
                                    (tile == 4 ? ul_channels<4>() : ul_channels<2>()))
                           : 0;
  const size_t ntaps = size_t(9 * 16 * kBlock);
  float* ubuf = packed ? scratch_floats(3, (nu + ntaps) * size_t(nt)) : nullptr;
  std::vector<WScratch> scratch(static_cast<size_t>(nt));
  for (int t = 0; t < nt; ++t)
    scratch[size_t(t)] = {vbuf + nv * size_t(t), mbuf + nm * size_t(t), abuf + na * size_t(t),
                          packed ? ubuf + (nu + ntaps) * size_t(t) : nullptr,
                          packed ? ubuf + (nu + ntaps) * size_t(t) + nu : nullptr};
  std::vector<float> zeros(size_t(g.Cp) + 16, 0.f);
  const int64_t per = epilogue_prog ? epilogue_prog->scratch_floats() : 0;
  std::vector<float> epi_scratch(size_t(per) * size_t(nt));
  const float* xp = x.data();
  const float* up = U.data();
  const float* bp = bias ? bias->data() : nullptr;
  const float* rp = residual ? residual->data() : nullptr;
  auto vertex = tile == 4 ? &winograd_vertex<4> : &winograd_vertex<2>;
  for_each_vertex(vertices.data(), V, 8, [&](const int32_t* row, int t) {
    vertex(g, xp, up, form, bp, rp, o, row, zeros.data(), relu, scratch[size_t(t)],
           epilogue_prog, epi_scratch.data() + per * t);
  });
}

}  // namespace

void register_winograd(py::module& m) {
  m.def("winograd_weights", &winograd_weights, py::arg("w"), py::arg("channels_last") = false,
        py::arg("tile") = 4, py::arg("transposed") = false, py::arg("into") = py::none(),
        "Transform a 3x3 weight w[K, C, 3, 3] (or, channels_last, its [K, 3, 3, C] storage) "
        "for F(tile x tile, 3x3), tile 4 or 2: U = G w G^T per (k, c), stored "
        "[(tile+2)^2][ceil(K/16)][C][16] (1-D, zero padded) for conv2d_winograd. transposed: "
        "U of w'[c, k, r, s] = w[k, c, 2-r, 2-s] instead ([(tile+2)^2][ceil(C/16)][K][16]), so "
        "conv2d_winograd of dy computes conv2d_backward_data (pads 2 - the forward's). into: "
        "an earlier U of the same shape to overwrite (returned).");
  m.def("conv2d_winograd", &conv2d_winograd, py::arg("x"), py::arg("U"), py::arg("bias"),
        py::arg("residual"), py::arg("out"), py::arg("vertices"), py::arg("K"),
        py::arg("pad_h"), py::arg("pad_w"), py::arg("relu"), py::arg("epilogue") = nullptr,
        py::arg("tile") = 4, py::arg("weights") = "U",
        "3x3 stride-1 conv by Winograd F(tile x tile, 3x3), tile 4 or 2: out[N, OH, OW, K] "
        "(NHWC) = act(bias + conv(x, w) + residual) for every vertex row "
        "(n0,n1,k0,k1,oh0,oh1,ow0,ow1), U from winograd_weights with the same tile; then the "
        "fused pointwise epilogue program, if any. weights: the form U is in -- 'U' "
        "(winograd_weights), or the untransformed taps, transformed block by block inside "
        "each vertex (less weight traffic, no pass over U when the weight changes; every tile "
        "of a vertex in one block): 'taps' (pack_conv_weight, groups 1), 'taps_flipped' "
        "(pack_conv_data_weight, for the backward-data conv: taps reversed), 'storage' (the "
        "weight's channels-last [K, 3, 3, C] storage itself) or 'storage_flipped' (that "
        "storage, for the backward-data conv).");
}

}  // namespace ipugraph
