// dropout's keep mask: element i (its logical row-major index, as uint32) is kept when
// mix32(i ^ mix32(seed)) >= threshold, mix32 being Chris Wellons' "lowbias32" integer hash; the
// same bits as ipugraph/ops/random.py's reference and the Triton kernel.
#include "common.h"

#include <pybind11/stl.h>

namespace ipugraph {

namespace {

inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// out (bool, the storage of the mask) of `shape` (storage order); logical_strides[d]: the
// logical row-major stride of storage dim d; vertices: flat ranges of the storage.
void dropout_mask(py::array out, const std::vector<int64_t>& shape,
                  const std::vector<int64_t>& logical_strides, const py::array& seed,
                  uint32_t threshold, const IArr& vertices) {
  const char* fn = "dropout_mask";
  if (out.itemsize() != 1 || !(out.flags() & py::array::c_style) || !out.writeable())
    fail(std::string(fn) + ": out must be a writeable C-contiguous bool array");
  if (shape.empty() || shape.size() != logical_strides.size() || shape.size() > 8)
    fail(std::string(fn) + ": shape and logical_strides need one entry per dim (1 to 8)");
  int64_t size = 1;
  for (int64_t d : shape) {
    if (d < 1) fail(std::string(fn) + ": dims must be >= 1");
    size *= d;
  }
  if (out.size() != size) fail(std::string(fn) + ": out " + shape_str(out) + " is not `shape`");
  if (seed.size() != 1 || seed.dtype().kind() != 'i')
    fail(std::string(fn) + ": seed must be one signed integer");
  int64_t sv = 0;
  if (seed.itemsize() == 8) sv = *static_cast<const int64_t*>(seed.data());
  else if (seed.itemsize() == 4) sv = *static_cast<const int32_t*>(seed.data());
  else fail(std::string(fn) + ": seed must be int32 or int64");
  const uint32_t s = mix32(static_cast<uint32_t>(sv));
  const py::ssize_t V = check_flat_vertices(vertices, size, fn);
  const int nd = int(shape.size());
  uint8_t* o = static_cast<uint8_t*>(out.mutable_data());
  for_each_range(vertices.data(), V, [&](int64_t a, int64_t b, int) {
    int64_t c[8];
    int64_t rem = a;
    uint64_t li = 0;
    for (int d = nd - 1; d >= 0; --d) {
      c[d] = rem % shape[d];
      rem /= shape[d];
      li += uint64_t(c[d]) * uint64_t(logical_strides[d]);
    }
    for (int64_t i = a; i < b; ++i) {
      o[i] = mix32(static_cast<uint32_t>(li) ^ s) >= threshold;
      int d = nd - 1;                        // the next element: carry into the outer dims
      ++c[d];
      li += uint64_t(logical_strides[d]);
      while (d > 0 && c[d] == shape[d]) {
        li -= uint64_t(c[d]) * uint64_t(logical_strides[d]);
        c[d] = 0;
        --d;
        ++c[d];
        li += uint64_t(logical_strides[d]);
      }
    }
  });
}

}  // namespace

void register_random(py::module& m) {
  m.def("dropout_mask", &dropout_mask, py::arg("out"), py::arg("shape"),
        py::arg("logical_strides"), py::arg("seed"), py::arg("threshold"), py::arg("vertices"),
        "Keep mask of dropout: out[i] = mix32(logical_index(i) ^ mix32(seed)) >= threshold over "
        "flat ranges of out's storage.");
}

}  // namespace ipugraph
