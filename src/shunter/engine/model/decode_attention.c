/* Decode attention straight from the paged KV cache, bfloat16 in, float32 inside.
 *
 * Built and loaded by native.py (a plain shared library called through ctypes: no PyTorch
 * headers, a sub-second compile). One query token per request; the query heads that share a
 * KV head are computed together, so each key and value row is read once per KV head. The
 * rounding follows PyTorch's fused CPU kernel (the one the engine falls back to): scores and
 * the softmax in float32, the exponentials rounded to bfloat16 before they weight the values,
 * their float32 sum dividing the float32 accumulator, the output rounded to bfloat16 once.
 *
 * Layouts (element strides):
 *   q        [num_tokens, num_heads, head_dim], token stride q_stride, heads contiguous
 *   k/v      [num_blocks, num_kv_heads, block_size, head_dim], contiguous
 *   tables   [num_tokens, max_blocks] int32 block ids; lengths [num_tokens] int32 (keys to read)
 *   out      [num_tokens, num_heads, head_dim], contiguous
 * Requests [start, end) are computed, so callers can split a batch across threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define SHUNTER_AVX512_BF16 1
#else
#define SHUNTER_AVX512_BF16 0
#endif

#define MAX_GROUP 16
#define MAX_HEAD_DIM 256

static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as PyTorch does */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The variant this build compiled: 1 for the AVX-512 BF16 path, 0 for portable C. */
int shunter_decode_attention_isa(void) { return SHUNTER_AVX512_BF16; }

#if SHUNTER_AVX512_BF16
/* out lane i = the sum of v[i]'s 16 lanes (a transposing add tree: 30 shuffles and 15 adds
 * for 16 sums instead of 16 separate reductions). */
static inline __m512 sum16(const __m512 *v) {
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) /* per 128-bit lane: (v2i[0]+v2i[2], v2i+1[0]+.., ..) */
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) /* per 128-bit lane: one lane-sum of each of 4 vectors */
        b[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0xee));
    for (int i = 0; i < 2; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88),
                         _mm512_shuffle_f32x4(c[0], c[1], 0xdd)); /* lane i: v[i]'s sum */
}
#endif

#if SHUNTER_AVX512_BF16
/* e^x for x <= 0, 16 lanes: Cephes' expf polynomial (about 1 ulp) scaled by 2^n */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
#endif

/* row[j] = bfloat16(e^(row[j] - max)) for j < n; returns the float32 sum of the unrounded */
static inline float exp_round_sum(float *row, int32_t n, float max) {
    int32_t j = 0;
    float sum = 0.0f;
#if SHUNTER_AVX512_BF16
    __m512 vsum = _mm512_setzero_ps();
    const __m512 vmax = _mm512_set1_ps(max);
    for (; j + 16 <= n; j += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j), vmax));
        vsum = _mm512_add_ps(vsum, e);
        /* round to bfloat16 and back (exact, no NaN here): the hardware conversion */
        __m256i h = (__m256i)_mm512_cvtneps_pbh(e);
        _mm512_storeu_ps(row + j,
                         _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
    sum = _mm512_reduce_add_ps(vsum);
#endif
    for (; j < n; j++) {
        float e = expf(row[j] - max);
        sum += e;
        row[j] = bf16_to_f32(f32_to_bf16(e));
    }
    return sum;
}

static inline void prefetch_rows(const uint16_t *p, int64_t elements) {
    for (int64_t i = 0; i < elements; i += 32) __builtin_prefetch(p + i, 0, 3); /* 64-byte lines */
}

static inline float dot_bf16(const uint16_t *a, const uint16_t *b, int n) {
#if SHUNTER_AVX512_BF16
    if ((n & 31) == 0) {
        __m512 acc = _mm512_setzero_ps();
        for (int d = 0; d < n; d += 32) {
            __m512bh va = (__m512bh)_mm512_loadu_si512((const void *)(a + d));
            __m512bh vb = (__m512bh)_mm512_loadu_si512((const void *)(b + d));
            acc = _mm512_dpbf16_ps(acc, va, vb);
        }
        return _mm512_reduce_add_ps(acc);
    }
#endif
    float acc = 0.0f;
    for (int d = 0; d < n; d++) acc += bf16_to_f32(a[d]) * bf16_to_f32(b[d]);
    return acc;
}

/* scores[g * stride + j] = scale * q_g . key_j for the n keys at `keys` (rows head_dim apart) */
static inline void qk_rows(const uint16_t *q, int group, const uint16_t *keys, int n,
                           int head_dim, float scale, float *scores, int64_t stride) {
    int j = 0;
#if SHUNTER_AVX512_BF16
    if ((head_dim & 31) == 0) {
        const __m512 vscale = _mm512_set1_ps(scale);
        for (; j + 16 <= n; j += 16) {
            for (int g = 0; g < group; g++) {
                __m512 part[16];
                for (int t = 0; t < 16; t++) {
                    const uint16_t *key = keys + (int64_t)(j + t) * head_dim;
                    __m512 acc = _mm512_setzero_ps();
                    for (int d = 0; d < head_dim; d += 32)
                        acc = _mm512_dpbf16_ps(
                            acc, (__m512bh)_mm512_loadu_si512((const void *)(q + g * head_dim + d)),
                            (__m512bh)_mm512_loadu_si512((const void *)(key + d)));
                    part[t] = acc;
                }
                _mm512_storeu_ps(scores + g * stride + j, _mm512_mul_ps(sum16(part), vscale));
            }
        }
    }
#endif
    for (; j < n; j++)
        for (int g = 0; g < group; g++)
            scores[g * stride + j] = dot_bf16(q + g * head_dim, keys + (int64_t)j * head_dim,
                                              head_dim) * scale;
}

/* acc[g][d] += w[g * stride + j] * value_j[d] over the n values at `values` (the weights are
 * bfloat16 values already). The AVX-512 path takes values two rows at a time: interleaved, a
 * pair of rows and a pair of weights make one bf16 dot-product instruction per 16 lanes; the
 * interleave leaves the lanes in a fixed order of d that `acc` keeps (see `unshuffle`). */
static inline void pv_rows(float acc[][MAX_HEAD_DIM], int group, const float *w, int64_t stride,
                           const uint16_t *values, int n, int head_dim) {
#if SHUNTER_AVX512_BF16
    if (head_dim == 64 && group <= 8) {
        __m512 sums[8][4];
        for (int g = 0; g < group; g++)
            for (int c = 0; c < 4; c++) sums[g][c] = _mm512_loadu_ps(acc[g] + 16 * c);
        for (int j = 0; j < n; j += 2) {
            const uint16_t *r0 = values + (int64_t)j * 64;
            const int has_second = j + 1 < n;
            __m512i a0 = _mm512_loadu_si512((const void *)r0);
            __m512i a1 = _mm512_loadu_si512((const void *)(r0 + 32));
            __m512i b0 = has_second ? _mm512_loadu_si512((const void *)(r0 + 64))
                                    : _mm512_setzero_si512();
            __m512i b1 = has_second ? _mm512_loadu_si512((const void *)(r0 + 96))
                                    : _mm512_setzero_si512();
            __m512bh x[4] = {(__m512bh)_mm512_unpacklo_epi16(a0, b0),
                             (__m512bh)_mm512_unpackhi_epi16(a0, b0),
                             (__m512bh)_mm512_unpacklo_epi16(a1, b1),
                             (__m512bh)_mm512_unpackhi_epi16(a1, b1)};
            for (int g = 0; g < group; g++) {
                const float w0 = w[g * stride + j], w1 = has_second ? w[g * stride + j + 1] : 0.0f;
                uint32_t u0, u1;
                memcpy(&u0, &w0, 4);
                memcpy(&u1, &w1, 4);
                /* exact: the weights are bfloat16 values */
                __m512bh pair = (__m512bh)_mm512_set1_epi32((int)((u1 & 0xffff0000u) | (u0 >> 16)));
                for (int c = 0; c < 4; c++) sums[g][c] = _mm512_dpbf16_ps(sums[g][c], pair, x[c]);
            }
        }
        for (int g = 0; g < group; g++)
            for (int c = 0; c < 4; c++) _mm512_storeu_ps(acc[g] + 16 * c, sums[g][c]);
        return;
    }
#endif
    for (int j = 0; j < n; j++) {
        const uint16_t *value = values + (int64_t)j * head_dim;
        for (int g = 0; g < group; g++) {
            const float wj = w[g * stride + j];
            for (int d = 0; d < head_dim; d++) acc[g][d] += wj * bf16_to_f32(value[d]);
        }
    }
}

/* pv_rows' AVX-512 path (head_dim 64) keeps lane l of chunk c for d = the position its
 * unpack took: 32 * (c / 2) + 8 * (l / 4) + 4 * (c % 2) + l % 4. */
static inline int unshuffle(int head_dim, int group, int index) {
#if SHUNTER_AVX512_BF16
    if (head_dim == 64 && group <= 8) {
        const int c = index / 16, l = index % 16;
        return 32 * (c / 2) + 8 * (l / 4) + 4 * (c % 2) + l % 4;
    }
#endif
    (void)head_dim;
    (void)group;
    return index;
}

/* Returns 0, or -1 when a size is out of range or scratch memory cannot be had. */
int shunter_decode_attention_bf16(
    const uint16_t *q, int64_t q_stride, const uint16_t *k_cache, const uint16_t *v_cache,
    const int32_t *tables, int32_t max_blocks, const int32_t *lengths, int32_t start,
    int32_t end, int32_t num_heads, int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
    float scale, uint16_t *out) {
    if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || head_dim > MAX_HEAD_DIM ||
        num_heads / num_kv_heads > MAX_GROUP || block_size <= 0)
        return -1;
    const int group = num_heads / num_kv_heads;
    int32_t longest = 0;
    for (int32_t i = start; i < end; i++)
        if (lengths[i] > longest) longest = lengths[i];
    float *scores = malloc(sizeof(float) * (size_t)group * (size_t)(longest > 0 ? longest : 1));
    if (scores == NULL) return -1;
    float acc[MAX_GROUP][MAX_HEAD_DIM];
    const int64_t head_rows = (int64_t)block_size * head_dim; /* one (block, head) run */
    for (int32_t i = start; i < end; i++) {
        const int32_t length = lengths[i];
        const int32_t *table = tables + (int64_t)i * max_blocks;
        for (int h = 0; h < num_kv_heads; h++) {
            const uint16_t *qh = q + (int64_t)i * q_stride + (int64_t)h * group * head_dim;
            float maxs[MAX_GROUP], sums[MAX_GROUP];
            for (int g = 0; g < group; g++) maxs[g] = -INFINITY;
            /* scores, block by block */
            for (int32_t pos = 0; pos < length; pos += block_size) {
                const uint16_t *keys =
                    k_cache + ((int64_t)table[pos / block_size] * num_kv_heads + h) * head_rows;
                const int n = length - pos < block_size ? length - pos : block_size;
                /* blocks are scattered: fetch the next block's keys and this block's values
                 * (read after the softmax) ahead, which the hardware prefetcher cannot guess */
                if (pos + block_size < length) /* (two blocks ahead measured no faster) */
                    prefetch_rows(k_cache + ((int64_t)table[pos / block_size + 1] *
                                             num_kv_heads + h) * head_rows, head_rows);
                prefetch_rows(v_cache + ((int64_t)table[pos / block_size] * num_kv_heads + h) *
                                            head_rows, (int64_t)n * head_dim);
                qk_rows(qh, group, keys, n, head_dim, scale, scores + pos, length);
            }
            for (int g = 0; g < group; g++)
                for (int32_t j = 0; j < length; j++)
                    if (scores[(int64_t)g * length + j] > maxs[g]) maxs[g] = scores[(int64_t)g * length + j];
            /* exponentials: float32 sum, bfloat16-rounded weights */
            for (int g = 0; g < group; g++) {
                float *row = scores + (int64_t)g * length;
                sums[g] = exp_round_sum(row, length, maxs[g]);
                memset(acc[g], 0, sizeof(float) * (size_t)head_dim);
            }
            { /* the next (request, KV head)'s first keys, while this one's values are read */
                const int32_t ni = h + 1 < num_kv_heads ? i : i + 1;
                const int nh = h + 1 < num_kv_heads ? h + 1 : 0;
                if (ni < end && lengths[ni] > 0)
                    prefetch_rows(k_cache + ((int64_t)tables[(int64_t)ni * max_blocks] *
                                             num_kv_heads + nh) * head_rows, head_rows);
            }
            /* weighted values */
            for (int32_t pos = 0; pos < length; pos += block_size) {
                const uint16_t *values =
                    v_cache + ((int64_t)table[pos / block_size] * num_kv_heads + h) * head_rows;
                const int n = length - pos < block_size ? length - pos : block_size;
                pv_rows(acc, group, scores + pos, length, values, n, head_dim);
            }
            uint16_t *oh = out + ((int64_t)i * num_heads + (int64_t)h * group) * head_dim;
            for (int g = 0; g < group; g++) {
                const float inv = sums[g] > 0.0f ? 1.0f / sums[g] : 0.0f;
                for (int d = 0; d < head_dim; d++)
                    oh[g * head_dim + unshuffle(head_dim, group, d)] = f32_to_bf16(acc[g][d] * inv);
            }
        }
    }
    free(scores);
    return 0;
}
