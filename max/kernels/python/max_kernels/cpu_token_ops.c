// The small per-token ops of a bfloat16 step on an x86 CPU with AVX2 and FMA
// (`cpu_token_ops.py`; built and loaded by `cpu_native.py`): the residual add with RMSNorm,
// the rotary embedding of q and k with the store of k and v into the paged cache, and the
// SwiGLU activation silu(gate) * up.
//
// Each rounds to bfloat16 where torch's reference ops do (`normalization.rms_norm_reference`,
// `rotary_kv.rope_and_write_kv_reference`): a product of two bfloat16 values is exact in
// float32, so rounding it once gives torch's bits. The rope is bit for bit the reference;
// the norm's mean of squares is summed in another order than torch's, and silu's exp is
// another polynomial than torch's: either can move the last bit of a float32 value and,
// rarely, one bfloat16 rounding of an output.

#include "cpu_native.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

// Rows of d values (d % 8 == 0): s = x + residual rounded to bfloat16 (no residual: s = x),
// written to sum_out when given; y = w * bf16(s / rms(s)), rms(s) = sqrt(mean(s^2) + eps)
// taken in float32.
void max_add_rms_norm(const uint16_t* x, int64_t x_stride, const uint16_t* residual, const uint16_t* w,
                      float eps, int64_t rows, int64_t d, uint16_t* y, uint16_t* sum_out, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (rows >= 16)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t* xr = x + r * x_stride;
        const uint16_t* src = xr;  // where the pass below reads s from
        __m256 sq0 = _mm256_setzero_ps(), sq1 = _mm256_setzero_ps();
        int64_t i = 0;
        if (residual) {
            const uint16_t* rr = residual + r * d;
            uint16_t* so = sum_out + r * d;
            for (; i < d; i += 8) {
                const __m256 s = f32x8_round_bf16(_mm256_add_ps(bf16x8_to_f32(xr + i), bf16x8_to_f32(rr + i)));
                store_bf16x8(so + i, s);
                if ((i / 8) & 1) sq1 = _mm256_fmadd_ps(s, s, sq1);
                else sq0 = _mm256_fmadd_ps(s, s, sq0);
            }
            src = so;
        } else {
            for (; i < d; i += 8) {
                const __m256 s = bf16x8_to_f32(xr + i);
                if ((i / 8) & 1) sq1 = _mm256_fmadd_ps(s, s, sq1);
                else sq0 = _mm256_fmadd_ps(s, s, sq0);
            }
        }
        const float inv = 1.0f / sqrtf(hsum(_mm256_add_ps(sq0, sq1)) / (float)d + eps);
        const __m256 vinv = _mm256_set1_ps(inv);
        uint16_t* yr = y + r * d;
        for (i = 0; i < d; i += 8) {
            const __m256 t = f32x8_round_bf16(_mm256_mul_ps(bf16x8_to_f32(src + i), vinv));
            store_bf16x8(yr + i, _mm256_mul_ps(bf16x8_to_f32(w + i), t));
        }
    }
}

// One head of n values rotated into out: channel i < r takes x[i] c[i] + x[partner] s[i]
// (partner: i + r/2 in the first half, i - r/2 in the second; s's first half negated), each
// product and the sum rounded to bfloat16; channels i >= r pass through.
static inline void rotate_head(const uint16_t* x, const uint16_t* c, const uint16_t* s, int64_t r, int64_t n, uint16_t* out) {
    const int64_t half = r / 2;
    int64_t i = 0;
    if (half % 8 == 0) {
        for (; i < r; i += 8) {
            const int64_t p = i < half ? i + half : i - half;
            const __m256 a = f32x8_round_bf16(_mm256_mul_ps(bf16x8_to_f32(x + i), bf16x8_to_f32(c + i)));
            const __m256 b = f32x8_round_bf16(_mm256_mul_ps(bf16x8_to_f32(x + p), bf16x8_to_f32(s + i)));
            store_bf16x8(out + i, _mm256_add_ps(a, b));
        }
    } else {
        for (; i < r; i++) {
            const int64_t p = i < half ? i + half : i - half;
            const float a = round_bf16(bf16_to_f32(x[i]) * bf16_to_f32(c[i]));
            const float b = round_bf16(bf16_to_f32(x[p]) * bf16_to_f32(s[i]));
            out[i] = f32_to_bf16(a + b);
        }
    }
    for (; i < n; i++) out[i] = x[i];
}

// For each of t tokens: q's hq heads rotated into q_out [t, hq, d]; k's hkv heads rotated
// and stored with v's at the token's cache slot (caches [slots, hkv, d]; a slot < 0 is a
// padding row: nothing stored). q, k and v are rows of stride q_stride / k_stride / v_stride
// (views of the fused qkv projection), heads d apart; c and s are each token's rows [t, r]
// of the cos and signed sin tables in bfloat16.
void max_rope_write_kv(const uint16_t* q, int64_t q_stride, const uint16_t* k, int64_t k_stride, const uint16_t* v,
                       int64_t v_stride, int64_t t, int64_t hq, int64_t hkv, int64_t d, const uint16_t* c,
                       const uint16_t* s, int64_t r, const int64_t* slots, uint16_t* k_cache, uint16_t* v_cache,
                       uint16_t* q_out, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (t >= 16)
    for (int64_t j = 0; j < t; j++) {
        const uint16_t* cj = c + j * r;
        const uint16_t* sj = s + j * r;
        for (int64_t h = 0; h < hq; h++) rotate_head(q + j * q_stride + h * d, cj, sj, r, d, q_out + (j * hq + h) * d);
        const int64_t slot = slots[j];
        if (slot < 0) continue;
        uint16_t* kc = k_cache + slot * hkv * d;
        uint16_t* vc = v_cache + slot * hkv * d;
        for (int64_t h = 0; h < hkv; h++) {
            rotate_head(k + j * k_stride + h * d, cj, sj, r, d, kc + h * d);
            const uint16_t* vh = v + j * v_stride + h * d;
            for (int64_t i = 0; i < d; i++) vc[h * d + i] = vh[i];
        }
    }
}

// e^x for 8 float32 values (Cephes' expf: a range reduction by ln 2 and a degree-5
// polynomial; within 2 ulp of float32 over [-87, 88]; infinity above, ~0 below).
static inline __m256 exp8(__m256 x) {
    const __m256 overflow = _mm256_cmp_ps(x, _mm256_set1_ps(88.3762626647949f), _CMP_GT_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-88.3762626647949f));
    const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_blendv_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), _mm256_set1_ps(INFINITY), overflow);
}

// out [t, inter] = bf16(bf16(silu(gate)) * up) for rows x = [gate | up] of stride x_stride
// (inter % 8 == 0), silu(g) = g / (1 + e^-g) in float32, as torch's silu then its multiply.
void max_silu_and_mul(const uint16_t* x, int64_t x_stride, int64_t t, int64_t inter, uint16_t* out, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (t >= 16)
    for (int64_t j = 0; j < t; j++) {
        const uint16_t* gate = x + j * x_stride;
        const uint16_t* up = gate + inter;
        for (int64_t i = 0; i < inter; i += 8) {
            const __m256 g = bf16x8_to_f32(gate + i);
            const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            const __m256 act = f32x8_round_bf16(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
            store_bf16x8(out + j * inter + i, _mm256_mul_ps(act, bf16x8_to_f32(up + i)));
        }
    }
}
