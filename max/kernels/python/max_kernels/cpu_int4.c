// int4 weight times bfloat16 / float32 rows on an x86 CPU with AVX2 and FMA (`cpu_int4.py`).
//
// Built at first use by `cpu_int4.py` (cc -O3 -mavx2 -mfma -fopenmp -shared) and called
// through ctypes; torch's own OpenMP runtime (libgomp.so.1, loaded with torch) runs the
// parallel loop, so the product shares torch's threads instead of starting a second pool.
//
// Weight layout: for each output feature n and group g of 32 input features, 16 bytes of
// codes (byte j holds feature 32g + j in its low nibble and 32g + 16 + j in its high one)
// and the group's float32 scale s and zero z (a feature's G scales, then its G zeros):
// w = s * (q - 8) + z.
//
// The rows are quantized to int16 per group of 32 (d = max|x| / 32767, x16 =
// round-half-even(x / d): a relative error near 1e-5, under bfloat16's own rounding; int8
// rows, as llama.cpp's Q8_0, doubled SmolLM2's KL against transformers and failed its
// verification), so each group's dot product is an integer one (vpmaddwd) and
//     sum_k w x  ~=  s d sum_k (q - 8) x16  +  z sum_k x        (per group; sum_k x exact)
// with sum_k (q - 8) x16 = sum_k q x16 - 8 sum_k x16: the codes enter unsigned, and the
// offset's term, exact in integers, joins the zero's term, computed once per feature and row.
// `int4_q16_reference` in cpu_int4.py computes the same in torch.

#include "cpu_native.h"

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// A group's 32 codes as int16: features 0-15 (the low nibbles) and 16-31 (the high ones).
typedef struct {
    __m256i lo, hi;
} codes16;

static inline codes16 group_codes(const uint8_t* q) {
    const __m128i v = _mm_loadu_si128((const __m128i*)q);
    const __m128i low = _mm_set1_epi8(0x0f);
    codes16 c = {_mm256_cvtepu8_epi16(_mm_and_si128(v, low)), _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), low))};
    return c;
}

// One group's integer dot product of its codes with row x16, as 8 partial sums in floats.
static inline __m256 group_dot(codes16 c, const int16_t* x16) {
    const __m256i a = _mm256_madd_epi16(c.lo, _mm256_loadu_si256((const __m256i*)x16));
    const __m256i b = _mm256_madd_epi16(c.hi, _mm256_loadu_si256((const __m256i*)(x16 + 16)));
    return _mm256_cvtepi32_ps(_mm256_add_epi32(a, b));
}

// Output feature n for MB rows (1 to 4) starting at row m0: codes decoded once per group,
// each row's group scales s d and its term sum_g (z sum(x) - 8 s d sum(x16)) computed first,
// 8 groups a step.
static inline __attribute__((always_inline)) void feature_rows(
    int MB, int64_t n, int64_t m0, int64_t k, const uint8_t* codes, const float* sz,
    const int16_t* x16, const float* d, const float* sums, const float* sums16, float* out, int64_t ldo, float* sd) {
    const int64_t groups = k / 32;
    const uint8_t* q = codes + n * (k / 2);
    const float* sc = sz + n * groups * 2;  // the feature's G scales, then its G zeros
    const float* zr = sc + groups;
    float corr[4] = {0, 0, 0, 0};
    for (int mi = 0; mi < MB; mi++) {
        const int64_t row = (m0 + mi) * groups;
        __m256 zsum = _mm256_setzero_ps();
        int64_t g = 0;
        for (; g + 8 <= groups; g += 8) {
            const __m256 sdg = _mm256_mul_ps(_mm256_loadu_ps(sc + g), _mm256_loadu_ps(d + row + g));
            _mm256_storeu_ps(sd + mi * groups + g, sdg);
            zsum = _mm256_fmadd_ps(_mm256_loadu_ps(zr + g), _mm256_loadu_ps(sums + row + g), zsum);
            zsum = _mm256_fnmadd_ps(_mm256_mul_ps(sdg, _mm256_set1_ps(8.0f)), _mm256_loadu_ps(sums16 + row + g), zsum);
        }
        corr[mi] = hsum(zsum);
        for (; g < groups; g++) {
            sd[mi * groups + g] = sc[g] * d[row + g];
            corr[mi] += zr[g] * sums[row + g] - 8.0f * sd[mi * groups + g] * sums16[row + g];
        }
    }
    // Two accumulators per row (even and odd groups): one FMA chain would wait on itself.
    __m256 acc[4][2];
    for (int mi = 0; mi < 4; mi++) acc[mi][0] = acc[mi][1] = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= groups; g += 2) {
        const codes16 w0 = group_codes(q + 16 * g), w1 = group_codes(q + 16 * g + 16);
        for (int mi = 0; mi < MB; mi++) {
            const int16_t* xr = x16 + ((m0 + mi) * groups + g) * 32;
            acc[mi][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(sd + mi * groups + g), group_dot(w0, xr), acc[mi][0]);
            acc[mi][1] = _mm256_fmadd_ps(_mm256_broadcast_ss(sd + mi * groups + g + 1), group_dot(w1, xr + 32), acc[mi][1]);
        }
    }
    if (g < groups) {
        const codes16 w0 = group_codes(q + 16 * g);
        for (int mi = 0; mi < MB; mi++) {
            const int16_t* xr = x16 + ((m0 + mi) * groups + g) * 32;
            acc[mi][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(sd + mi * groups + g), group_dot(w0, xr), acc[mi][0]);
        }
    }
    for (int mi = 0; mi < MB; mi++) out[(m0 + mi) * ldo + n] = hsum(_mm256_add_ps(acc[mi][0], acc[mi][1])) + corr[mi];
}

// y [m, n] = x [m, k] @ W.T for the int4 weight W [n, k] (layout above); k % 32 == 0.
// x and y are bfloat16 (bf16 = 1) or float32 rows, contiguous. Returns 0, or -1 when a
// buffer could not be allocated.
int max_int4_matmul(const void* x, int bf16, int64_t m, int64_t k, const uint8_t* codes,
                    const float* sz, int64_t n, void* y, int num_threads) {
    const int64_t groups = k / 32;
    int16_t* x16 = (int16_t*)malloc(sizeof(int16_t) * (size_t)(m * k));
    float* d = (float*)malloc(sizeof(float) * (size_t)(m * groups));
    float* sums = (float*)malloc(sizeof(float) * (size_t)(m * groups));
    float* sums16 = (float*)malloc(sizeof(float) * (size_t)(m * groups));
    float* out = bf16 ? (float*)malloc(sizeof(float) * (size_t)(m * n)) : (float*)y;
    if (!x16 || !d || !sums || !sums16 || !out) {
        free(x16), free(d), free(sums), free(sums16);
        if (bf16) free(out);
        return -1;
    }
    const size_t row_bytes = (size_t)k * (bf16 ? 2 : 4);
    int failed = 0;
    for (int64_t r = 0; r < m; r++) {
        quantize_row_q16((const char*)x + r * row_bytes, bf16, k, x16 + r * k, d + r * groups, sums + r * groups, sums16 + r * groups);
    }
#pragma omp parallel num_threads(num_threads)
    {
        float* sd = (float*)malloc(sizeof(float) * 4 * (size_t)groups);  // a row block's s d
#pragma omp for schedule(static)
        for (int64_t j = 0; j < n; j++) {
            for (int64_t m0 = 0; m0 < m && sd; m0 += 4) {
                switch (m - m0 >= 4 ? 4 : m - m0) {
                    case 4: feature_rows(4, j, m0, k, codes, sz, x16, d, sums, sums16, out, n, sd); break;
                    case 3: feature_rows(3, j, m0, k, codes, sz, x16, d, sums, sums16, out, n, sd); break;
                    case 2: feature_rows(2, j, m0, k, codes, sz, x16, d, sums, sums16, out, n, sd); break;
                    default: feature_rows(1, j, m0, k, codes, sz, x16, d, sums, sums16, out, n, sd); break;
                }
            }
        }
        if (!sd) failed = 1;
        free(sd);
    }
    if (bf16) {
        uint16_t* yo = (uint16_t*)y;
        for (int64_t i = 0; i < m * n; i++) yo[i] = f32_to_bf16(out[i]);
        free(out);
    }
    free(x16), free(d), free(sums), free(sums16);
    return failed ? -1 : 0;
}
