// Data movement: a blocked 2-D transpose, the gather that serves every index-mapping op
// (concat, slice, pad, upsample-nearest, select, layout changes) and a separable resampling
// along one axis (bilinear upsampling; the gradients of reflect padding and nearest upsampling).
#include "common.h"

#include <pybind11/stl.h>

namespace ipugraph {

namespace {

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
  constexpr int64_t B = 32;
  for_each_range(vertices.data(), V, [&](int64_t i0, int64_t i1, int) {
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
  });
}

// ---------------------------------------------------------------------------------------------
// gather: out[c] = src_k[base_k + sum_d map_d[c_d] * stride_k[d]], or `fill` where any
// map_d[c_d] < 0, for every element c of an iteration space of `shape` (nd axes); out is
// written at sum_d c_d * out_stride[d].  k = sel[c_sel] along the select axis (concat), else 0.
// Vertices are flat (start, end) ranges of the iteration space.  An empty map is the identity.
// Elements are copied as their bytes (float32, bool, int64: out and the sources share an
// itemsize).
// ---------------------------------------------------------------------------------------------

constexpr int kGatherMaxDims = 8;

struct GatherArgs {
  int nd, sel_axis, nsrc;
  int64_t shape[kGatherMaxDims], out_stride[kGatherMaxDims];
  std::vector<const char*> src;
  std::vector<int64_t> src_stride, src_base;   // [nsrc * nd], [nsrc]
  std::vector<const int64_t*> map;              // per axis; nullptr: the identity
  const int64_t* sel;
};

inline int64_t map_at(const GatherArgs& g, int d, int64_t j) { return g.map[d] ? g.map[d][j] : j; }

template <class T>
void gather_range(const GatherArgs& g, T* out, T fill, int64_t a, int64_t b) {
  const int nd = g.nd, last = nd - 1;
  int64_t c[kGatherMaxDims];
  int64_t rem = a;
  for (int d = last; d >= 0; --d) {
    c[d] = rem % g.shape[d];
    rem /= g.shape[d];
  }
  int64_t srcoff[64];  // per source: the offset of the run's outer coordinates (nsrc <= 64)
  while (a < b) {
    const int64_t run = std::min(b - a, g.shape[last] - c[last]);
    int64_t ob = 0;
    bool valid = true;
    for (int d = 0; d < last; ++d) {
      ob += c[d] * g.out_stride[d];
      valid = valid && map_at(g, d, c[d]) >= 0;
    }
    int k_outer = 0;
    if (g.sel_axis >= 0 && g.sel_axis < last) k_outer = int(g.sel[c[g.sel_axis]]);
    for (int k = 0; k < g.nsrc; ++k) {
      int64_t off = g.src_base[k];
      if (valid)
        for (int d = 0; d < last; ++d) off += map_at(g, d, c[d]) * g.src_stride[k * nd + d];
      srcoff[k] = off;
    }
    const int64_t os = g.out_stride[last];
    const int64_t* ml = g.map[last];
    for (int64_t t = 0; t < run; ++t) {
      const int64_t j = c[last] + t;
      const int k = g.sel_axis == last ? int(g.sel[j]) : k_outer;
      const int64_t m = ml ? ml[j] : j;
      out[ob + j * os] = (valid && m >= 0)
          ? reinterpret_cast<const T*>(g.src[k])[srcoff[k] + m * g.src_stride[k * nd + last]]
          : fill;
    }
    a += run;
    c[last] += run;
    for (int d = last; d > 0 && c[d] == g.shape[d]; --d) {
      c[d] = 0;
      ++c[d - 1];
    }
  }
}

// A gather validated once (at compile): run(vertices) only copies. The arrays it reads and
// writes are kept alive with it.
class Gather {
 public:
  Gather(py::array out, const std::vector<int64_t>& shape, const std::vector<int64_t>& out_strides,
         const std::vector<py::array>& sources, const std::vector<int64_t>& src_strides,
         const std::vector<int64_t>& src_base, const std::vector<I64Arr>& maps,
         int64_t sel_axis, const I64Arr& sel, double fill);
  void run(const IArr& vertices) const;

 private:
  py::array out_;
  std::vector<py::array> keep_;
  std::vector<I64Arr> maps_;
  I64Arr sel_;
  GatherArgs g_{};
  int64_t size_ = 1;
  double fill_ = 0.0;
};

Gather::Gather(py::array out, const std::vector<int64_t>& shape,
               const std::vector<int64_t>& out_strides, const std::vector<py::array>& sources,
               const std::vector<int64_t>& src_strides, const std::vector<int64_t>& src_base,
               const std::vector<I64Arr>& maps, int64_t sel_axis, const I64Arr& sel, double fill)
    : out_(out), keep_(sources), maps_(maps), sel_(sel), fill_(fill) {
  const char* fn = "gather";
  if (!(out.flags() & py::array::c_style) || !out.writeable())
    fail(std::string(fn) + ": out must be a writeable C-contiguous array");
  const int nd = int(shape.size());
  const int nsrc = int(sources.size());
  if (nd < 1 || nd > kGatherMaxDims || int(out_strides.size()) != nd || int(maps.size()) != nd)
    fail(std::string(fn) + ": shape, out_strides and maps need one entry per axis (1 to " +
         std::to_string(kGatherMaxDims) + ")");
  if (nsrc < 1 || nsrc > 64 || int(src_strides.size()) != nsrc * nd ||
      int(src_base.size()) != nsrc)
    fail(std::string(fn) + ": need 1 to 64 sources, src_strides [sources * axes] and src_base "
         "[sources]");
  if ((sel_axis >= 0) != (nsrc > 1) || sel_axis >= nd)
    fail(std::string(fn) + ": a select axis (in [0, axes)) is needed exactly when there are "
         "several sources");
  GatherArgs& g = g_;
  g.nd = nd; g.sel_axis = int(sel_axis); g.nsrc = nsrc;
  int64_t size = 1, reach = 0;
  for (int d = 0; d < nd; ++d) {
    if (shape[d] < 1 || out_strides[d] < 0)
      fail(std::string(fn) + ": axis " + std::to_string(d) + " has size " +
           std::to_string(shape[d]) + " and out stride " + std::to_string(out_strides[d]));
    g.shape[d] = shape[d];
    g.out_stride[d] = out_strides[d];
    size *= shape[d];
    reach += (shape[d] - 1) * out_strides[d];
    const bool identity = maps[d].ndim() == 1 && maps[d].shape(0) == 0;
    if (!identity && (maps[d].ndim() != 1 || maps[d].shape(0) != shape[d]))
      fail(std::string(fn) + ": map of axis " + std::to_string(d) + " has shape " +
           shape_str(maps[d]) + ", expected (" + std::to_string(shape[d]) + ",) or (0,) for "
           "the identity");
    g.map.push_back(identity ? nullptr : maps_[d].data());
  }
  if (reach >= out.size())
    fail(std::string(fn) + ": out " + shape_str(out) + " is written up to element " +
         std::to_string(reach) + ", past its end");
  if (sel_axis >= 0) {
    if (sel.ndim() != 1 || sel.shape(0) != shape[sel_axis])
      fail(std::string(fn) + ": sel must have one entry per index of the select axis");
    for (py::ssize_t j = 0; j < sel.shape(0); ++j)
      if (sel.data()[j] < 0 || sel.data()[j] >= nsrc)
        fail(std::string(fn) + ": sel[" + std::to_string(j) + "] = " +
             std::to_string(sel.data()[j]) + " is not a source");
    g.sel = sel_.data();
  } else {
    g.sel = nullptr;
  }
  // Every read stays inside its source: the largest index each axis's map gives that source.
  for (int k = 0; k < nsrc; ++k) {
    const py::array& a = sources[k];
    if (a.itemsize() != out.itemsize() || !(a.flags() & py::array::c_style))
      fail(std::string(fn) + ": source " + std::to_string(k) + " must be C-contiguous with "
           "out's itemsize " + std::to_string(out.itemsize()));
    const char* pa = static_cast<const char*>(a.data());
    const char* po = static_cast<const char*>(out.data());
    if (a.nbytes() && out.nbytes() && pa < po + out.nbytes() && po < pa + a.nbytes())
      fail(std::string(fn) + ": source " + std::to_string(k) + " overlaps out");
    int64_t top = src_base[k];
    bool any = true;
    for (int d = 0; d < nd; ++d) {
      int64_t mx = -1;
      for (int64_t j = 0; j < shape[d]; ++j)
        if ((sel_axis != d || g.sel[j] == k) && map_at(g, d, j) > mx) mx = map_at(g, d, j);
      if (mx < 0) any = false;
      if (src_strides[k * nd + d] < 0) fail(std::string(fn) + ": negative source stride");
      top += std::max<int64_t>(mx, 0) * src_strides[k * nd + d];
    }
    if (src_base[k] < 0 || (any && top >= a.size()))
      fail(std::string(fn) + ": source " + std::to_string(k) + " " + shape_str(a) +
           " would be read at element " + std::to_string(top) + ", past its end");
    g.src.push_back(pa);
  }
  g.src_stride = src_strides;
  g.src_base = src_base;
  size_ = size;
  const int isz = int(out.itemsize());
  if (isz != 1 && isz != 4 && isz != 8)
    fail(std::string(fn) + ": itemsize " + std::to_string(isz) + " is not supported (1, 4, 8)");
}

void Gather::run(const IArr& vertices) const {
  const char* fn = "gather";
  const GatherArgs& g = g_;
  const py::array& out = out_;
  const double fill = fill_;
  const py::ssize_t V = check_flat_vertices(vertices, size_, fn);
  const int32_t* vt = vertices.data();
  const int isz = int(out.itemsize());
  char* o = static_cast<char*>(const_cast<void*>(out.data()));
  if (isz == 4) {
    const float f = float(fill);
    for_each_range(vt, V, [&](int64_t a, int64_t b, int) {
      gather_range<uint32_t>(g, reinterpret_cast<uint32_t*>(o), __builtin_bit_cast(uint32_t, f), a, b);
    });
  } else if (isz == 1) {
    const uint8_t f = fill != 0.0;
    for_each_range(vt, V, [&](int64_t a, int64_t b, int) {
      gather_range<uint8_t>(g, reinterpret_cast<uint8_t*>(o), f, a, b);
    });
  } else {  // 8 (checked at construction)
    const int64_t f = int64_t(fill);
    for_each_range(vt, V, [&](int64_t a, int64_t b, int) {
      gather_range<int64_t>(g, reinterpret_cast<int64_t*>(o), f, a, b);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// resample: out[o, j, i] = sum_{e in [indptr[j], indptr[j+1])} weights[e] * x[o, indices[e], i]
// for x [outer, n_in, inner], out [outer, n_out, inner] (the resampled axis of a tensor's
// storage, with what precedes and follows it flattened), over flat (start, end) ranges of out.
// ---------------------------------------------------------------------------------------------

void resample(const FArr& x, py::array out, int64_t outer, int64_t n_in, int64_t n_out,
              int64_t inner,
              const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& indptr,
              const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& indices,
              const FArr& weights, const IArr& vertices) {
  const char* fn = "resample";
  float* o = out_ptr(out, fn);
  if (outer < 1 || n_in < 1 || n_out < 1 || inner < 1 || x.size() != outer * n_in * inner ||
      out.size() != outer * n_out * inner)
    fail(std::string(fn) + ": x " + shape_str(x) + " and out " + shape_str(out) + " must be [" +
         std::to_string(outer) + ", n_in=" + std::to_string(n_in) + " / n_out=" +
         std::to_string(n_out) + ", " + std::to_string(inner) + "]");
  if (indptr.ndim() != 1 || indptr.shape(0) != n_out + 1 || indptr.data()[0] != 0)
    fail(std::string(fn) + ": indptr must be [n_out + 1] starting at 0");
  const int64_t* ip = indptr.data();
  for (int64_t j = 0; j < n_out; ++j)
    if (ip[j + 1] < ip[j]) fail(std::string(fn) + ": indptr must not decrease");
  const int64_t nnz = ip[n_out];
  if (indices.ndim() != 1 || indices.shape(0) != nnz || weights.ndim() != 1 ||
      weights.shape(0) != nnz)
    fail(std::string(fn) + ": indices and weights must have indptr[-1] = " +
         std::to_string(nnz) + " entries");
  for (int64_t e = 0; e < nnz; ++e)
    if (indices.data()[e] < 0 || indices.data()[e] >= n_in)
      fail(std::string(fn) + ": index " + std::to_string(indices.data()[e]) + " outside [0, " +
           std::to_string(n_in) + ")");
  {
    const char* pa = reinterpret_cast<const char*>(x.data());
    const char* po = reinterpret_cast<const char*>(o);
    if (pa < po + out.nbytes() && po < pa + x.nbytes())
      fail(std::string(fn) + ": out overlaps x");
  }
  const py::ssize_t V = check_flat_vertices(vertices, out.size(), fn);
  const float* xp = x.data();
  const int64_t* ix = indices.data();
  const float* wp = weights.data();
  for_each_range(vertices.data(), V, [&](int64_t a, int64_t b, int) {
    while (a < b) {                          // runs along inner of one (o, j) row
      const int64_t i0 = a % inner, row = a / inner;
      const int64_t len = std::min(inner - i0, b - a);
      const int64_t oo = row / n_out, j = row % n_out;
      float* dst = o + a;
      for (int64_t t = 0; t < len; ++t) dst[t] = 0.0f;
      for (int64_t e = ip[j]; e < ip[j + 1]; ++e) {
        const float w = wp[e];
        const float* src = xp + (oo * n_in + ix[e]) * inner + i0;
#pragma omp simd
        for (int64_t t = 0; t < len; ++t) dst[t] += w * src[t];
      }
      a += len;
    }
  });
}

}  // namespace

void register_shape(py::module& m) {
  py::class_<Gather>(m, "Gather",
                     "out[c] = sources[k][base_k + sum_d maps[d][c_d] * stride_k[d]] (fill where "
                     "a map is < 0) over the iteration space `shape`; k = sel[c_sel]. Its "
                     "arguments are checked once, here; run(vertices) copies over flat (start, "
                     "end) ranges of the iteration space (the kernel of a data-movement compute "
                     "set).")
      .def(py::init<py::array, const std::vector<int64_t>&, const std::vector<int64_t>&,
                    const std::vector<py::array>&, const std::vector<int64_t>&,
                    const std::vector<int64_t>&, const std::vector<I64Arr>&, int64_t,
                    const I64Arr&, double>(),
           py::arg("out"), py::arg("shape"), py::arg("out_strides"), py::arg("sources"),
           py::arg("src_strides"), py::arg("src_base"), py::arg("maps"), py::arg("sel_axis"),
           py::arg("sel"), py::arg("fill"))
      .def("run", &Gather::run, py::arg("vertices"));
  m.def("resample", &resample, py::arg("x"), py::arg("out"), py::arg("outer"), py::arg("n_in"),
        py::arg("n_out"), py::arg("inner"), py::arg("indptr"), py::arg("indices"),
        py::arg("weights"), py::arg("vertices"),
        "out[o, j, i] = sum over the CSR row j of weights[e] * x[o, indices[e], i] over flat "
        "(start, end) ranges of out [outer, n_out, inner].");
  m.def("transpose2d", &transpose2d, py::arg("a"), py::arg("out"), py::arg("vertices"),
        "out[i, j] = a[j, i] (a [M, N], out [N, M]) over rows (i0, i1) of out; blocked.");
}

}  // namespace ipugraph
