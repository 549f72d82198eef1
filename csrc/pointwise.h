// The pointwise evaluator: a fused chain of primitives (ipugraph/ops/pointwise.py) run as ONE
// pass over memory.
//
// A PointwiseProgram is built once, at compile, from the Program's chain: the output array,
// the output's shape (storage order, dims coalesced), each operand's array with its element
// strides per output dim (0 where it is broadcast), the immediates, and the code: SSA rows
// (opcode, a, b, c) over value ids [operands | immediates | instruction results].  Everything
// is validated then (every operand read stays inside its array), so a run only computes.
//
// run(start, stop) evaluates output elements [start, stop) of the flat output in blocks of
// kPwBlock: each operand's block is the array itself when it is read element for element, else
// gathered (and a bool operand converted to 0 / 1); each instruction is one `omp simd` loop over
// the block (the opcode's expression is generated into pointwise_ops.inc from the Python table
// by setup.py); the last instruction writes straight into the output.  The blocks stay in L1,
// so a chain of any length reads its inputs and writes its output once.  An operand may be the
// output itself (an epilogue's accumulator, an update in place) when it is read element for
// element: each element is read before it is written.
//
// Conv, matmul and the partial-sum reduction run a program as their epilogue, over the output
// elements each vertex has just written (still in cache): silu(conv(x)) + y is one call.
#pragma once

#include "common.h"
#include "pointwise_math.h"

#include <vector>

namespace ipugraph {

#include "pointwise_ops.inc"  // generated: struct PwOp<k> { static float f(a, b, c); } per opcode

constexpr int kPwMaxDims = 8;
constexpr int kPwMaxValues = 512;
constexpr int64_t kPwBlock = 256;

template <class Op>
inline void pw_apply(float* d, const float* a, const float* b, const float* c, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) d[j] = Op::f(a[j], b[j], c[j]);
}

class PointwiseProgram {
 public:
  PointwiseProgram(py::array out, const std::vector<int64_t>& shape,
                   const std::vector<py::array>& operands,
                   const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& strides,
                   const FArr& immediates, const IArr& code, int64_t result);

  int64_t size() const { return size_; }
  const void* out_data() const { return out_base_; }
  // Floats of per-thread scratch one run() needs.
  int64_t scratch_floats() const { return int64_t(nvalues_ + 1) * kPwBlock; }
  // Fill the parts of `scratch` that are the same for every block: the zero row, the
  // immediates and the operands broadcast to every element (a scalar).
  void prepare(float* scratch) const;
  // Output elements [start, stop) (a flat range of the output); scratch: scratch_floats(),
  // already prepare()d when `prepared` (an epilogue running many short ranges).
  void run(int64_t start, int64_t stop, float* scratch, bool prepared = false) const;
  std::string describe() const;

 private:
  struct Operand {
    const char* base;
    bool u8;                  // bool / uint8 data, read as 0 or 1
    bool contiguous;          // read element for element with the output
    bool uniform;             // one element broadcast to all (every stride 0)
    int64_t stride[kPwMaxDims];
  };
  struct Ins {
    int32_t op, a, b, c;
  };
  void gather(const Operand& o, int64_t start, int64_t n, float* dst) const;

  py::array out_;
  std::vector<py::array> keep_;
  char* out_base_ = nullptr;
  bool out_u8_ = false;
  int nd_ = 0;
  int64_t shape_[kPwMaxDims] = {};
  int64_t size_ = 1;
  std::vector<Operand> ops_;
  std::vector<float> imms_;
  std::vector<Ins> code_;
  int32_t result_ = 0;
  int nvalues_ = 0;
};

inline void PointwiseProgram::gather(const Operand& o, int64_t start, int64_t n,
                                     float* dst) const {
  int64_t c[kPwMaxDims];
  int64_t rem = start, off = 0;
  for (int d = nd_ - 1; d >= 0; --d) {
    c[d] = rem % shape_[d];
    rem /= shape_[d];
    off += c[d] * o.stride[d];
  }
  const int last = nd_ - 1;
  const int64_t s = o.stride[last];
  int64_t j = 0;
  while (j < n) {
    const int64_t run = std::min(n - j, shape_[last] - c[last]);
    float* dj = dst + j;
    if (o.u8) {
      const uint8_t* p = reinterpret_cast<const uint8_t*>(o.base) + off;
      for (int64_t t = 0; t < run; ++t) dj[t] = p[t * s] ? 1.0f : 0.0f;
    } else {
      const float* p = reinterpret_cast<const float*>(o.base) + off;
      if (s == 0) {
        const float v = p[0];
        for (int64_t t = 0; t < run; ++t) dj[t] = v;
      } else if (s == 1) {
        std::memcpy(dj, p, size_t(run) * sizeof(float));
      } else {
        for (int64_t t = 0; t < run; ++t) dj[t] = p[t * s];
      }
    }
    j += run;
    off += run * s;
    c[last] += run;
    for (int d = last; d > 0 && c[d] == shape_[d]; --d) {  // carry into the outer dims
      off += o.stride[d - 1] - c[d] * o.stride[d];
      c[d] = 0;
      ++c[d - 1];
    }
  }
}

inline void PointwiseProgram::prepare(float* scratch) const {
  const int nops = int(ops_.size()), nimm = int(imms_.size());
  float* zero = scratch + int64_t(nvalues_) * kPwBlock;
  for (int64_t j = 0; j < kPwBlock; ++j) zero[j] = 0.0f;
  for (int k = 0; k < nimm; ++k) {
    float* slot = scratch + int64_t(nops + k) * kPwBlock;
    for (int64_t j = 0; j < kPwBlock; ++j) slot[j] = imms_[k];
  }
  for (int k = 0; k < nops; ++k) {
    const Operand& o = ops_[k];
    if (!o.uniform) continue;
    const float v = o.u8 ? (*reinterpret_cast<const uint8_t*>(o.base) ? 1.0f : 0.0f)
                         : *reinterpret_cast<const float*>(o.base);
    float* slot = scratch + int64_t(k) * kPwBlock;
    for (int64_t j = 0; j < kPwBlock; ++j) slot[j] = v;
  }
}

inline void PointwiseProgram::run(int64_t start, int64_t stop, float* scratch,
                                  bool prepared) const {
  const int nops = int(ops_.size()), nimm = int(imms_.size());
  const int first_ins = nops + nimm;
  if (!prepared) prepare(scratch);
  const float* zero = scratch + int64_t(nvalues_) * kPwBlock;
  const float* ptr[kPwMaxValues];
  for (int k = 0; k < nops + nimm; ++k) ptr[k] = scratch + int64_t(k) * kPwBlock;
  const int ncode = int(code_.size());
  for (int64_t b0 = start; b0 < stop; b0 += kPwBlock) {
    const int64_t n = std::min(kPwBlock, stop - b0);
    float* out_f = out_u8_ ? nullptr : reinterpret_cast<float*>(out_base_) + b0;
    for (int k = 0; k < nops; ++k) {
      const Operand& o = ops_[k];
      if (o.uniform) continue;  // (its slot was filled by prepare)
      if (o.contiguous && !o.u8) {
        ptr[k] = reinterpret_cast<const float*>(o.base) + b0;
      } else {
        float* slot = scratch + int64_t(k) * kPwBlock;
        gather(o, b0, n, slot);
        ptr[k] = slot;
      }
    }
    for (int i = 0; i < ncode; ++i) {
      const Ins& in = code_[i];
      const int v = first_ins + i;
      float* d = (out_f && v == result_ && i == ncode - 1) ? out_f
                                                           : scratch + int64_t(v) * kPwBlock;
      const float* a = in.a >= 0 ? ptr[in.a] : zero;
      const float* b = in.b >= 0 ? ptr[in.b] : zero;
      const float* c = in.c >= 0 ? ptr[in.c] : zero;
      switch (in.op) {
#define IPG_PW_CASE(ID, NAME, ARITY) \
  case ID:                           \
    pw_apply<PwOp##ID>(d, a, b, c, n); \
    break;
        IPUGRAPH_POINTWISE_TABLE(IPG_PW_CASE)
#undef IPG_PW_CASE
        default:
          break;  // (opcodes are validated at construction)
      }
      ptr[v] = d;
    }
    const float* r = ptr[result_];
    if (out_u8_) {
      uint8_t* o = reinterpret_cast<uint8_t*>(out_base_) + b0;
      for (int64_t j = 0; j < n; ++j) o[j] = r[j] != 0.0f;
    } else if (r != out_f) {
      std::memmove(out_f, r, size_t(n) * sizeof(float));
    }
  }
}

// The epilogue of a kernel that writes its output range by range (a conv's pixels, a gemm's
// rows, a reduction's boxes): collects the flat ranges a vertex has written, merging those that
// touch, and runs the program over them once about kFlush elements are pending, so that they are
// still in cache.  With no program it does nothing.
class EpilogueRuns {
 public:
  static constexpr int64_t kFlush = 16384;
  EpilogueRuns(const PointwiseProgram* p, float* scratch) : p_(p), s_(scratch) {
    if (p_) p_->prepare(s_);
  }
  ~EpilogueRuns() { flush(); }
  EpilogueRuns(const EpilogueRuns&) = delete;
  EpilogueRuns& operator=(const EpilogueRuns&) = delete;
  void add(int64_t a, int64_t b) {
    if (!p_ || b <= a) return;
    if (a != end_) {
      flush();
      start_ = a;
    }
    end_ = b;
    if (end_ - start_ >= kFlush) flush();
  }
  void flush() {
    if (p_ && end_ > start_) p_->run(start_, end_, s_, true);
    start_ = end_ = -1;
  }

 private:
  const PointwiseProgram* p_;
  float* s_;
  int64_t start_ = -1, end_ = -1;
};

// An epilogue must have been built over this very output array.
inline void check_epilogue(const char* fn, const PointwiseProgram* epi, const py::array& out) {
  if (epi && (epi->out_data() != out.data() || epi->size() != out.size()))
    fail(std::string(fn) + ": the epilogue program was built for another output than out " +
         shape_str(out));
}

}  // namespace ipugraph
