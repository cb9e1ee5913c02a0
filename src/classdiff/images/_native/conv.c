/* Weight (and bias) gradient of a small-kernel 2-D convolution of channels_last float32 tensors, for classdiff's
 * U-Net on CPU (classdiff/images/native.py builds and loads this file with the other kernels).
 *
 * x (B, Hi, Wi, I) and the output gradient g (B, Ho, Wo, O) row-major (channels_last (B, C, H, W) tensors); a
 * KH x KW kernel with stride S and zero padding P: out[b, y, x, o] = sum_{ky, kx, i} w[o, ky, kx, i]
 * x[b, S y + ky - P, S x + kx - P, i] (+ bias[o]). Then
 *   dw[o, ky, kx, i] = sum_{b, y, x} g[b, y, x, o] x[b, S y + ky - P, S x + kx - P, i],   db[o] = sum g[b, y, x, o],
 * dw laid out (O, KH, KW, I), i.e. a channels_last (O, I, KH, KW) weight. For each tap (ky, kx) this is the product
 * of g^T (O x pixels) and the shifted x (pixels x I) over the output pixels, taken by output rows so that the
 * input rows are a constant stride S I apart (out-of-range taps, the zero padding, are skipped, not stored).
 * Register tiles of 6 output channels x 16 input channels (12 AVX2/FMA accumulators) walk the pixels of a block
 * of about 64 output pixels (whole output rows), small enough to stay in cache across all the tiles and taps,
 * accumulating into the thread's dw, so each element of g and x is read from memory once. Threads (OpenMP) take
 * contiguous ranges of output rows; their partial dw are summed in thread
 * order, so the result is reproducible for a given number of threads. Without AVX2, plain loops. I must be a
 * multiple of 8.
 */
#include "common.h"

#define CV_ROWS 6
#define CV_BLOCK_PIXELS 64

typedef struct {
    int64_t Hi, Wi, I, Ho, Wo, O, KH, KW, S, P;
} cd_conv_shape;

#ifdef __AVX2__
/* acc (R x 16 at dwt, row stride ldw) += sum over the output rows r0 <= b Ho + y < r1 of g[p, o0 + r]
 * x[in(p), i0 .. i0 + 15] (g, x already offset to o0, i0). */
static inline __attribute__((always_inline)) void wgrad_tile(const int R, const int V, const float* g, const float* x,
                                                             int64_t r0, int64_t r1, const cd_conv_shape* sh,
                                                             int64_t ky, int64_t kx, float* dwt, int64_t ldw) {
    __m256 acc0[CV_ROWS], acc1[CV_ROWS];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
        acc0[r] = _mm256_loadu_ps(dwt + r * ldw);
        acc1[r] = V > 1 ? _mm256_loadu_ps(dwt + r * ldw + 8) : acc0[r];
    }
    const int64_t O = sh->O, I = sh->I, S = sh->S;
    /* output columns whose input column S x + kx - P lies in [0, Wi) */
    int64_t x_lo = 0, x_hi = sh->Wo;
    while (x_lo < x_hi && S * x_lo + kx - sh->P < 0) ++x_lo;
    while (x_hi > x_lo && S * (x_hi - 1) + kx - sh->P >= sh->Wi) --x_hi;
    for (int64_t row = r0; row < r1; ++row) {
        const int64_t b = row / sh->Ho, y = row % sh->Ho, yi = S * y + ky - sh->P;
        if (yi < 0 || yi >= sh->Hi) continue;
        const float* gr = g + (row * sh->Wo + x_lo) * O;
        const float* xr = x + ((b * sh->Hi + yi) * sh->Wi + S * x_lo + kx - sh->P) * I;
        for (int64_t xo = x_lo; xo < x_hi; ++xo, gr += O, xr += S * I) {
            const __m256 b0 = _mm256_loadu_ps(xr);
            cd_tile_fma(R, V, acc0, acc1, gr, 1, b0, V > 1 ? _mm256_loadu_ps(xr + 8) : b0);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
        _mm256_storeu_ps(dwt + r * ldw, acc0[r]);
        if (V > 1) _mm256_storeu_ps(dwt + r * ldw + 8, acc1[r]);
    }
}

#define CD_WG_CASE(R, V) wgrad_tile(R, V, g, x, r0, r1, sh, ky, kx, dwt, ldw)
static void wgrad_dispatch(int R, int V, const float* g, const float* x, int64_t r0, int64_t r1,
                           const cd_conv_shape* sh, int64_t ky, int64_t kx, float* dwt, int64_t ldw) {
    CD_TILE_SWITCH(R, V, CD_WG_CASE)
}
#endif

/* Adds the contribution of the output rows r0 <= b Ho + y < r1 to dw (O, KH, KW, I) and db (O). */
static void wgrad_block(const float* g, const float* x, int64_t r0, int64_t r1, const cd_conv_shape* sh, float* dw,
                        float* db) {
    const int64_t O = sh->O, I = sh->I, ldw = sh->KH * sh->KW * I;
    for (int64_t p = r0 * sh->Wo; p < r1 * sh->Wo; ++p)
        for (int64_t o = 0; o < O; ++o) db[o] += g[p * O + o];
    for (int64_t ky = 0; ky < sh->KH; ++ky)
        for (int64_t kx = 0; kx < sh->KW; ++kx) {
            float* dwk = dw + (ky * sh->KW + kx) * I;
#ifdef __AVX2__
            for (int64_t o0 = 0; o0 < O; o0 += CV_ROWS)
                for (int64_t i0 = 0; i0 < I; i0 += 16)
                    wgrad_dispatch((int)(O - o0 < CV_ROWS ? O - o0 : CV_ROWS), I - i0 >= 16 ? 2 : 1, g + o0, x + i0,
                                   r0, r1, sh, ky, kx, dwk + o0 * ldw + i0, ldw);
#else
            for (int64_t row = r0; row < r1; ++row)
                for (int64_t xo = 0; xo < sh->Wo; ++xo) {
                    const int64_t b = row / sh->Ho, y = row % sh->Ho;
                    const int64_t yi = sh->S * y + ky - sh->P, xi = sh->S * xo + kx - sh->P;
                    if (yi < 0 || yi >= sh->Hi || xi < 0 || xi >= sh->Wi) continue;
                    const float* gr = g + (row * sh->Wo + xo) * O;
                    const float* xr = x + ((b * sh->Hi + yi) * sh->Wi + xi) * I;
                    for (int64_t o = 0; o < O; ++o)
                        for (int64_t i = 0; i < I; ++i) dwk[o * ldw + i] += gr[o] * xr[i];
                }
#endif
        }
}

/* dw (O, KH, KW, I) and db (O, or NULL) from x (B, Hi, Wi, I) and g (B, Ho, Wo, O). Returns 0, or -1 if scratch
 * memory ran out. */
int cd_conv_weight_grad(const float* x, const float* g, float* dw, float* db, int64_t B, int64_t Hi, int64_t Wi,
                        int64_t I, int64_t Ho, int64_t Wo, int64_t O, int64_t KH, int64_t KW, int64_t S, int64_t P,
                        int threads) {
    const cd_conv_shape sh = {Hi, Wi, I, Ho, Wo, O, KH, KW, S, P};
    const int64_t nw = O * KH * KW * I;
    /* output rows per block: about CV_BLOCK_PIXELS pixels, whose g and x rows then stay in L1/L2 across the
     * tiles and taps that walk them */
    const int64_t rows = B * Ho;
    int64_t blk = Wo > 0 ? CV_BLOCK_PIXELS / Wo : 1;
    blk = blk < 1 ? 1 : blk;
    if (threads < 1) threads = 1;
    if (threads > rows) threads = (int)(rows > 0 ? rows : 1);
    float* part = (float*)calloc((size_t)threads * (size_t)(nw + O), sizeof(float));
    if (!part) return -1;
    (void)threads;
#pragma omp parallel num_threads(threads)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t q0 = rows * t / nt, q1 = rows * (t + 1) / nt;
        float* dwt = part + (size_t)t * (size_t)(nw + O);
        for (int64_t q = q0; q < q1; q += blk) wgrad_block(g, x, q, q + blk < q1 ? q + blk : q1, &sh, dwt, dwt + nw);
    }
    for (int64_t k = 0; k < nw; ++k) {
        float s = 0.0f;
        for (int t = 0; t < threads; ++t) s += part[(size_t)t * (size_t)(nw + O) + k];
        dw[k] = s;
    }
    if (db)
        for (int64_t o = 0; o < O; ++o) {
            float s = 0.0f;
            for (int t = 0; t < threads; ++t) s += part[(size_t)t * (size_t)(nw + O) + nw + o];
            db[o] = s;
        }
    free(part);
    return 0;
}
