/* Shared by classdiff's native CPU kernels (groupnorm.c, attention.c, conv.c): includes, the ABI version, and e^x for
 * float32, scalar and (with AVX2) eight lanes at a time. */
#ifndef CLASSDIFF_NATIVE_COMMON_H
#define CLASSDIFF_NATIVE_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __AVX2__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define CD_ABI_VERSION 4

/* The register-tile kernels take their tile height R (1 .. 6 rows) and width V (1 or 2 vectors of 8) as
 * compile-time constants; CD_TILE_SWITCH(R, V, CASE) calls CASE(r, v) for the run-time pair (R, V). */
#define CD_TILE_SWITCH(R, V, CASE)        \
    switch ((R) * 4 + (V)) {              \
        case 6 * 4 + 2: CASE(6, 2); break; \
        case 5 * 4 + 2: CASE(5, 2); break; \
        case 4 * 4 + 2: CASE(4, 2); break; \
        case 3 * 4 + 2: CASE(3, 2); break; \
        case 2 * 4 + 2: CASE(2, 2); break; \
        case 1 * 4 + 2: CASE(1, 2); break; \
        case 6 * 4 + 1: CASE(6, 1); break; \
        case 5 * 4 + 1: CASE(5, 1); break; \
        case 4 * 4 + 1: CASE(4, 1); break; \
        case 3 * 4 + 1: CASE(3, 1); break; \
        case 2 * 4 + 1: CASE(2, 1); break; \
        default: CASE(1, 1); break;        \
    }

/* e^x to about 2 ulp on [-87.3, 88.3] (clamped outside): 2^n e^r, n = round(x / ln 2), |r| <= ln 2 / 2,
 * r by a two-constant reduction and e^r by a degree-6 polynomial (Cephes' expf coefficients). */
static inline float cd_expf(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float n = nearbyintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

#ifdef __AVX2__
static inline __m256 cd_exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* One rank-1 update of an R x 8V register tile (R <= 6, V <= 2): acc0[r] += a[r a_step] b0 and, for V = 2,
 * acc1[r] += a[r a_step] b1. */
static inline __attribute__((always_inline)) void cd_tile_fma(const int R, const int V, __m256* acc0, __m256* acc1,
                                                              const float* a, int64_t a_step, __m256 b0, __m256 b1) {
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
        const __m256 av = _mm256_broadcast_ss(a + r * a_step);
        acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
        if (V > 1) acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
}
#endif

#endif
