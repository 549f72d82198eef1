// The pointwise evaluator's construction (every check, once, at compile) and its entry points:
// PointwiseProgram (a class), pointwise(program, vertices) for a pointwise compute set and
// pointwise_ops() (the opcode table this build was generated from).  See pointwise.h.
#include "pointwise.h"

#include <pybind11/stl.h>

#include <sstream>

namespace ipugraph {

namespace {

struct OpInfo {
  const char* name;
  int arity;
};

const std::vector<OpInfo>& op_table() {
  static const std::vector<OpInfo> t = {
#define IPG_PW_INFO(ID, NAME, ARITY) {#NAME, ARITY},
      IPUGRAPH_POINTWISE_TABLE(IPG_PW_INFO)
#undef IPG_PW_INFO
  };
  return t;
}

bool is_u8(const py::array& a) {
  const char k = a.dtype().kind();
  return a.itemsize() == 1 && (k == 'b' || k == 'u');
}

bool is_f32(const py::array& a) { return a.dtype().kind() == 'f' && a.itemsize() == 4; }

bool overlaps(const py::array& a, const py::array& b) {
  const char* pa = static_cast<const char*>(a.data());
  const char* pb = static_cast<const char*>(b.data());
  const size_t na = size_t(a.nbytes()), nb = size_t(b.nbytes());
  return na && nb && pa < pb + nb && pb < pa + na;
}

}  // namespace

PointwiseProgram::PointwiseProgram(
    py::array out, const std::vector<int64_t>& shape, const std::vector<py::array>& operands,
    const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& strides,
    const FArr& immediates, const IArr& code, int64_t result) {
  const char* fn = "PointwiseProgram";
  if (!(out.flags() & py::array::c_style) || !out.writeable() || !(is_f32(out) || is_u8(out)))
    fail(std::string(fn) + ": out must be a writeable C-contiguous float32 or bool array, got "
         "dtype " + std::string(py::str(out.dtype())) + " shape " + shape_str(out));
  if (shape.empty() || shape.size() > size_t(kPwMaxDims))
    fail(std::string(fn) + ": shape must have 1 to " + std::to_string(kPwMaxDims) + " dims, got " +
         std::to_string(shape.size()));
  nd_ = int(shape.size());
  size_ = 1;
  for (int d = 0; d < nd_; ++d) {
    if (shape[d] < 1) fail(std::string(fn) + ": every dim of shape must be >= 1");
    shape_[d] = shape[d];
    if (size_ > std::numeric_limits<int64_t>::max() / shape[d])
      fail(std::string(fn) + ": shape overflows int64");
    size_ *= shape[d];
  }
  if (out.size() != size_)
    fail(std::string(fn) + ": out " + shape_str(out) + " has " + std::to_string(out.size()) +
         " elements, the shape " + std::to_string(size_));
  out_ = out;
  out_base_ = static_cast<char*>(out.mutable_data());
  out_u8_ = is_u8(out);
  if (strides.ndim() != 2 || strides.shape(0) != py::ssize_t(operands.size()) ||
      strides.shape(1) != nd_)
    fail(std::string(fn) + ": strides must be int64 [operands=" + std::to_string(operands.size()) +
         ", dims=" + std::to_string(nd_) + "], got " + shape_str(strides));
  int64_t rowmajor[kPwMaxDims];
  rowmajor[nd_ - 1] = 1;
  for (int d = nd_ - 2; d >= 0; --d) rowmajor[d] = rowmajor[d + 1] * shape_[d + 1];
  for (size_t k = 0; k < operands.size(); ++k) {
    const py::array& a = operands[k];
    if (!(a.flags() & py::array::c_style) || !(is_f32(a) || is_u8(a)))
      fail(std::string(fn) + ": operand " + std::to_string(k) + " must be a C-contiguous "
           "float32 or bool array, got dtype " + std::string(py::str(a.dtype())) + " shape " +
           shape_str(a));
    Operand o{};
    o.base = static_cast<const char*>(a.data());
    o.u8 = is_u8(a);
    o.contiguous = true;
    int64_t reach = 0;
    for (int d = 0; d < nd_; ++d) {
      const int64_t s = strides.at(k, d);
      if (s < 0 || (shape_[d] > 1 && s > std::numeric_limits<int64_t>::max() / shape_[d]))
        fail(std::string(fn) + ": operand " + std::to_string(k) + " has stride " +
             std::to_string(s) + " in dim " + std::to_string(d) + " (must be >= 0)");
      o.stride[d] = s;
      reach += (shape_[d] - 1) * s;
      o.contiguous = o.contiguous && (s == rowmajor[d] || shape_[d] == 1);
    }
    o.uniform = reach == 0 && !overlaps(a, out);  // (an accumulator is read only after it is written)
    if (a.size() == 0 || reach >= a.size())
      fail(std::string(fn) + ": operand " + std::to_string(k) + " " + shape_str(a) +
           " is read up to element " + std::to_string(reach) + ", past its end");
    if (!o.contiguous && overlaps(a, out))
      fail(std::string(fn) + ": operand " + std::to_string(k) + " overlaps out but is not read "
           "element for element (its elements would be overwritten before they are read)");
    ops_.push_back(o);
    keep_.push_back(a);
  }
  imms_.assign(immediates.data(), immediates.data() + immediates.size());
  const int first_ins = int(ops_.size() + imms_.size());
  if (code.ndim() != 2 || code.shape(1) != 4)
    fail(std::string(fn) + ": code must be int32 [n, 4] (opcode, a, b, c), got " +
         shape_str(code));
  nvalues_ = first_ins + int(code.shape(0));
  if (nvalues_ > kPwMaxValues)
    fail(std::string(fn) + ": " + std::to_string(nvalues_) + " values, at most " +
         std::to_string(kPwMaxValues));
  const auto& table = op_table();
  for (py::ssize_t i = 0; i < code.shape(0); ++i) {
    const int32_t* r = code.data() + 4 * i;
    const int32_t op = r[0];
    if (op < 0 || op >= int32_t(table.size()))
      fail(std::string(fn) + ": instruction " + std::to_string(i) + " has opcode " +
           std::to_string(op) + ", this build knows " + std::to_string(table.size()));
    const int arity = table[op].arity;
    for (int j = 0; j < 3; ++j) {
      const int32_t a = r[1 + j];
      const bool used = j < arity;
      if (used ? (a < 0 || a >= first_ins + i) : a != -1)
        fail(std::string(fn) + ": instruction " + std::to_string(i) + " (" + table[op].name +
             ") argument " + std::to_string(j) + " is " + std::to_string(a) +
             (used ? ", not an earlier value" : ", expected -1 (unused)"));
    }
    code_.push_back({op, r[1], r[2], r[3]});
  }
  if (result < 0 || result >= nvalues_)
    fail(std::string(fn) + ": result " + std::to_string(result) + " is not a value (0.." +
         std::to_string(nvalues_ - 1) + ")");
  result_ = int32_t(result);
}

std::string PointwiseProgram::describe() const {
  std::ostringstream s;
  s << "PointwiseProgram(" << size_ << " elements, " << ops_.size() << " operands, "
    << imms_.size() << " immediates, " << code_.size() << " instructions)";
  return s.str();
}

namespace {

void pointwise(const PointwiseProgram& prog, const IArr& vertices) {
  const char* fn = "pointwise";
  const py::ssize_t V = check_flat_vertices(vertices, prog.size(), fn);
  const int64_t per = prog.scratch_floats();
  std::vector<float> scratch(size_t(per) * size_t(max_threads()));
  for_each_range(vertices.data(), V, [&](int64_t i0, int64_t i1, int t) {
    prog.run(i0, i1, scratch.data() + per * t);
  });
}

}  // namespace

void register_pointwise(py::module& m) {
  // module_local: each ISA build of the extension (ipugraph/_C.py) registers its own type
  py::class_<PointwiseProgram>(m, "PointwiseProgram", py::module_local(),
                               "A fused pointwise chain, validated once (see pointwise.h).")
      .def(py::init<py::array, const std::vector<int64_t>&, const std::vector<py::array>&,
                    const py::array_t<int64_t, py::array::c_style | py::array::forcecast>&,
                    const FArr&, const IArr&, int64_t>(),
           py::arg("out"), py::arg("shape"), py::arg("operands"), py::arg("strides"),
           py::arg("immediates"), py::arg("code"), py::arg("result"))
      .def_property_readonly("size", &PointwiseProgram::size)
      .def("__repr__", &PointwiseProgram::describe);
  m.def("pointwise", &pointwise, py::arg("program"), py::arg("vertices"),
        "Run a PointwiseProgram over flat (start, end) element ranges of its output.");
  m.def("pointwise_ops", []() {
    std::vector<std::pair<std::string, int>> out;
    for (const auto& o : op_table()) out.emplace_back(o.name, o.arity);
    return out;
  }, "The (name, arity) of every opcode, in opcode order, as this build was generated.");
}

}  // namespace ipugraph
