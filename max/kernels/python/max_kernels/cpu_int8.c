// int8 weight in groups of 32 times bfloat16 / float32 rows on an x86 CPU with AVX2 and FMA
// (`cpu_int8.py`; built and loaded by `cpu_native.py`).
//
// Weight layout: codes int8 [n, k] and one float32 scale per output feature and group of 32
// input features [n, k / 32]: w = s q, q in [-127, 127] (GGUF's Q8_0 block, its scale kept
// exactly). The rows are quantized to int16 per group of 32 as the int4 kernel's are
// (`quantize_row_q16`), so each group's dot product is an integer one (vpmaddwd):
//     sum_k w x  ~=  sum_g s_g d_g sum_{k in g} q x16.
// `int8_q16_reference` in cpu_int8.py computes the same in torch.

#include "cpu_native.h"

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

// One group's integer dot product of its 32 codes with row x16, as 8 partial sums in floats.
static inline __m256 group_dot8(__m256i w_lo, __m256i w_hi, const int16_t* x16) {
    const __m256i a = _mm256_madd_epi16(w_lo, _mm256_loadu_si256((const __m256i*)x16));
    const __m256i b = _mm256_madd_epi16(w_hi, _mm256_loadu_si256((const __m256i*)(x16 + 16)));
    return _mm256_cvtepi32_ps(_mm256_add_epi32(a, b));
}

// Output feature n for MB rows (1 to 4) from row m0: each group's codes widened once.
static inline __attribute__((always_inline)) void feature_rows(
    int MB, int64_t n, int64_t m0, int64_t k, const int8_t* codes, const float* scales, const int16_t* x16,
    const float* d, float* out, int64_t ldo) {
    const int64_t groups = k / 32;
    const int8_t* q = codes + n * k;
    const float* s = scales + n * groups;
    __m256 acc[4][2];
    for (int mi = 0; mi < 4; mi++) acc[mi][0] = acc[mi][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const __m256i lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(q + 32 * g)));
        const __m256i hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(q + 32 * g + 16)));
        for (int mi = 0; mi < MB; mi++) {
            const int64_t row = (m0 + mi) * groups + g;
            // Two accumulators (even and odd groups): one FMA chain would wait on itself.
            acc[mi][g & 1] = _mm256_fmadd_ps(_mm256_set1_ps(s[g] * d[row]), group_dot8(lo, hi, x16 + row * 32), acc[mi][g & 1]);
        }
    }
    for (int mi = 0; mi < MB; mi++) out[(m0 + mi) * ldo + n] = hsum(_mm256_add_ps(acc[mi][0], acc[mi][1]));
}

// y [m, n] = x [m, k] @ W.T for the int8 weight W [n, k] (layout above); k % 32 == 0.
// x and y are bfloat16 (bf16 = 1) or float32 rows, contiguous. Returns 0, or -1 when a
// buffer could not be allocated.
int max_int8_matmul(const void* x, int bf16, int64_t m, int64_t k, const int8_t* codes, const float* scales,
                    int64_t n, void* y, int num_threads) {
    const int64_t groups = k / 32;
    int16_t* x16 = (int16_t*)malloc(sizeof(int16_t) * (size_t)(m * k));
    float* d = (float*)malloc(sizeof(float) * (size_t)(m * groups));
    float* out = bf16 ? (float*)malloc(sizeof(float) * (size_t)(m * n)) : (float*)y;
    if (!x16 || !d || !out) {
        free(x16), free(d);
        if (bf16) free(out);
        return -1;
    }
    const size_t row_bytes = (size_t)k * (bf16 ? 2 : 4);
    for (int64_t r = 0; r < m; r++) {
        quantize_row_q16((const char*)x + r * row_bytes, bf16, k, x16 + r * k, d + r * groups, NULL, NULL);
    }
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t j = 0; j < n; j++) {
        for (int64_t m0 = 0; m0 < m; m0 += 4) {
            switch (m - m0 >= 4 ? 4 : m - m0) {
                case 4: feature_rows(4, j, m0, k, codes, scales, x16, d, out, n); break;
                case 3: feature_rows(3, j, m0, k, codes, scales, x16, d, out, n); break;
                case 2: feature_rows(2, j, m0, k, codes, scales, x16, d, out, n); break;
                default: feature_rows(1, j, m0, k, codes, scales, x16, d, out, n); break;
            }
        }
    }
    if (bf16) {
        uint16_t* yo = (uint16_t*)y;
        for (int64_t i = 0; i < m * n; i++) yo[i] = f32_to_bf16(out[i]);
        free(out);
    }
    free(x16), free(d);
    return 0;
}
