// Matrix multiply out[M, N] = act(a[M, K] @ B + bias), B packed as [ceil(N/16)][K][16].
//
// A GEMM is a 1x1 convolution (pixels = rows of a, in-channels = K), so this reuses the conv
// microkernel with one segment per call.  Blocking inside a vertex (m0, m1, n0, n1):
//   for each chunk of rows of a (chunk x KC floats ~ 128 KiB: stays in L2)
//     for each KC-slice of the reduction (KC*16 weights = 128 KiB)
//       for each group of <= kMaxNB 16-column blocks, each tile of <= 6 rows: microkernel
//       + epilogue
// Slices after the first accumulate into out; bias goes in with the first, ReLU with the last.
//
// matmul_partial: a vertex may own only a range [k0, k1) of the reduction; it stores its partial
// product (no epilogue) into one slab of partials [P, M, N], and reduce_partials sums the slabs.
#include "pointwise.h"

#include <optional>
#include <pybind11/stl.h>

namespace ipugraph {

namespace {

constexpr int64_t kKC = 2048;

py::array pack_matmul_weight(const FArr& b, bool transposed, std::optional<py::array> into) {
  const char* fn = "pack_matmul_weight";
  check_ndim(b, 2, fn, "b", transposed ? "[N, K]" : "[K, N]");
  const int64_t K = transposed ? b.shape(1) : b.shape(0);
  const int64_t N = transposed ? b.shape(0) : b.shape(1);
  const int64_t NB = (N + kBlock - 1) / kBlock;
  float* dst = nullptr;
  auto out = packed_buffer(into, NB * K * kBlock, &dst, b, fn);
  const float* src = b.data();
  const int64_t sn = transposed ? K : 1, sk = transposed ? 1 : N;
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < NB; ++nb)  // 16 columns: rows k, lanes n
    pack_lanes(dst + nb * K * kBlock, src + nb * kBlock * sn,
               std::min<int64_t>(kBlock, N - nb * kBlock), sn, K, sk);
  return out;
}

// out[m0:m1, n0:n1] = act(bias + a[:, k0:k1] @ B[k0:k1, :]) for vx = (m0, m1, n0, n1); out is
// [M, N] row-major, a [M, K], bp packed with the full K.
void matmul_vertex(const float* a, const float* bp, const float* bias, float* out, int64_t K,
                   int64_t N, const int32_t* vx, int64_t k0, int64_t k1, bool relu,
                   const PointwiseProgram* epi = nullptr, float* epi_scratch = nullptr) {
  const int64_t m0 = vx[0], m1 = vx[1], n0 = vx[2], n1 = vx[3];
  if (m1 <= m0 || n1 <= n0) return;
  const int64_t KR = k1 - k0;  // reduction length of this vertex
  const int64_t kc_len = std::min<int64_t>(std::max<int64_t>(KR, 1), kKC);
  int64_t chunk = std::max<int64_t>(kMaxPix, (128 * 1024 / 4) / kc_len / kMaxPix * kMaxPix);
  const int64_t nkc = std::max<int64_t>(1, (KR + kKC - 1) / kKC);

  alignas(64) float acc[kMaxNB * kAccStride];
  float* outp[kMaxPix];
  const float* xs[kMaxPix];
  for (int64_t c0 = m0; c0 < m1; c0 += chunk) {
    const int64_t c1 = std::min(m1, c0 + chunk);
    for (int64_t kc = 0; kc < nkc; ++kc) {
      const int64_t ka = k0 + kc * kKC, L = std::min(k1, ka + kKC) - ka;
      const bool first = kc == 0, last = kc == nkc - 1;
      for (int64_t n = n0; n < n1;) {
        const int64_t nb = n / kBlock, nstart = nb * kBlock;
        const int lo = int(n - nstart);
        const int hi = int(std::min<int64_t>(kBlock, n1 - nstart));
        int NB = 1, hib[kMaxNB];
        hib[0] = hi;
        while (NB < kMaxNB && hib[NB - 1] == kBlock && nstart + NB * kBlock < n1) {
          hib[NB] = int(std::min<int64_t>(kBlock, n1 - nstart - NB * kBlock));
          ++NB;
        }
        n = nstart + (NB - 1) * kBlock + hib[NB - 1];
        const float* w = bp + (nb * K + ka) * kBlock;
        const float* bptr = (first && bias) ? bias + nstart : nullptr;
        const UKernel uk = get_ukernel(kMaxPix, NB);
        const int64_t ntile = (c1 - c0 + kMaxPix - 1) / kMaxPix;  // balanced tiles
        const int64_t tbase = (c1 - c0) / ntile, trem = (c1 - c0) % ntile;
        int64_t t0 = c0;
        for (int64_t ti = 0; ti < ntile; t0 += tbase + (ti < trem), ++ti) {
          const int P = int(tbase + (ti < trem));
          for (int p = 0; p < P; ++p) {
            xs[p] = a + (t0 + p) * K + ka;
            outp[p] = out + (t0 + p) * N + nstart;
          }
          (P == kMaxPix ? uk : get_ukernel(P, NB))(&w, K * kBlock, xs, 1, int(L), acc);
          for (int b = 0; b < NB; ++b)
            epilogue(acc + b * kAccStride, P, outp, nullptr, bptr ? bptr + b * kBlock : nullptr,
                     b * kBlock, b ? 0 : lo, hib[b], !first, last && relu);
        }
      }
    }
    if (epi) {  // the fused pointwise epilogue over this chunk's rows, still in cache
      EpilogueRuns runs(epi, epi_scratch);
      for (int64_t m = c0; m < c1; ++m) runs.add(m * N + n0, m * N + n1);
    }
  }
}

void check_packed(const char* fn, const FArr& bp, int64_t K, int64_t N) {
  const int64_t wsize = (N + kBlock - 1) / kBlock * K * kBlock;
  if (bp.ndim() != 1 || bp.shape(0) != wsize)
    fail(std::string(fn) + ": packed weight bp has shape " + shape_str(bp) + ", expected (" +
         std::to_string(wsize) + ",) for K=" + std::to_string(K) + " N=" + std::to_string(N) +
         " (use pack_matmul_weight)");
}

void matmul(const FArr& a, const FArr& bp, int64_t N, std::optional<FArr> bias, py::array out,
            const IArr& vertices, bool relu, const PointwiseProgram* epilogue) {
  const char* fn = "matmul";
  check_ndim(a, 2, fn, "a", "[M, K]");
  float* o = out_ptr(out, fn);
  check_ndim(out, 2, fn, "out", "[M, N]");
  const int64_t M = a.shape(0), K = a.shape(1);
  if (N < 0) fail(std::string(fn) + ": N must be >= 0, got " + std::to_string(N));
  if (out.shape(0) != M || out.shape(1) != N)
    fail(std::string(fn) + ": out has shape " + shape_str(out) + ", expected (" +
         std::to_string(M) + ", " + std::to_string(N) + ") for a " + shape_str(a));
  check_packed(fn, bp, K, N);
  if (bias && (bias->ndim() != 1 || bias->shape(0) != N))
    fail(std::string(fn) + ": bias has shape " + shape_str(*bias) + ", expected (" +
         std::to_string(N) + ",)");
  const py::ssize_t V = check_vertices(vertices, 4, fn);
  check_range_cols(vertices, 0, M, fn, "row (m0, m1)");
  check_range_cols(vertices, 2, N, fn, "column (n0, n1)");
  check_epilogue(fn, epilogue, out);
  const float* ap = a.data();
  const float* bpp = bp.data();
  const float* biasp = bias ? bias->data() : nullptr;
  const int32_t* vt = vertices.data();
  const int64_t per = epilogue ? epilogue->scratch_floats() : 0;
  std::vector<float> epi_scratch(size_t(per) * size_t(max_threads()));
  for_each_vertex(vt, V, 4, [&](const int32_t* row, int t) {
    matmul_vertex(ap, bpp, biasp, o, K, N, row, 0, K, relu, epilogue,
                  epi_scratch.data() + per * t);
  });
}

// Vertex rows (m0, m1, n0, n1, k0, k1, slab): partials[slab, m0:m1, n0:n1] =
// a[m0:m1, k0:k1] @ B[k0:k1, n0:n1].  Vertices writing the same slab must own disjoint boxes.
void matmul_partial(const FArr& a, const FArr& bp, int64_t N, py::array partials,
                    const IArr& vertices) {
  const char* fn = "matmul_partial";
  constexpr int kCols = 7;
  check_ndim(a, 2, fn, "a", "[M, K]");
  float* o = out_ptr(partials, fn);
  check_ndim(partials, 3, fn, "partials", "[P, M, N]");
  const int64_t M = a.shape(0), K = a.shape(1);
  if (N < 0) fail(std::string(fn) + ": N must be >= 0, got " + std::to_string(N));
  if (partials.shape(1) != M || partials.shape(2) != N)
    fail(std::string(fn) + ": partials has shape " + shape_str(partials) + ", expected (P, " +
         std::to_string(M) + ", " + std::to_string(N) + ") for a " + shape_str(a));
  check_packed(fn, bp, K, N);
  const int64_t P = partials.shape(0);
  const py::ssize_t V = check_vertices(vertices, kCols, fn);
  check_range_cols(vertices, 0, M, fn, "row (m0, m1)");
  check_range_cols(vertices, 2, N, fn, "column (n0, n1)");
  check_range_cols(vertices, 4, K, fn, "reduction (k0, k1)");
  check_index_col(vertices, 6, P, fn, "slab", "partials " + shape_str(partials));
  const float* ap = a.data();
  const float* bpp = bp.data();
  const int32_t* vt = vertices.data();
  const int64_t slab = M * N;
  for_each_vertex(vt, V, kCols, [&](const int32_t* row, int) {
    matmul_vertex(ap, bpp, nullptr, o + row[6] * slab, K, N, row, row[4], row[5], false);
  });
}

}  // namespace

void register_matmul(py::module& m) {
  m.def("pack_matmul_weight", &pack_matmul_weight, py::arg("b"), py::arg("transposed") = false,
        py::arg("into") = py::none(),
        "Pack the right operand of a matmul: b[K, N] (transposed=False) or a Linear weight "
        "b[N, K] (transposed=True, y = a @ b.T) into [ceil(N/16)][K][16] (1-D, zero padded).");
  m.def("matmul", &matmul, py::arg("a"), py::arg("bp"), py::arg("N"), py::arg("bias"),
        py::arg("out"), py::arg("vertices"), py::arg("relu") = false,
        py::arg("epilogue") = nullptr,
        "out[m0:m1, n0:n1] = act(a @ B + bias) for every vertex row (m0, m1, n0, n1); epilogue: "
        "a PointwiseProgram over out, run on each chunk of rows once it is written.");
  m.def("matmul_partial", &matmul_partial, py::arg("a"), py::arg("bp"), py::arg("N"),
        py::arg("partials"), py::arg("vertices"),
        "Partial products of a matmul split over its reduction dim: for every vertex row "
        "(m0, m1, n0, n1, k0, k1, slab), partials[slab, m0:m1, n0:n1] = a[m0:m1, k0:k1] @ "
        "B[k0:k1, n0:n1] (a plain store, no bias or ReLU).  partials is float32 [P, M, N]; "
        "reduce the slabs with reduce_partials (viewed as [P, M, 1, 1, N]).");
}

}  // namespace ipugraph
