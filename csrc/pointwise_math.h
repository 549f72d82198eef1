// Branch-free float math for the pointwise evaluator and the loss codelets.
//
// libm's expf / logf / tanhf do not vectorise without -ffast-math (which would also drop NaN
// semantics), so these are written as selects and polynomials that GCC vectorises inside
// `#pragma omp simd` loops: Cephes' single-precision exp, log and tanh (S. L. Moshier, Cephes
// Math Library, the routines expf.c, logf.c, tanhf.c; ~1-2 ulp over their ranges). NaN
// propagates through every function; infinities and zeros follow C99 Annex F.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace ipugraph {

inline float ipg_bits_to_float(uint32_t b) { return __builtin_bit_cast(float, b); }
inline uint32_t ipg_float_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }

// The shared core of ipg_exp and exp_neg: for x already clamped, n = round(x / ln2) (fx, as
// a float) and e^r with r = x - n ln2 (Cody-Waite two-part ln2, Cephes' degree-6 polynomial).
inline float ipg_exp_reduced(float x, float* fx_out) {
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding and subtracting rounds to an int
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
  *fx_out = fx;
  return y * z + r + 1.0f;
}

// e^x.  x = n ln2 + r (Cody-Waite, |r| <= ln2 / 2), e^r by Cephes' degree-6 polynomial, 2^n
// applied as two factors 2^(n/2) 2^(n - n/2) so that results down to the subnormals are exact
// scalings.  Above ln(FLT_MAX) the result is inf, below ln(2^-150) zero.
inline float ipg_exp(float x) {
  constexpr float kHi = 88.72283935546875f, kLo = -103.972084045410f;
  float xc = x > kHi ? kHi : x;         // (NaN compares false and passes through)
  xc = xc < kLo ? kLo : xc;
  float fx;
  const float y = ipg_exp_reduced(xc, &fx);
  const int32_t n = static_cast<int32_t>(fx == fx ? fx : 0.f);  // in [-150, 128]
  const int32_t n1 = n / 2, n2 = n - n1;                          // each in [-75, 64]
  const float s1 = ipg_bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = ipg_bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
  const float res = y * s1 * s2;
  return x > kHi ? std::numeric_limits<float>::infinity() : res;
}

// e^x for x <= 0 (the stable softmax and log-sum-exp): the same polynomial, one scale factor.
// Arguments below -87.3 give ~1e-38 or less, never a denormal trap; NaN propagates.
inline float exp_neg(float x) {
  x = x < -87.33654f ? -87.33654f : x;
  x = x > 88.37626f ? 88.37626f : x;
  float fx;
  const float y = ipg_exp_reduced(x, &fx);
  const int32_t e = static_cast<int32_t>(fx == fx ? fx : 0.f) + 127;
  const uint32_t bits = static_cast<uint32_t>(e < 1 ? 1 : (e > 254 ? 254 : e)) << 23;
  return y * ipg_bits_to_float(bits);
}

// ln x.  x = m 2^e with m in [sqrt(1/2), sqrt(2)); ln(1 + f) by Cephes' polynomial; subnormal
// inputs are scaled by 2^23 first.  ln 0 = -inf, ln of a negative = NaN, ln inf = inf.
inline float ipg_log(float x) {
  constexpr float kMinNormal = 1.17549435e-38f;
  const bool sub = x < kMinNormal;
  const float xs = sub ? x * 8388608.0f : x;
  const uint32_t bits = ipg_float_to_bits(xs);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xffu) - 126;
  float m = ipg_bits_to_float((bits & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1 : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  e = sub ? e - 23 : e;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  float res = m + y + fe * 0.693359375f;
  res = x == std::numeric_limits<float>::infinity() ? x : res;
  res = x == 0.0f ? -std::numeric_limits<float>::infinity() : res;
  res = x < 0.0f ? std::numeric_limits<float>::quiet_NaN() : res;
  return x != x ? x : res;
}

// tanh x: Cephes' odd polynomial for |x| < 0.625, 1 - 2 / (e^2|x| + 1) with x's sign beyond.
inline float ipg_tanh(float x) {
  const float ax = std::fabs(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float big = 1.0f - 2.0f / (ipg_exp(ax + ax) + 1.0f);
  const float res = ax < 0.625f ? small : std::copysign(big, x);
  return x != x ? x : res;
}

// a^b as torch.pow: e^(b ln|a|), negative a only for integer b (the sign by its parity, NaN
// otherwise); a^0 = 1 and 1^b = 1 even for NaN.  The relative error grows with |b ln a| (about
// |b ln a| * 2^-23 on top of exp's and log's).
inline float ipg_pow(float a, float b) {
  float r = ipg_exp(b * ipg_log(std::fabs(a)));
  const bool integer = b == std::trunc(b);
  const float half = b * 0.5f;
  const bool odd = integer && half != std::trunc(half);
  // A negative base (the sign bit: -0 counts, for the sign of an odd power) keeps the result
  // for an integer power, its sign by the parity; any other power of a number below zero is NaN.
  const float neg = integer ? (odd ? -r : r)
                            : (a == 0.0f ? r : std::numeric_limits<float>::quiet_NaN());
  r = std::signbit(a) ? neg : r;
  r = b == 0.0f ? 1.0f : r;
  return a == 1.0f ? 1.0f : r;
}

}  // namespace ipugraph
