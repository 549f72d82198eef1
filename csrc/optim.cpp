// Training codelets: the ReLU / softmax gradients, a 2-D transpose, the cross-entropy loss and
// its gradient, and the SGD / Adam updates.
//
// Vertices are flat (start, end) element ranges of the output (relu_backward and the optimizer
// updates), row ranges (softmax_backward_rows, cross_entropy_backward, transpose2d: rows of the
// OUTPUT), or the single "all" vertex (0, 1) of cross_entropy.  Scalar operands that change from
// run to run (lr, step, dloss) are shape () float32 arrays read at call time, never baked in.
// Every argument is checked before the GIL is released; a label outside [0, K) is a ValueError
// naming the row, the label and K, never an out-of-bounds read.
//
// The flat elementwise codelets may run in place (out aliasing an input): every element is read
// before it is written at the same index.  The row codelets and transpose2d must not alias.
#include "common.h"

#include <cmath>
#include <optional>
#include <pybind11/stl.h>

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

// exp(x) for x <= 0 (arguments of the stable softmax / log-sum-exp), Cephes' expf polynomial
// (~1 ulp): branch-free so `omp simd` loops vectorise (libm's expf does not without
// -ffast-math).  Arguments below -87.3 give a value of ~1e-38 or less, never a denormal trap;
// NaN propagates.
inline float exp_neg(float x) {
  x = x < -87.33654f ? -87.33654f : x;  // NaN compares false and passes through
  x = x > 88.37626f ? 88.37626f : x;
  // fx = round(x / ln 2) by the 1.5 * 2^23 trick (std::floor does not vectorise here);
  // |x / ln 2| <= 128, far inside the trick's range.
  constexpr float kRound = 12582912.f;
  const float fx = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  // 2^fx through the exponent bits; fx is in [-126, 128] after the clamp (NaN: garbage bits
  // times a NaN y is still NaN).
  const int32_t e = static_cast<int32_t>(fx) + 127;
  const uint32_t bits = static_cast<uint32_t>(e < 1 ? 1 : (e > 254 ? 254 : e)) << 23;
  return y * __builtin_bit_cast(float, bits);
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

// ---------------------------------------------------------------------------------------------

// out = dy where y > 0 else 0 (y the ReLU's output; a NaN y gives 0 as torch's threshold_backward).
void relu_backward(const FArr& y, const FArr& dy, py::array out, const IArr& vertices) {
  const char* fn = "relu_backward";
  float* o = out_ptr(out, fn);
  check_same_size(fn, y, "y", out, "out");
  check_same_size(fn, dy, "dy", out, "out");
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const float* yp = y.data();
  const float* gp = dy.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) {
    const int64_t i0 = vt[2 * v], i1 = vt[2 * v + 1];
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) o[i] = yp[i] > 0.f ? gp[i] : 0.f;
  }
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
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v)
    for (int64_t m = vt[2 * v]; m < vt[2 * v + 1]; ++m) {
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
}

// out[i, j] = a[j, i] for a [M, N], out [N, M], over rows (i0, i1) of out, in 32 x 32 blocks
// (a block's 32 rows of a and of out stay in L1 while it is transposed).
void transpose2d(const FArr& a, py::array out, const IArr& vertices) {
  const char* fn = "transpose2d";
  float* o = out_ptr(out, fn);
  check_ndim(a, 2, fn, "a", "[M, N]");
  check_ndim(out, 2, fn, "out", "[N, M]");
  const int64_t M = a.shape(0), N = a.shape(1);
  if (out.shape(0) != N || out.shape(1) != M)
    fail(std::string(fn) + ": out " + shape_str(out) + " must be the transpose of a " +
         shape_str(a));
  const float* ap = a.data();
  {
    const char* ab = reinterpret_cast<const char*>(ap);
    const char* ob = reinterpret_cast<const char*>(o);
    const size_t n = size_t(M * N) * sizeof(float);
    if (n && ab < ob + n && ob < ab + n)
      fail(std::string(fn) + ": out must not overlap a");
  }
  const py::ssize_t V = check_vertices(vertices, 2, fn);
  check_range_cols(vertices, 0, N, fn, "output row (i0, i1)");
  const int32_t* vt = vertices.data();
  constexpr int64_t B = 32;
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v) {
    const int64_t i0 = vt[2 * v], i1 = vt[2 * v + 1];
    for (int64_t ib = i0; ib < i1; ib += B) {
      const int64_t ie = std::min(ib + B, i1);
      for (int64_t jb = 0; jb < M; jb += B) {
        const int64_t je = std::min(jb + B, M);
        for (int64_t i = ib; i < ie; ++i) {
          float* orow = o + i * M;
          const float* acol = ap + i;
#pragma omp simd
          for (int64_t j = jb; j < je; ++j) orow[j] = acol[j * N];
        }
      }
    }
  }
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
  const int32_t* vt = vertices.data();
  const double scale = N > 0 ? double(g) / double(N) : 0.0;
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t v = 0; v < V; ++v)
    for (int64_t n = vt[2 * v]; n < vt[2 * v + 1]; ++n) {
      const float* xr = xp + n * K;
      float* orow = o + n * K;
      const RowStats st = row_max_sum(xr, K);
      const float mx = st.max;
      const double sum = st.sum;
      const float s = float(scale / sum);  // softmax * dloss / N = exp(x - max) * s
      exp_scaled(xr, K, mx, s, orow);
      orow[lp[n]] -= float(scale);
    }
}

// d = g + weight_decay * w (+ momentum * v): torch SGD's momentum buffer (dampening 0) or, with
// no v, its step direction.
void sgd_direction(const FArr& g, const FArr& w, std::optional<FArr> v, py::array out,
                   double momentum, double weight_decay, const IArr& vertices) {
  const char* fn = "sgd_direction";
  float* o = out_ptr(out, fn);
  check_same_size(fn, g, "g", out, "out");
  check_same_size(fn, w, "w", out, "out");
  if (v) check_same_size(fn, *v, "v", out, "out");
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const float* gp = g.data();
  const float* wp = w.data();
  const float* vp = v ? v->data() : nullptr;
  const float mu = float(momentum), wd = float(weight_decay);
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t k = 0; k < V; ++k) {
    const int64_t i0 = vt[2 * k], i1 = vt[2 * k + 1];
    if (vp) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) o[i] = (gp[i] + wd * wp[i]) + mu * vp[i];
    } else {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) o[i] = gp[i] + wd * wp[i];
    }
  }
}

// out = w - lr * d, lr a shape () array read now.
void sgd_apply(const FArr& w, const FArr& d, const FArr& lr, py::array out, const IArr& vertices) {
  const char* fn = "sgd_apply";
  float* o = out_ptr(out, fn);
  check_same_size(fn, w, "w", out, "out");
  check_same_size(fn, d, "d", out, "out");
  const float a = scalar(lr, fn, "lr");
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const float* wp = w.data();
  const float* dp = d.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t k = 0; k < V; ++k) {
    const int64_t i0 = vt[2 * k], i1 = vt[2 * k + 1];
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) o[i] = wp[i] - a * dp[i];
  }
}

// out = beta * m + (1 - beta) * (g * g if square else g).
void adam_moment(const FArr& m, const FArr& g, py::array out, double beta, bool square,
                 const IArr& vertices) {
  const char* fn = "adam_moment";
  float* o = out_ptr(out, fn);
  check_same_size(fn, m, "m", out, "out");
  check_same_size(fn, g, "g", out, "out");
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const float* mp = m.data();
  const float* gp = g.data();
  const float b = float(beta), c = float(1.0 - beta);
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t k = 0; k < V; ++k) {
    const int64_t i0 = vt[2 * k], i1 = vt[2 * k + 1];
    if (square) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) o[i] = b * mp[i] + c * (gp[i] * gp[i]);
    } else {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) o[i] = b * mp[i] + c * gp[i];
    }
  }
}

// out = w - lr * (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps), as torch Adam:
// w - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), the corrections in double from the run's
// lr and step (shape () arrays).  step 0 makes bc1 = 0 (inf / NaN, as the reference).
void adam_apply(const FArr& w, const FArr& m, const FArr& v, const FArr& lr, const FArr& step,
                py::array out, double beta1, double beta2, double eps, const IArr& vertices) {
  const char* fn = "adam_apply";
  float* o = out_ptr(out, fn);
  check_same_size(fn, w, "w", out, "out");
  check_same_size(fn, m, "m", out, "out");
  check_same_size(fn, v, "v", out, "out");
  const double a = scalar(lr, fn, "lr"), t = scalar(step, fn, "step");
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const double bc1 = 1.0 - std::pow(beta1, t), bc2 = 1.0 - std::pow(beta2, t);
  const float step_size = float(a / bc1), inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  const float ep = float(eps);
  const float* wp = w.data();
  const float* mp = m.data();
  const float* vp = v.data();
  const int32_t* vt = vertices.data();
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
  for (py::ssize_t k = 0; k < V; ++k) {
    const int64_t i0 = vt[2 * k], i1 = vt[2 * k + 1];
    int64_t i = i0;
    // Explicit vectors: libm's errno branch for sqrt (-fmath-errno is on) keeps GCC from
    // vectorising the plain loop.  Same arithmetic as the scalar tail.  (maskz_sqrt: avoids a
    // GCC 12 false -Wmaybe-uninitialized.)
#if defined(IPUGRAPH_AVX512)
    const __m512 ss = _mm512_set1_ps(step_size), ib = _mm512_set1_ps(inv_sqrt_bc2),
                 ee = _mm512_set1_ps(ep);
    for (; i + 16 <= i1; i += 16) {
      const __m512 sq = _mm512_maskz_sqrt_ps(0xFFFF, _mm512_loadu_ps(vp + i));
      const __m512 den = _mm512_fmadd_ps(sq, ib, ee);
      const __m512 upd = _mm512_div_ps(_mm512_mul_ps(ss, _mm512_loadu_ps(mp + i)), den);
      _mm512_storeu_ps(o + i, _mm512_sub_ps(_mm512_loadu_ps(wp + i), upd));
    }
#elif defined(IPUGRAPH_AVX2)
    const __m256 ss = _mm256_set1_ps(step_size), ib = _mm256_set1_ps(inv_sqrt_bc2),
                 ee = _mm256_set1_ps(ep);
    for (; i + 8 <= i1; i += 8) {
      const __m256 den = _mm256_fmadd_ps(_mm256_sqrt_ps(_mm256_loadu_ps(vp + i)), ib, ee);
      const __m256 upd = _mm256_div_ps(_mm256_mul_ps(ss, _mm256_loadu_ps(mp + i)), den);
      _mm256_storeu_ps(o + i, _mm256_sub_ps(_mm256_loadu_ps(wp + i), upd));
    }
#endif
    for (; i < i1; ++i)
      o[i] = wp[i] - step_size * mp[i] / std::fma(std::sqrt(vp[i]), inv_sqrt_bc2, ep);
  }
}

}  // namespace

void register_optim(py::module& m) {
  m.def("relu_backward", &relu_backward, py::arg("y"), py::arg("dy"), py::arg("out"),
        py::arg("vertices"),
        "out = dy where y > 0 else 0 (y the ReLU's output) over flat element ranges (start, end).");
  m.def("softmax_backward_rows", &softmax_backward_rows, py::arg("y"), py::arg("dy"),
        py::arg("out"), py::arg("vertices"),
        "out = y * (dy - sum(dy * y, last axis)) for rows (row0, row1) of [M, N] arrays.");
  m.def("transpose2d", &transpose2d, py::arg("a"), py::arg("out"), py::arg("vertices"),
        "out[i, j] = a[j, i] (a [M, N], out [N, M]) over rows (i0, i1) of out; blocked.");
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("labels"), py::arg("out"),
        py::arg("vertices"),
        "out[()] = mean over rows of (logsumexp(logits[n]) - logits[n, labels[n]]), stable; "
        "labels int64 [N] in [0, K) (else ValueError); vertices [V, 2] of the one dim 'all' "
        "(0, 1).");
  m.def("cross_entropy_backward", &cross_entropy_backward, py::arg("logits"), py::arg("labels"),
        py::arg("dloss"), py::arg("out"), py::arg("vertices"),
        "out[n, k] = (softmax(logits[n])[k] - (k == labels[n])) * dloss / N over row ranges; "
        "dloss a shape () array read at call time.");
  m.def("sgd_direction", &sgd_direction, py::arg("g"), py::arg("w"), py::arg("v"), py::arg("out"),
        py::arg("momentum"), py::arg("weight_decay"), py::arg("vertices"),
        "out = g + weight_decay * w (+ momentum * v; v may be None) over flat element ranges.");
  m.def("sgd_apply", &sgd_apply, py::arg("w"), py::arg("d"), py::arg("lr"), py::arg("out"),
        py::arg("vertices"), "out = w - lr * d (lr a shape () array) over flat element ranges.");
  m.def("adam_moment", &adam_moment, py::arg("m"), py::arg("g"), py::arg("out"), py::arg("beta"),
        py::arg("square"), py::arg("vertices"),
        "out = beta * m + (1 - beta) * (g*g if square else g) over flat element ranges.");
  m.def("adam_apply", &adam_apply, py::arg("w"), py::arg("m"), py::arg("v"), py::arg("lr"),
        py::arg("step"), py::arg("out"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("vertices"),
        "out = w - lr * (m / (1 - beta1**step)) / (sqrt(v / (1 - beta2**step)) + eps) (torch "
        "Adam; lr, step shape () arrays) over flat element ranges.");
}

}  // namespace ipugraph
