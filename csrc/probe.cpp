// Machine probes for the benchmarks' roofline: the FMA peak and the read bandwidth that the
// kernels can reach through this very build (same ISA, same OpenMP team).
#include "common.h"

#include <chrono>

namespace ipugraph {
namespace {

// GFLOP/s of independent FMA chains on every OpenMP thread for about `seconds`. 12 chains cover
// the FMA latency (4 cycles) x 2 ports of an AVX-512 or AVX2 core with room to spare.
double fma_peak(double seconds) {
  using clock = std::chrono::steady_clock;
  const int T = max_threads();
  std::vector<double> flops(size_t(T), 0.0);
  double elapsed = 0.0;
  {
    py::gil_scoped_release nogil;
    const auto t0 = clock::now();
#pragma omp parallel
    {
      const int t = thread_id();
      double done = 0.0;
#if defined(IPUGRAPH_AVX512)
      constexpr int kLanes = 16;
      __m512 a[12];
      for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(1.0f + 1e-7f * float(i));
      const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
#elif defined(IPUGRAPH_AVX2)
      constexpr int kLanes = 8;
      __m256 a[12];
      for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1.0f + 1e-7f * float(i));
      const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#else
      constexpr int kLanes = 1;
      float a[12];
      for (int i = 0; i < 12; ++i) a[i] = 1.0f + 1e-7f * float(i);
      const float m = 0.999999f, c = 1e-7f;
#endif
      constexpr int kInner = 1 << 14;
      while (std::chrono::duration<double>(clock::now() - t0).count() < seconds) {
        for (int it = 0; it < kInner; ++it)
          for (int i = 0; i < 12; ++i) {
#if defined(IPUGRAPH_AVX512)
            a[i] = _mm512_fmadd_ps(a[i], m, c);
#elif defined(IPUGRAPH_AVX2)
            a[i] = _mm256_fmadd_ps(a[i], m, c);
#else
            a[i] = a[i] * m + c;
#endif
          }
        done += 2.0 * kLanes * 12.0 * kInner;
      }
      float sink = 0.f;
      for (int i = 0; i < 12; ++i) {
#if defined(IPUGRAPH_AVX512)
        alignas(64) float v[16];
        _mm512_store_ps(v, a[i]);
        for (float f : v) sink += f;
#elif defined(IPUGRAPH_AVX2)
        alignas(32) float v[8];
        _mm256_store_ps(v, a[i]);
        for (float f : v) sink += f;
#else
        sink += a[i];
#endif
      }
      flops[size_t(t)] = done + (sink == 12345.f ? 1.0 : 0.0);  // keeps the chains live
    }
    elapsed = std::chrono::duration<double>(clock::now() - t0).count();
  }
  double total = 0.0;
  for (double f : flops) total += f;
  return total / elapsed / 1e9;
}

// GB/s reading `a` (float32) `reps` times, the array split evenly over the OpenMP threads.
double read_bandwidth(const FArr& a, int64_t reps) {
  using clock = std::chrono::steady_clock;
  if (reps < 1) fail("read_bandwidth: reps must be >= 1");
  const float* p = a.data();
  const int64_t n = a.size();
  double sink = 0.0;
  double elapsed = 0.0;
  {
    py::gil_scoped_release nogil;
    const auto t0 = clock::now();
    for (int64_t r = 0; r < reps; ++r) {
      double s = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : s)
      for (int64_t i = 0; i < n; i += 1024) {  // 64 cache lines per step, summed in vectors
        float part = 0.f;
        const int64_t e = std::min<int64_t>(i + 1024, n);
#pragma omp simd reduction(+ : part)
        for (int64_t j = i; j < e; ++j) part += p[j];
        s += double(part);
      }
      sink += s;
    }
    elapsed = std::chrono::duration<double>(clock::now() - t0).count();
  }
  (void)sink;
  return double(n) * 4.0 * double(reps) / elapsed / 1e9;
}

}  // namespace

void register_probe(py::module& m) {
  m.def("fma_peak", &fma_peak, py::arg("seconds") = 0.5,
        "GFLOP/s of 12 independent FMA chains per OpenMP thread, all threads, for ~seconds.");
  m.def("read_bandwidth", &read_bandwidth, py::arg("a"), py::arg("reps") = 4,
        "GB/s reading float32 array a reps times, split over the OpenMP threads.");
}

}  // namespace ipugraph
