// Elementwise codelets over flat, contiguous float32 arrays.  Vertices are (start, end) element
// ranges (softmax: row ranges).  `out` may be one of the inputs (in place): every element is read
// before it is written at the same index, so aliasing is safe; no __restrict here for that reason.
#include "common.h"

#include <cmath>

namespace ipugraph {

namespace {

// ReLU as `v < 0 ? 0 : v` so NaN propagates (torch.relu(nan) is nan).
inline float relu1(float v) { return v < 0.f ? 0.f : v; }

void check_same_size(const char* fn, const py::array& a, const char* an, const py::array& b,
                     const char* bn) {
  if (a.size() != b.size())
    fail(std::string(fn) + ": " + an + " " + shape_str(a) + " and " + bn + " " + shape_str(b) +
         " must have the same number of elements");
}

void add(const FArr& a, const FArr& b, py::array out, const IArr& vertices, bool relu) {
  const char* fn = "add";
  float* o = out_ptr(out, fn);
  check_same_size(fn, a, "a", out, "out");
  check_same_size(fn, b, "b", out, "out");
  const py::ssize_t V = check_vertices(vertices, 2, fn);
  check_range_cols(vertices, 0, out.size(), fn, "element (start, end)");
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
  const py::ssize_t V = check_vertices(vertices, 2, fn);
  check_range_cols(vertices, 0, out.size(), fn, "element (start, end)");
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
  const py::ssize_t V = check_vertices(vertices, 2, fn);
  check_range_cols(vertices, 0, out.size(), fn, "element (start, end)");
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
}

}  // namespace ipugraph
