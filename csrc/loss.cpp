// The loss codelets: softmax over rows, its gradient, and the softmax cross-entropy loss with
// its gradient.  Rows are row ranges (row0, row1) of the output; cross_entropy has the single
// "all" vertex (0, 1).  Scalars read at run time (dloss) are shape () float32 arrays.  A label
// outside [0, K) is a ValueError naming the row, the label and K, never an out-of-bounds read.
// The normalisers are summed in double.
#include "common.h"
#include "pointwise_math.h"

#include <cmath>

namespace ipugraph {

namespace {

using LArr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

void same_shape(const char* fn, const py::array& a, const char* an, const py::array& b,
                const char* bn) {
  bool ok = a.ndim() == b.ndim();
  for (py::ssize_t d = 0; ok && d < a.ndim(); ++d) ok = a.shape(d) == b.shape(d);
  if (!ok)
    fail(std::string(fn) + ": " + an + " " + shape_str(a) + " must have the shape of " + bn +
         " " + shape_str(b));
}

// The value of a one-element float array (a shape () scalar fed or updated at run time).
float scalar(const FArr& a, const char* fn, const char* name) {
  if (a.size() != 1)
    fail(std::string(fn) + ": " + name + " must be a scalar (one element, shape ()), got shape " +
         shape_str(a));
  return a.data()[0];
}

// Flat (start, end) vertices over n elements.
// Labels: any integer array (int64 expected) of shape (N,), every value in [0, K).
LArr checked_labels(const py::array& labels, int64_t N, int64_t K, const char* fn) {
  const char kind = labels.dtype().kind();
  if (kind != 'i' && kind != 'u')
    fail(std::string(fn) + ": labels must be an integer (int64) array, got dtype " +
         std::string(py::str(labels.dtype())));
  if (labels.ndim() != 1 || labels.shape(0) != N)
    fail(std::string(fn) + ": labels must have shape (" + std::to_string(N) +
         ",) (one per row of logits), got shape " + shape_str(labels));
  LArr lab = LArr::ensure(labels);
  if (!lab) throw py::error_already_set();
  const int64_t* lp = lab.data();
  for (int64_t n = 0; n < N; ++n)
    if (lp[n] < 0 || lp[n] >= K) {
      std::ostringstream s;
      s << fn << ": label " << lp[n] << " of row " << n << " is outside [0, " << K
        << ") (logits have K = " << K << " classes)";
      fail(s.str());
    }
  return lab;
}


// Row statistics for the stable log-sum-exp: the max (0 for an all -inf row, as softmax_rows)
// and sum_j exp(x_j - max) in double.
struct RowStats {
  float max;
  double sum;
};

inline RowStats row_max_sum(const float* x, int64_t K) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < K; ++j) mx = x[j] > mx ? x[j] : mx;
  if (std::isinf(mx) && mx < 0) mx = 0.f;  // (a NaN logit makes the sum, so the row, NaN)
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < K; ++j) sum += double(exp_neg(x[j] - mx));
  return {mx, sum};
}

// o[j] = exp(x[j] - mx) * s.
void exp_scaled(const float* x, int64_t K, float mx, float s, float* o) {
#pragma omp simd
  for (int64_t j = 0; j < K; ++j) o[j] = exp_neg(x[j] - mx) * s;
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
  for_each_range(vertices.data(), V, [&](int64_t m0, int64_t m1, int) {
    for (int64_t m = m0; m < m1; ++m) {
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
  });
}

// out[m] = y[m] * (dy[m] - sum_j dy[m, j] * y[m, j]) for rows m of [M, N]; the dot in double.
void softmax_backward_rows(const FArr& y, const FArr& dy, py::array out, const IArr& vertices) {
  const char* fn = "softmax_backward_rows";
  float* o = out_ptr(out, fn);
  check_ndim(y, 2, fn, "y", "[M, N]");
  same_shape(fn, dy, "dy", y, "y");
  same_shape(fn, out, "out", y, "y");
  const int64_t M = y.shape(0), N = y.shape(1);
  const py::ssize_t V = check_vertices(vertices, 2, fn);
  check_range_cols(vertices, 0, M, fn, "row (row0, row1)");
  const float* yp = y.data();
  const float* gp = dy.data();
  for_each_range(vertices.data(), V, [&](int64_t m0, int64_t m1, int) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* yr = yp + m * N;
      const float* gr = gp + m * N;
      float* orow = o + m * N;
      double dot = 0.0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < N; ++j) dot += double(gr[j]) * double(yr[j]);
      const float d = float(dot);
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) orow[j] = yr[j] * (gr[j] - d);
    }
  });
}

// out[()] = mean_n (logsumexp(logits[n]) - logits[n, labels[n]]), stable: per row
// log(sum_j exp(x_j - max)) + (max - x_label), in double.  One vertex (0, 1) computes it all,
// its rows spread over the threads; a table with no vertex leaves out untouched.  N = 0 gives
// NaN (the mean of nothing, as torch).
void cross_entropy(const FArr& logits, const py::array& labels, py::array out,
                   const IArr& vertices) {
  const char* fn = "cross_entropy";
  float* o = out_ptr(out, fn);
  check_ndim(logits, 2, fn, "logits", "[N, K]");
  if (out.size() != 1)
    fail(std::string(fn) + ": out must be a scalar (shape ()), got shape " + shape_str(out));
  const int64_t N = logits.shape(0), K = logits.shape(1);
  if (K < 1 && N > 0) fail(std::string(fn) + ": logits " + shape_str(logits) + " has no classes");
  const LArr lab = checked_labels(labels, N, K, fn);
  const py::ssize_t V = check_vertices(vertices, 2, fn);
  check_range_cols(vertices, 0, 1, fn, "\"all\" (0, 1)");
  bool any = false;
  const int32_t* vt = vertices.data();
  for (py::ssize_t v = 0; v < V; ++v) any = any || vt[2 * v + 1] > vt[2 * v];
  if (!any) return;
  const float* xp = logits.data();
  const int64_t* lp = lab.data();
  double total = 0.0;
  {
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = xp + n * K;
      const RowStats st = row_max_sum(xr, K);
      const float mx = st.max;
      const double sum = st.sum;
      total += std::log(sum) + (double(mx) - double(xr[lp[n]]));
    }
  }
  *o = N > 0 ? float(total / double(N)) : std::numeric_limits<float>::quiet_NaN();
}

// out[n, k] = (softmax(logits[n])[k] - (k == labels[n])) * dloss / N over rows (n0, n1).
void cross_entropy_backward(const FArr& logits, const py::array& labels, const FArr& dloss,
                            py::array out, const IArr& vertices) {
  const char* fn = "cross_entropy_backward";
  float* o = out_ptr(out, fn);
  check_ndim(logits, 2, fn, "logits", "[N, K]");
  same_shape(fn, out, "out", logits, "logits");
  const int64_t N = logits.shape(0), K = logits.shape(1);
  const LArr lab = checked_labels(labels, N, K, fn);
  const float g = scalar(dloss, fn, "dloss");
  const py::ssize_t V = check_vertices(vertices, 2, fn);
  check_range_cols(vertices, 0, N, fn, "row (row0, row1)");
  {
    const char* ab = reinterpret_cast<const char*>(logits.data());
    const char* ob = reinterpret_cast<const char*>(o);
    const size_t n = size_t(N * K) * sizeof(float);
    if (n && ab < ob + n && ob < ab + n)
      fail(std::string(fn) + ": out must not overlap logits");
  }
  const float* xp = logits.data();
  const int64_t* lp = lab.data();
  const double scale = N > 0 ? double(g) / double(N) : 0.0;
  for_each_range(vertices.data(), V, [&](int64_t n0, int64_t n1, int) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* xr = xp + n * K;
      float* orow = o + n * K;
      const RowStats st = row_max_sum(xr, K);
      const float s = float(scale / st.sum);  // softmax * dloss / N = exp(x - max) * s
      exp_scaled(xr, K, st.max, s, orow);
      orow[lp[n]] -= float(scale);
    }
  });
}

}  // namespace

void register_loss(py::module& m) {
  m.def("softmax_rows", &softmax_rows, py::arg("x"), py::arg("out"), py::arg("vertices"),
        "Softmax over the last axis of x[M, N] for row ranges (row0, row1).");
  m.def("softmax_backward_rows", &softmax_backward_rows, py::arg("y"), py::arg("dy"),
        py::arg("out"), py::arg("vertices"),
        "out = y * (dy - sum(dy * y, last axis)) for rows (row0, row1) of [M, N] arrays.");
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("labels"), py::arg("out"),
        py::arg("vertices"),
        "out[()] = mean over rows of (logsumexp(logits[n]) - logits[n, labels[n]]), stable; "
        "labels int64 [N] in [0, K) (else ValueError); vertices [V, 2] of the one dim 'all' "
        "(0, 1).");
  m.def("cross_entropy_backward", &cross_entropy_backward, py::arg("logits"), py::arg("labels"),
        py::arg("dloss"), py::arg("out"), py::arg("vertices"),
        "out[n, k] = (softmax(logits[n])[k] - (k == labels[n])) * dloss / N over row ranges; "
        "dloss a shape () array read at call time.");
}

}  // namespace ipugraph
