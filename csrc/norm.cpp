// Batch norm in training form: the batch statistics (bn_stats), the normalisation with them
// (batch_norm_train, whose fused pointwise epilogue runs over each vertex's range as it is
// written) and the gradient's per-channel sums (bn_grad_stats).  The rest of the backward pass
// (dx) and the running-statistics update are pointwise chains (pointwise.cpp).
//
// bn_stats shifts every channel by its first element before summing x and x^2
// (var = E[(x-K)^2] - E[x-K]^2 in double), so a large mean does not cancel the variance away.
#include "channel.h"
#include "pointwise.h"

namespace ipugraph {

namespace {

using namespace chan;

void bn_stats(const FArr& x, py::array out, int64_t rows, int64_t cols, bool channels_last,
              const IArr& vertices) {
  const char* fn = "bn_stats";
  float* o = out_ptr(out, fn);
  check_out_2c(fn, out);
  const RedGeom g = red_geom(fn, x, out.shape(1), rows, cols, channels_last);
  const std::vector<int64_t> vt = red_vertices(fn, vertices, g);
  check_no_overlap(fn, out, x, "x");
  const float* xp = x.data();
  const int64_t C = g.C;
  // Shift: the first element of each channel (keeps E[x^2] - E[x]^2 from cancelling).
  std::vector<float> shift(static_cast<size_t>(C), 0.f);
  if (g.M > 0)
    for (int64_t c = 0; c < C; ++c) shift[c] = xp[g.cl ? c : c * g.R * g.Wc];
  const float* sh = shift.data();
  const double M = double(g.M);
  py::gil_scoped_release nogil;
  chan_reduce<1>(g, xp, nullptr, sh, vt, [&](int64_t c, double s1, double s2) {
    const double m1 = s1 / M;  // M == 0: NaN, as torch's mean of nothing
    const double var = s2 / M - m1 * m1;
    o[c] = float(double(sh[c]) + m1);
    o[C + c] = float(var > 0.0 ? var : (var == var ? 0.0 : var));
  });
}

void bn_grad_stats(const FArr& dy, const FArr& x, const FArr& stats, py::array out, int64_t rows,
                   int64_t cols, bool channels_last, double eps, const IArr& vertices) {
  const char* fn = "bn_grad_stats";
  float* o = out_ptr(out, fn);
  check_out_2c(fn, out);
  const RedGeom g = red_geom(fn, x, out.shape(1), rows, cols, channels_last);
  check_same_size(fn, dy, "dy", x, "x");
  check_shape2(fn, stats, "stats", 2, g.C);
  check_eps(fn, eps);
  const std::vector<int64_t> vt = red_vertices(fn, vertices, g);
  check_no_overlap(fn, out, x, "x");
  check_no_overlap(fn, out, dy, "dy");
  check_no_overlap(fn, out, stats, "stats");
  const float* xp = x.data();
  const float* dp = dy.data();
  const float* sp = stats.data();
  const int64_t C = g.C;
  py::gil_scoped_release nogil;
  chan_reduce<2>(g, xp, dp, sp, vt, [&](int64_t c, double s1, double s2) {
    o[c] = float(s1);
    o[C + c] = float(s2 / std::sqrt(double(sp[C + c]) + eps));
  });
}

// ---------------------------------------------------------------------------------------------
// Flat per-channel maps: out[i] = p[c] * dy[i] + q[c] * (x[i] - m[c]) + r[c], c = channel of i.
// batch_norm_train: p = 0 (no dy), q = gamma * invstd, m = mean, r = beta.
// batch_norm_backward: p = gamma * invstd, q = -p * invstd * gstats[1] / M, r = -p * gstats[0] / M.
// out may alias x or dy (every element is read before it is written at the same index).
// ---------------------------------------------------------------------------------------------

template <bool HasDy>
void chan_map_range(const ChanGeom& g, const float* x, const float* dy, const float* p,
                    const float* q, const float* m, const float* r, float* out, int64_t i,
                    int64_t i1) {
  const int64_t C = g.C;
  if (g.inner == 1) {
    while (i < i1) {
      const int64_t c0 = i % C;
      const int64_t n = std::min(C - c0, i1 - i);
      const float* xr = x + i - c0;
      const float* dr = HasDy ? dy + i - c0 : nullptr;
      float* orow = out + i - c0;
      if constexpr (HasDy) {
#pragma omp simd
        for (int64_t c = c0; c < c0 + n; ++c)
          orow[c] = p[c] * dr[c] + q[c] * (xr[c] - m[c]) + r[c];
      } else {
#pragma omp simd
        for (int64_t c = c0; c < c0 + n; ++c) orow[c] = q[c] * (xr[c] - m[c]) + r[c];
      }
      i += n;
    }
    return;
  }
  const int64_t L = g.inner;
  while (i < i1) {
    const int64_t l0 = i % L, c = (i / L) % C;
    const int64_t n = std::min(L - l0, i1 - i);
    const float pc = HasDy ? p[c] : 0.f, qc = q[c], mc = m[c], rc = r[c];
    if constexpr (HasDy) {
#pragma omp simd
      for (int64_t j = i; j < i + n; ++j) out[j] = pc * dy[j] + qc * (x[j] - mc) + rc;
    } else {
#pragma omp simd
      for (int64_t j = i; j < i + n; ++j) out[j] = qc * (x[j] - mc) + rc;
    }
    i += n;
  }
}

void batch_norm_train(const FArr& x, const FArr& gamma, const FArr& beta, const FArr& stats,
                      py::array out, int64_t inner, double eps, const IArr& vertices,
                      const PointwiseProgram* epilogue) {
  const char* fn = "batch_norm_train";
  float* o = out_ptr(out, fn);
  check_ndim(gamma, 1, fn, "gamma", "[C]");
  const int64_t C = gamma.shape(0);
  const ChanGeom g = chan_geom(fn, x, "x", C, inner);
  check_same_size(fn, x, "x", out, "out");
  check_shape1(fn, beta, "beta", C);
  check_shape2(fn, stats, "stats", 2, C);
  check_eps(fn, eps);
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  std::vector<float> q(static_cast<size_t>(C)), m(q), r(q);
  const float* gp = gamma.data();
  const float* bp = beta.data();
  const float* sp = stats.data();
  for (int64_t c = 0; c < C; ++c) {
    q[c] = float(double(gp[c]) / std::sqrt(double(sp[C + c]) + eps));
    m[c] = sp[c];
    r[c] = bp[c];
  }
  check_epilogue(fn, epilogue, out);
  const float* xp = x.data();
  const int64_t per = epilogue ? epilogue->scratch_floats() : 0;
  std::vector<float> scratch(size_t(per) * size_t(max_threads()));
  for_each_range(vertices.data(), V, [&](int64_t i0, int64_t i1, int t) {
    for (int64_t a = i0; a < i1; a += EpilogueRuns::kFlush) {   // in cache-sized pieces
      const int64_t b = std::min(i1, a + EpilogueRuns::kFlush);
      chan_map_range<false>(g, xp, nullptr, nullptr, q.data(), m.data(), r.data(), o, a, b);
      if (epilogue) epilogue->run(a, b, scratch.data() + per * t);
    }
  });
}

}  // namespace

void register_norm(py::module& m) {
  m.def("bn_stats", &bn_stats, py::arg("x"), py::arg("out"), py::arg("rows"), py::arg("cols"),
        py::arg("channels_last"), py::arg("vertices"),
        "out[0, c] = mean, out[1, c] = biased variance of channel c (C = out.shape[1]) of x "
        "viewed as [N, rows, cols, C] (channels_last) or [N, C, rows, cols]; vertex rows (c0, c1) "
        "or (c0, c1, n0, n1, h0, h1) (h over rows): boxes whose sums are added per channel.");
  m.def("batch_norm_train", &batch_norm_train, py::arg("x"), py::arg("gamma"), py::arg("beta"),
        py::arg("stats"), py::arg("out"), py::arg("inner"), py::arg("eps"), py::arg("vertices"),
        py::arg("epilogue") = nullptr,
        "out = (x - stats[0]) / sqrt(stats[1] + eps) * gamma + beta per channel "
        "((i / inner) % C) over flat element ranges (start, end), then the epilogue program "
        "(over out) on each range.");
  m.def("bn_grad_stats", &bn_grad_stats, py::arg("dy"), py::arg("x"), py::arg("stats"),
        py::arg("out"), py::arg("rows"), py::arg("cols"), py::arg("channels_last"),
        py::arg("eps"), py::arg("vertices"),
        "out[0, c] = sum dy, out[1, c] = sum dy * xhat per channel; layout and vertex rows as "
        "bn_stats.");
}

}  // namespace ipugraph
