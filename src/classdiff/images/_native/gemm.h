/* Register-tiled float32 matrix products for classdiff's native attention kernel (attention.c):
 *   C[i ldc + c] = sum_k A(i, k) B[k ldb + c],   i < M, c < N (a multiple of 8), k < K,
 * with A(i, k) = A[i arow + k astep], so that one kernel takes A (arow = lda, astep = 1) as well as its transpose
 * (arow = 1, astep = lda). Tiles of up to
 * 6 rows x 16 columns: 12 AVX2 accumulators, two B vectors and a broadcast of A fill the 16 registers, so each
 * FMA reads its B operand from a register (about 80 GFLOP/s a core measured on this project's Zen 3 machine);
 * without AVX2, plain loops. */
#ifndef CLASSDIFF_NATIVE_GEMM_H
#define CLASSDIFF_NATIVE_GEMM_H

#include "common.h"

#define CD_GEMM_ROWS 6

#ifdef __AVX2__
/* One R x 8V tile (R <= 6, V <= 2) of C. */
static inline __attribute__((always_inline)) void cd_gemm_tile(const int R, const int V, const float* A, int64_t arow,
                                                               int64_t astep, const float* B, int64_t ldb, float* C,
                                                               int64_t ldc, int64_t K) {
    __m256 acc0[CD_GEMM_ROWS], acc1[CD_GEMM_ROWS];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
        const __m256 b0 = _mm256_loadu_ps(B + k * ldb);
        cd_tile_fma(R, V, acc0, acc1, A + k * astep, arow, b0, V > 1 ? _mm256_loadu_ps(B + k * ldb + 8) : b0);
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
        _mm256_storeu_ps(C + r * ldc, acc0[r]);
        if (V > 1) _mm256_storeu_ps(C + r * ldc + 8, acc1[r]);
    }
}

#define CD_GEMM_CASE(R, V) cd_gemm_tile(R, V, a, arow, astep, b, ldb, c, ldc, K)
static void cd_gemm_dispatch(int R, int V, const float* a, int64_t arow, int64_t astep, const float* b, int64_t ldb,
                             float* c, int64_t ldc, int64_t K) {
    CD_TILE_SWITCH(R, V, CD_GEMM_CASE)
}
#undef CD_GEMM_CASE
#endif

static void cd_gemm(const float* A, int64_t arow, int64_t astep, const float* B, int64_t ldb, float* C, int64_t ldc,
                    int64_t M, int64_t N, int64_t K) {
#ifdef __AVX2__
    for (int64_t i0 = 0; i0 < M; i0 += CD_GEMM_ROWS) {
        const int rows = (int)(M - i0 < CD_GEMM_ROWS ? M - i0 : CD_GEMM_ROWS);
        for (int64_t c0 = 0; c0 < N; c0 += 16)
            cd_gemm_dispatch(rows, N - c0 >= 16 ? 2 : 1, A + i0 * arow, arow, astep, B + c0, ldb, C + i0 * ldc + c0,
                             ldc, K);
    }
#else
    for (int64_t i = 0; i < M; ++i)
        for (int64_t c = 0; c < N; ++c) {
            float s = 0.0f;
            for (int64_t k = 0; k < K; ++k) s += A[i * arow + k * astep] * B[k * ldb + c];
            C[i * ldc + c] = s;
        }
#endif
}

static inline int64_t cd_pad16(int64_t n) { return (n + 15) / 16 * 16; }

#endif
