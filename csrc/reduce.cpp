// Reductions: the partial-sum reduction of a split conv / matmul (reduce_partials, with the
// fused epilogue), per-channel sums (channel_sum) and sums / means / maxima over any axes
// (reduce_axes).
#include "channel.h"
#include "pointwise.h"

#include <optional>
#include <pybind11/stl.h>

namespace ipugraph {

namespace {

using namespace chan;

inline float relu1(float v) { return v < 0.f ? 0.f : v; }

void channel_sum(const FArr& x, py::array out, int64_t rows, int64_t cols, bool channels_last,
                 const IArr& vertices) {
  const char* fn = "channel_sum";
  float* o = out_ptr(out, fn);
  check_ndim(out, 1, fn, "out", "[C]");
  const RedGeom g = red_geom(fn, x, out.shape(0), rows, cols, channels_last);
  const std::vector<int64_t> vt = red_vertices(fn, vertices, g);
  check_no_overlap(fn, out, x, "x");
  const float* xp = x.data();
  py::gil_scoped_release nogil;
  chan_reduce<0>(g, xp, nullptr, nullptr, vt,
                 [&](int64_t c, double s1, double) { o[c] = float(s1); });
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
                     bool relu, const PointwiseProgram* epilogue) {
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
  check_epilogue(fn, epilogue, out);
  const ReduceRun run = reduce_run_for(bp != nullptr, rp != nullptr, relu);
  const int32_t* vt = vertices.data();
  const int64_t per = epilogue ? epilogue->scratch_floats() : 0;
  std::vector<float> scratch(size_t(per) * size_t(max_threads()));
  for_each_vertex(vt, V, 8, [&](const int32_t* row, int t) {
    const int64_t k0 = row[2], len = row[3] - row[2];
    if (len <= 0) return;
    EpilogueRuns epi(epilogue, scratch.data() + per * t);
    for (int64_t n = row[0]; n < row[1]; ++n)
      for (int64_t oh = row[4]; oh < row[5]; ++oh)
        for (int64_t ow = row[6]; ow < row[7]; ++ow) {
          const int64_t i = ((n * OH + oh) * OW + ow) * K + k0;
          run(pp + i, slab, P, bp ? bp + k0 : nullptr, rp ? rp + i : nullptr, o + i, len);
          epi.add(i, i + len);
        }
  });
}

// ---------------------------------------------------------------------------------------------
// reduce_axes: out[o] = reduce over r of x[koff(o) + roff(r)] (kind 0 sum, 1 mean, 2 max), with
// koff = sum_d c_d * kept_strides[d] over the output's dims (out row-major) and roff over the
// reduced dims likewise; sums in double, max NaN-propagating (torch.amax).  Where the output's
// innermost dim is contiguous in x, a vertex reduces runs of outputs at once (vectorised across
// them), else one output at a time along the innermost reduced dim.
// ---------------------------------------------------------------------------------------------

constexpr int kRedMaxDims = 8;
constexpr int64_t kRedRun = 256;

struct Axes {
  int n = 0;
  int64_t shape[kRedMaxDims] = {}, stride[kRedMaxDims] = {};
  int64_t size = 1;
};

Axes make_axes(const char* fn, const char* what, const std::vector<int64_t>& shape,
               const std::vector<int64_t>& strides) {
  if (shape.size() != strides.size() || shape.size() > size_t(kRedMaxDims))
    fail(std::string(fn) + ": " + what + " shape and strides need one entry per dim (at most " +
         std::to_string(kRedMaxDims) + ")");
  Axes a;
  a.n = int(shape.size());
  for (int d = 0; d < a.n; ++d) {
    if (shape[d] < 1 || strides[d] < 0)
      fail(std::string(fn) + ": " + what + " dim " + std::to_string(d) + " has size " +
           std::to_string(shape[d]) + " and stride " + std::to_string(strides[d]));
    a.shape[d] = shape[d];
    a.stride[d] = strides[d];
    a.size *= shape[d];
  }
  return a;
}

int64_t reach(const Axes& a) {
  int64_t r = 0;
  for (int d = 0; d < a.n; ++d) r += (a.shape[d] - 1) * a.stride[d];
  return r;
}

// f(offset) for the first element of every run along the innermost reduced dim.
template <class F>
void for_red_rows(const Axes& r, F&& f) {
  if (r.n == 0) {
    f(int64_t(0));
    return;
  }
  int64_t c[kRedMaxDims] = {};
  int64_t off = 0;
  const int last = r.n - 1;
  const int64_t rows = r.size / r.shape[last];
  for (int64_t k = 0; k < rows; ++k) {
    f(off);
    for (int d = last - 1; d >= 0; --d) {     // next row: carry over the outer reduced dims
      off += r.stride[d];
      if (++c[d] < r.shape[d]) break;
      off -= c[d] * r.stride[d];
      c[d] = 0;
    }
  }
}

template <int Kind>
void reduce_range(const float* x, float* out, const Axes& k, const Axes& r, int64_t a,
                  int64_t b) {
  const int64_t inner_len = r.n ? r.shape[r.n - 1] : 1;
  const int64_t inner_s = r.n ? r.stride[r.n - 1] : 0;
  const double count = double(r.size);
  const int lastk = k.n - 1;
  while (a < b) {
    int64_t rem = a, koff = 0, clast = 0;
    for (int d = lastk; d >= 0; --d) {
      const int64_t c = rem % k.shape[d];
      rem /= k.shape[d];
      koff += c * k.stride[d];
      if (d == lastk) clast = c;
    }
    const int64_t run = k.n ? std::min(b - a, k.shape[lastk] - clast) : 1;
    if (k.n && k.stride[lastk] == 1 && run > 1) {
      for (int64_t t0 = 0; t0 < run; t0 += kRedRun) {   // vectorised across outputs
        const int64_t len = std::min(kRedRun, run - t0);
        alignas(64) double acc[kRedRun];
        alignas(64) float mx[kRedRun];
        for (int64_t t = 0; t < len; ++t) {
          acc[t] = 0.0;
          mx[t] = -std::numeric_limits<float>::infinity();
        }
        const float* base = x + koff + t0;
        for_red_rows(r, [&](int64_t off) {
          for (int64_t e = 0; e < inner_len; ++e) {
            const float* p = base + off + e * inner_s;
            if constexpr (Kind == 2) {
#pragma omp simd
              for (int64_t t = 0; t < len; ++t) mx[t] = (p[t] > mx[t] || p[t] != p[t]) ? p[t] : mx[t];
            } else {
#pragma omp simd
              for (int64_t t = 0; t < len; ++t) acc[t] += double(p[t]);
            }
          }
        });
        float* o = out + a + t0;
        for (int64_t t = 0; t < len; ++t)
          o[t] = Kind == 2 ? mx[t] : float(Kind == 1 ? acc[t] / count : acc[t]);
      }
    } else {
      for (int64_t t = 0; t < run; ++t) {
        const float* base = x + koff + t * (k.n ? k.stride[lastk] : 0);
        double acc = 0.0;
        float mx = -std::numeric_limits<float>::infinity();
        for_red_rows(r, [&](int64_t off) {
          const float* p = base + off;
          if constexpr (Kind == 2) {
            for (int64_t e = 0; e < inner_len; ++e) {
              const float v = p[e * inner_s];
              mx = (v > mx || v != v) ? v : mx;
            }
          } else if (inner_s == 1) {
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t e = 0; e < inner_len; ++e) s += double(p[e]);
            acc += s;
          } else {
            for (int64_t e = 0; e < inner_len; ++e) acc += double(p[e * inner_s]);
          }
        });
        out[a + t] = Kind == 2 ? mx : float(Kind == 1 ? acc / count : acc);
      }
    }
    a += run;
  }
}

void reduce_axes(const FArr& x, py::array out, const std::vector<int64_t>& kept_shape,
                 const std::vector<int64_t>& kept_strides, const std::vector<int64_t>& red_shape,
                 const std::vector<int64_t>& red_strides, int64_t kind, const IArr& vertices) {
  const char* fn = "reduce_axes";
  float* o = out_ptr(out, fn);
  const Axes k = make_axes(fn, "kept", kept_shape, kept_strides);
  const Axes r = make_axes(fn, "reduced", red_shape, red_strides);
  if (kind < 0 || kind > 2) fail(std::string(fn) + ": kind must be 0 (sum), 1 (mean) or 2 (max)");
  if (out.size() != k.size)
    fail(std::string(fn) + ": out " + shape_str(out) + " must have the kept dims' " +
         std::to_string(k.size) + " elements");
  if (x.size() == 0 || reach(k) + reach(r) >= x.size())
    fail(std::string(fn) + ": x " + shape_str(x) + " is read past its end by these strides");
  check_no_overlap(fn, out, x, "x");
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const float* xp = x.data();
  for_each_range(vertices.data(), V, [&](int64_t a, int64_t b, int) {
    if (kind == 0) reduce_range<0>(xp, o, k, r, a, b);
    else if (kind == 1) reduce_range<1>(xp, o, k, r, a, b);
    else reduce_range<2>(xp, o, k, r, a, b);
  });
}

}  // namespace

void register_reduce(py::module& m) {
  m.def("reduce_axes", &reduce_axes, py::arg("x"), py::arg("out"), py::arg("kept_shape"),
        py::arg("kept_strides"), py::arg("red_shape"), py::arg("red_strides"), py::arg("kind"),
        py::arg("vertices"),
        "out[o] = sum (kind 0), mean (1) or max (2) over the reduced dims of x, each output at "
        "offset sum c_d * kept_strides[d] (out row-major over kept_shape), over flat ranges of "
        "out.");
  m.def("channel_sum", &channel_sum, py::arg("x"), py::arg("out"), py::arg("rows"),
        py::arg("cols"), py::arg("channels_last"), py::arg("vertices"),
        "out[c] = sum of channel c (C = out.size) of x, in double; layout and vertex rows as "
        "bn_stats.");
  m.def("reduce_partials", &reduce_partials, py::arg("partials"), py::arg("bias"),
        py::arg("residual"), py::arg("out"), py::arg("vertices"), py::arg("relu") = false,
        py::arg("epilogue") = nullptr,
        "out[n,oh,ow,k] = act(sum_p partials[p,n,oh,ow,k] + bias[k] + residual[n,oh,ow,k]) for "
        "every vertex row (n0,n1,k0,k1,oh0,oh1,ow0,ow1): the reduction after conv2d_nhwc_partial "
        "(for matmul_partial view partials as [P, M, 1, 1, N] and out as [M, 1, 1, N]).  bias "
        "and residual may be None; residual may be out itself; partials must not overlap out. "
        "epilogue: a PointwiseProgram over out run on each box after it is reduced.");
}

}  // namespace ipugraph
