// Helpers shared by the C kernels that `cpu_native.py` builds (x86, AVX2 and FMA).
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch rounds
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline __m256 bf16x8_to_f32(const uint16_t* p) {  // 8 bfloat16 values as float32
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

// 8 float32 values rounded to bfloat16 as torch rounds (nearest even; a NaN stays one):
// the 8 bfloat16 bit patterns, and (`f32x8_round_bf16`) the rounded values as float32.
static inline __m256i f32x8_bf16_bits32(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(r, nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}

static inline __m256 f32x8_round_bf16(__m256 v) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(f32x8_bf16_bits32(v), 16));
}

static inline void store_bf16x8(uint16_t* p, __m256 v) {
    const __m256i b = f32x8_bf16_bits32(v);  // each value < 2^16: packing saturates nothing
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0xd8);
    _mm_storeu_si128((__m128i*)p, _mm256_castsi256_si128(packed));
}

static inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// A row of k values (k % 32 == 0; bfloat16 or float32) quantized to int16 per group of 32
// (d = max|x| / 32767, codes round-half-even(x / d)): the codes x16, each group's scale d,
// and (where sums and sums16 are given) the exact sum of its values and the sum of its codes
// (the int4 kernel's zero terms).
static inline void quantize_row_q16(const void* x, int bf16, int64_t k, int16_t* x16, float* d, float* sums, float* sums16) {
    float buf[32];
    for (int64_t g = 0; g < k / 32; g++) {
        for (int i = 0; i < 32; i++) {
            buf[i] = bf16 ? bf16_to_f32(((const uint16_t*)x)[32 * g + i]) : ((const float*)x)[32 * g + i];
        }
        float amax = 0.0f, sum = 0.0f;
        for (int i = 0; i < 32; i++) {
            float a = buf[i] < 0 ? -buf[i] : buf[i];
            amax = a > amax ? a : amax;
            sum += buf[i];
        }
        float dg = amax / 32767.0f;
        float id = dg != 0.0f ? 1.0f / dg : 0.0f;
        int32_t sum16 = 0;
        for (int i = 0; i < 32; i += 8) {
            __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(buf + i), _mm256_set1_ps(id)));
            int32_t t[8];
            _mm256_storeu_si256((__m256i*)t, q);
            for (int j = 0; j < 8; j++) x16[32 * g + i + j] = (int16_t)t[j], sum16 += t[j];
        }
        d[g] = dg;
        if (sums) sums[g] = sum;
        if (sums16) sums16[g] = (float)sum16;  // |sum16| <= 32 * 32767 < 2^24: exact
    }
}
