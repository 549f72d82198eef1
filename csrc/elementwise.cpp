// Elementwise codelets over flat, contiguous float32 arrays.  Vertices are (start, end) element
// ranges (softmax: row ranges).  `out` may be one of the inputs (in place): every element is read
// before it is written at the same index, so aliasing is safe; no __restrict here for that reason.
//
// reduce_partials is the second compute set of a conv / matmul split over its reduction: it sums
// the slabs of a partials buffer and applies the fused epilogue, over NHWC boxes.
#include "common.h"

#include <cmath>
#include <optional>
#include <pybind11/stl.h>

namespace ipugraph {

namespace {

// ReLU as `v < 0 ? 0 : v` so NaN propagates (torch.relu(nan) is nan).
inline float relu1(float v) { return v < 0.f ? 0.f : v; }

void add(const FArr& a, const FArr& b, py::array out, const IArr& vertices, bool relu) {
  const char* fn = "add";
  float* o = out_ptr(out, fn);
  check_same_size(fn, a, "a", out, "out");
  check_same_size(fn, b, "b", out, "out");
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const float* ap = a.data();
  const float* bp = b.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) {
    const int64_t i0 = vt[2 * v], i1 = vt[2 * v + 1];
    if (relu) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) o[i] = relu1(ap[i] + bp[i]);
    } else {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) o[i] = ap[i] + bp[i];
    }
  }
}

void relu(const FArr& x, py::array out, const IArr& vertices) {
  const char* fn = "relu";
  float* o = out_ptr(out, fn);
  check_same_size(fn, x, "x", out, "out");
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const float* xp = x.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) {
    const int64_t i0 = vt[2 * v], i1 = vt[2 * v + 1];
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) o[i] = relu1(xp[i]);
  }
}

// out[i] = x[i] * scale[i % C] + shift[i % C]: batch norm in inference form over NHWC.
// Walks whole channel rows so scale/shift are read contiguously (no modulo per element).
void channel_affine(const FArr& x, const FArr& scale, const FArr& shift, py::array out, int64_t C,
                    const IArr& vertices, bool relu) {
  const char* fn = "channel_affine";
  float* o = out_ptr(out, fn);
  check_same_size(fn, x, "x", out, "out");
  if (C < 1 || scale.size() != C || shift.size() != C || x.size() % C != 0)
    fail(std::string(fn) + ": need scale " + shape_str(scale) + " and shift " + shape_str(shift) +
         " of size C=" + std::to_string(C) + " dividing the size of x " + shape_str(x));
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const float* xp = x.data();
  const float* sc = scale.data();
  const float* sh = shift.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) {
    int64_t i = vt[2 * v];
    const int64_t i1 = vt[2 * v + 1];
    while (i < i1) {
      const int64_t c0 = i % C;
      const int64_t n = std::min(C - c0, i1 - i);
      const float* xr = xp + i - c0;
      float* orow = o + i - c0;
      if (relu) {
#pragma omp simd
        for (int64_t c = c0; c < c0 + n; ++c) orow[c] = relu1(xr[c] * sc[c] + sh[c]);
      } else {
#pragma omp simd
        for (int64_t c = c0; c < c0 + n; ++c) orow[c] = xr[c] * sc[c] + sh[c];
      }
      i += n;
    }
  }
}

// Numerically stable softmax over the last axis; the normaliser is summed in double.
void softmax_rows(const FArr& x, py::array out, const IArr& vertices) {
  const char* fn = "softmax_rows";
  float* o = out_ptr(out, fn);
  check_ndim(x, 2, fn, "x", "[M, N]");
  check_ndim(out, 2, fn, "out", "[M, N]");
  if (out.shape(0) != x.shape(0) || out.shape(1) != x.shape(1))
    fail(std::string(fn) + ": out " + shape_str(out) + " must have the shape of x " + shape_str(x));
  const int64_t M = x.shape(0), N = x.shape(1);
  const py::ssize_t V = check_vertices(vertices, 2, fn);
  check_range_cols(vertices, 0, M, fn, "row (row0, row1)");
  const float* xp = x.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v)
    for (int64_t m = vt[2 * v]; m < vt[2 * v + 1]; ++m) {
      const float* xr = xp + m * N;
      float* orow = o + m * N;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < N; ++j) mx = std::max(mx, xr[j]);
      if (std::isinf(mx) && mx < 0) mx = 0.f;  // all -inf row: exp gives 0/0 like torch (nan)
      double sum = 0.0;
      for (int64_t j = 0; j < N; ++j) {
        const float e = std::exp(xr[j] - mx);
        orow[j] = e;
        sum += e;
      }
      const float inv = float(1.0 / sum);
      for (int64_t j = 0; j < N; ++j) orow[j] *= inv;
    }
}

// One contiguous run of `len` channels: o = act(sum_p part[p * slab] + bias + res).  The slabs
// are summed in a stack chunk (L1) so every loop is a clean unit-stride loop the compiler
// vectorises; res may be o itself (read before written at the same index).
template <bool kBias, bool kRes, bool kRelu>
void reduce_run(const float* part, int64_t slab, int64_t P, const float* bias, const float* res,
                float* o, int64_t len) {
  constexpr int64_t kChunk = 512;
  alignas(64) float acc[kChunk];
  for (int64_t j0 = 0; j0 < len; j0 += kChunk) {
    const int64_t n = std::min(kChunk, len - j0);
    if (P == 0) {
      std::memset(acc, 0, n * sizeof(float));
    } else {
      const float* p0 = part + j0;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) acc[j] = p0[j];
    }
    int64_t p = 1;
    for (; p + 1 < P; p += 2) {  // two slabs per pass: half the accumulator traffic
      const float* q0 = part + p * slab + j0;
      const float* q1 = q0 + slab;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) acc[j] += q0[j] + q1[j];
    }
    if (p < P) {
      const float* q0 = part + p * slab + j0;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) acc[j] += q0[j];
    }
    float* oj = o + j0;
    const float* bj = kBias ? bias + j0 : nullptr;
    const float* rj = kRes ? res + j0 : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      float v = acc[j];
      if constexpr (kBias) v += bj[j];
      if constexpr (kRes) v += rj[j];
      if constexpr (kRelu) v = relu1(v);
      oj[j] = v;
    }
  }
}

using ReduceRun = void (*)(const float*, int64_t, int64_t, const float*, const float*, float*,
                           int64_t);

ReduceRun reduce_run_for(bool b, bool r, bool relu) {
  static const ReduceRun t[8] = {
      reduce_run<false, false, false>, reduce_run<false, false, true>,
      reduce_run<false, true, false>,  reduce_run<false, true, true>,
      reduce_run<true, false, false>,  reduce_run<true, false, true>,
      reduce_run<true, true, false>,   reduce_run<true, true, true>};
  return t[(b ? 4 : 0) + (r ? 2 : 0) + (relu ? 1 : 0)];
}

// out[n, oh, ow, k] = act(sum_p partials[p, n, oh, ow, k] + bias[k] + residual[n, oh, ow, k])
// over every vertex box (n0, n1, k0, k1, oh0, oh1, ow0, ow1).
void reduce_partials(const FArr& partials, std::optional<FArr> bias,
                     std::optional<FArr> residual, py::array out, const IArr& vertices,
                     bool relu) {
  const char* fn = "reduce_partials";
  float* o = out_ptr(out, fn);
  check_ndim(out, 4, fn, "out", "[N, OH, OW, K]");
  check_ndim(partials, 5, fn, "partials", "[P, N, OH, OW, K]");
  for (int d = 0; d < 4; ++d)
    if (partials.shape(d + 1) != out.shape(d))
      fail(std::string(fn) + ": partials has shape " + shape_str(partials) +
           ", expected (P, *out.shape) for out " + shape_str(out));
  const int64_t P = partials.shape(0), N = out.shape(0), OH = out.shape(1), OW = out.shape(2),
                K = out.shape(3);
  if (bias && (bias->ndim() != 1 || bias->shape(0) != K))
    fail(std::string(fn) + ": bias has shape " + shape_str(*bias) + ", expected (" +
         std::to_string(K) + ",) for out " + shape_str(out));
  if (residual) {
    bool ok = residual->ndim() == 4;
    for (int d = 0; ok && d < 4; ++d) ok = residual->shape(d) == out.shape(d);
    if (!ok)
      fail(std::string(fn) + ": residual has shape " + shape_str(*residual) + ", expected out's " +
           shape_str(out));
  }
  const int64_t slab = N * OH * OW * K;
  {
    // The slabs are read while out is written: they must not overlap (residual may be out).
    const char* pb = reinterpret_cast<const char*>(partials.data());
    const char* ob = reinterpret_cast<const char*>(o);
    const size_t pn = size_t(P * slab) * sizeof(float), on = size_t(slab) * sizeof(float);
    if (pn && on && pb < ob + on && ob < pb + pn)
      fail(std::string(fn) + ": out " + shape_str(out) + " overlaps partials " +
           shape_str(partials));
  }
  const py::ssize_t V = check_vertices(vertices, 8, fn);
  check_range_cols(vertices, 0, N, fn, "batch (n0, n1)");
  check_range_cols(vertices, 2, K, fn, "channel (k0, k1)");
  check_range_cols(vertices, 4, OH, fn, "row (oh0, oh1)");
  check_range_cols(vertices, 6, OW, fn, "column (ow0, ow1)");
  const float* pp = partials.data();
  const float* bp = bias ? bias->data() : nullptr;
  const float* rp = residual ? residual->data() : nullptr;
  const ReduceRun run = reduce_run_for(bp != nullptr, rp != nullptr, relu);
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) {
    const int32_t* row = vt + 8 * v;
    const int64_t k0 = row[2], len = row[3] - row[2];
    if (len <= 0) continue;
    for (int64_t n = row[0]; n < row[1]; ++n)
      for (int64_t oh = row[4]; oh < row[5]; ++oh)
        for (int64_t ow = row[6]; ow < row[7]; ++ow) {
          const int64_t i = ((n * OH + oh) * OW + ow) * K + k0;
          run(pp + i, slab, P, bp ? bp + k0 : nullptr, rp ? rp + i : nullptr, o + i, len);
        }
  }
}

}  // namespace

void register_elementwise(py::module& m) {
  m.def("add", &add, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("vertices"),
        py::arg("relu") = false, "out = act(a + b) over flat element ranges (start, end).");
  m.def("relu", &relu, py::arg("x"), py::arg("out"), py::arg("vertices"),
        "out = max(x, 0) over flat element ranges (start, end).");
  m.def("channel_affine", &channel_affine, py::arg("x"), py::arg("scale"), py::arg("shift"),
        py::arg("out"), py::arg("C"), py::arg("vertices"), py::arg("relu") = false,
        "out[i] = act(x[i] * scale[i % C] + shift[i % C]) over flat element ranges.");
  m.def("softmax_rows", &softmax_rows, py::arg("x"), py::arg("out"), py::arg("vertices"),
        "Softmax over the last axis of x[M, N] for row ranges (row0, row1).");
  m.def("reduce_partials", &reduce_partials, py::arg("partials"), py::arg("bias"),
        py::arg("residual"), py::arg("out"), py::arg("vertices"), py::arg("relu") = false,
        "out[n,oh,ow,k] = act(sum_p partials[p,n,oh,ow,k] + bias[k] + residual[n,oh,ow,k]) for "
        "every vertex row (n0,n1,k0,k1,oh0,oh1,ow0,ow1): the reduction after conv2d_nhwc_partial "
        "(for matmul_partial view partials as [P, M, 1, 1, N] and out as [M, 1, 1, N]).  bias "
        "and residual may be None; residual may be out itself; partials must not overlap out.");
}

}  // namespace ipugraph
