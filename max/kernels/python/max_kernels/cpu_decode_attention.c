// Decode attention (one query token a request) over a paged bfloat16 KV cache on an x86 CPU
// with AVX2 and FMA (`cpu_decode_attention.py`; built and loaded by `cpu_native.py`).
//
// The keys and values are read in place from the cache by their slots (no gather into a
// padded copy), the scores and the softmax are in float32, and the output is rounded once
// to bfloat16. Work items are (request, KV head): the query heads that share a KV head read
// each key and value once.

#include "cpu_native.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// out [b, hq, d] = softmax(scale q k^T) v for each request r's query q [hq, d] over its keys
// j in [lo[r], hi[r]] at cache slots kv_slots[r, j] (caches [slots, hkv, d], bfloat16; query
// head i reads KV head i / (hq / hkv)). d % 8 == 0. Returns 0, or -1 when a buffer could not
// be allocated.
int max_decode_attention(const uint16_t* q, const uint16_t* k_cache, const uint16_t* v_cache,
                         const int64_t* kv_slots, int64_t max_keys, const int32_t* lo, const int32_t* hi,
                         int64_t b, int64_t hq, int64_t hkv, int64_t d, float scale, uint16_t* out,
                         int num_threads) {
    const int64_t group = hq / hkv;
    int failed = 0;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t task = 0; task < b * hkv; task++) {
        const int64_t r = task / hkv, h = task % hkv;
        const int64_t first = lo[r], n = hi[r] - lo[r] + 1;
        // Each query head's scaled query, scores and output sums, in float32.
        float* buf = (float*)malloc(sizeof(float) * (size_t)(group * (2 * d + (n > 0 ? n : 1))));
        if (!buf) {
            failed = 1;
            continue;
        }
        float* qf = buf;
        float* acc = qf + group * d;
        float* scores = acc + group * d;
        for (int64_t g = 0; g < group; g++) {
            const uint16_t* qh = q + (r * hq + h * group + g) * d;
            for (int64_t c = 0; c < d; c++) qf[g * d + c] = bf16_to_f32(qh[c]) * scale;
        }
        memset(acc, 0, sizeof(float) * (size_t)(group * d));
        const int64_t* slots = kv_slots + r * max_keys + first;
        for (int64_t j = 0; j < n; j++) {
            const uint16_t* kj = k_cache + (slots[j] * hkv + h) * d;
            for (int64_t g = 0; g < group; g++) {
                __m256 dot = _mm256_setzero_ps();
                for (int64_t c = 0; c < d; c += 8) dot = _mm256_fmadd_ps(_mm256_loadu_ps(qf + g * d + c), bf16x8_to_f32(kj + c), dot);
                scores[g * n + j] = hsum(dot);
            }
        }
        for (int64_t g = 0; g < group; g++) {
            float* s = scores + g * n;
            float top = -INFINITY, total = 0.0f;
            for (int64_t j = 0; j < n; j++) top = s[j] > top ? s[j] : top;
            for (int64_t j = 0; j < n; j++) total += (s[j] = expf(s[j] - top));
            const float inv = n > 0 ? 1.0f / total : 0.0f;
            for (int64_t j = 0; j < n; j++) s[j] *= inv;
        }
        for (int64_t j = 0; j < n; j++) {
            const uint16_t* vj = v_cache + (slots[j] * hkv + h) * d;
            for (int64_t c = 0; c < d; c += 8) {
                const __m256 v = bf16x8_to_f32(vj + c);
                for (int64_t g = 0; g < group; g++) {
                    float* a = acc + g * d + c;
                    _mm256_storeu_ps(a, _mm256_fmadd_ps(_mm256_set1_ps(scores[g * n + j]), v, _mm256_loadu_ps(a)));
                }
            }
        }
        for (int64_t g = 0; g < group; g++) {
            uint16_t* o = out + (r * hq + h * group + g) * d;
            for (int64_t c = 0; c < d; c++) o[c] = f32_to_bf16(acc[g * d + c]);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}
