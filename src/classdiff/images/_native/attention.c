/* Multi-head softmax attention of short sequences on CPU, forward and backward, for classdiff's U-Net
 * (classdiff/images/native.py builds and loads this file with groupnorm.c).
 *
 * Layout: qkv is (B, N, 3 C) row-major, the output of the attention's input projection, each row holding
 * [q | k | v] with head h in columns [h D, (h + 1) D) of each third (C = H D); out is (B, N, C), head h in columns
 * [h D, (h + 1) D): the input of the output projection, with no transposes in between. Per (b, h), with
 * Q, K, V the N x D blocks and s = 1 / sqrt(D):
 *   forward:  S = s Q K^T, P = softmax_rows(S), O = P V; lse_i = log sum_j exp(S_ij) kept for the backward;
 *   backward: P = exp(S - lse) recomputed (the N x N matrix is never stored across the call), dV = P^T dO,
 *             dP = dO V^T, dS = P o (dP - rowsum(dO o O)), dQ = s dS K, dK = s dS^T Q, written into dqkv (B, N, 3 C).
 * Each (b, h) is done by one thread (OpenMP over the B H pairs, static schedule), with its S and dS in that
 * thread's scratch (L2-sized for N up to about 256), so the results do not depend on the number of threads.
 * The products are the register-tiled kernels of gemm.h (for S = A B^T with the small inner dimension D as for the
 * N-long inner dimension of P V, P^T dO, dS K, dS^T Q). D must be a multiple of 8.
 */
#include "common.h"
#include "gemm.h"

/* dst[k * Np + j] = src[j * ld + k] for j < N, k < D; zero for N <= j < Np. */
static void pack_transposed(const float* src, int64_t ld, int64_t N, int64_t D, int64_t Np, float* dst) {
    for (int64_t k = 0; k < D; ++k)
        for (int64_t j = N; j < Np; ++j) dst[k * Np + j] = 0.0f;
    for (int64_t j = 0; j < N; ++j)
        for (int64_t k = 0; k < D; ++k) dst[k * Np + j] = src[j * ld + k];
}

/* row[j] = exp(scale row[j] - shift) for j < N; returns their sum. */
static float exp_row(float* row, int64_t N, float scale, float shift) {
    int64_t j = 0;
    float sum = 0.0f;
#ifdef __AVX2__
    const __m256 vs = _mm256_set1_ps(scale), vm = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= N; j += 8) {
        __m256 p = cd_exp8(_mm256_fmsub_ps(_mm256_loadu_ps(row + j), vs, vm));
        _mm256_storeu_ps(row + j, p);
        acc = _mm256_add_ps(acc, p);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (int l = 0; l < 8; ++l) sum += lanes[l];
#endif
    for (; j < N; ++j) {
        row[j] = cd_expf(row[j] * scale - shift);
        sum += row[j];
    }
    return sum;
}

static float max_row(const float* row, int64_t N) {
    int64_t j = 0;
    float m = row[0];
#ifdef __AVX2__
    if (N >= 8) {
        __m256 vm = _mm256_loadu_ps(row);
        for (j = 8; j + 8 <= N; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(row + j));
        float lanes[8];
        _mm256_storeu_ps(lanes, vm);
        for (int l = 0; l < 8; ++l) m = lanes[l] > m ? lanes[l] : m;
    }
#endif
    for (; j < N; ++j) m = row[j] > m ? row[j] : m;
    return m;
}

/* dS row: ds[j] = scale p[j] (ds[j] - r), j < N (ds holds dP on entry). */
static void softmax_grad_row(float* ds, const float* p, int64_t N, float scale, float r) {
    int64_t j = 0;
#ifdef __AVX2__
    const __m256 vs = _mm256_set1_ps(scale), vr = _mm256_set1_ps(r);
    for (; j + 8 <= N; j += 8)
        _mm256_storeu_ps(ds + j, _mm256_mul_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(p + j)),
                                               _mm256_sub_ps(_mm256_loadu_ps(ds + j), vr)));
#endif
    for (; j < N; ++j) ds[j] = scale * p[j] * (ds[j] - r);
}

static float dot(const float* a, const float* b, int64_t D) {
    float acc = 0.0f;
    for (int64_t c = 0; c < D; ++c) acc += a[c] * b[c];
    return acc;
}

/* out (B, N, C) and lse (B, H, N) from qkv (B, N, 3 C), C = H D. Returns 0, or -1 if scratch memory ran out. */
int cd_attention_forward(const float* qkv, float* out, float* lse, int64_t B, int64_t N, int64_t H, int64_t D,
                         int threads) {
    const int64_t C = H * D, ld = 3 * C, Np = cd_pad16(N);
    const float scale = 1.0f / sqrtf((float)D);
    int failed = 0;
    (void)threads;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float* kt = (float*)malloc((size_t)(D * Np + N * Np + N) * sizeof(float));
        if (!kt) {
            failed = 1;
        } else {
            float *s = kt + D * Np, *inv = s + N * Np;
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < B * H; ++bh) {
                const int64_t b = bh / H, h = bh % H;
                const float* q = qkv + b * N * ld + h * D;
                pack_transposed(q + C, ld, N, D, Np, kt);
                cd_gemm(q, ld, 1, kt, Np, s, Np, N, Np, D);
                float* l = lse + bh * N;
                for (int64_t i = 0; i < N; ++i) {  /* unnormalised probabilities exp(S - max), their row sums */
                    float* row = s + i * Np;
                    const float m = scale * max_row(row, N);
                    const float sum = exp_row(row, N, scale, m);
                    inv[i] = 1.0f / sum;
                    l[i] = m + logf(sum);
                }
                float* o = out + b * N * C + h * D;
                cd_gemm(s, Np, 1, q + 2 * C, ld, o, C, N, D, N);
                for (int64_t i = 0; i < N; ++i)
                    for (int64_t c = 0; c < D; ++c) o[i * C + c] *= inv[i];
            }
        }
        free(kt);
    }
    return failed ? -1 : 0;
}

/* dqkv (B, N, 3 C) from dout (B, N, C), qkv, out and lse of the forward. Returns 0, or -1 if scratch ran out. */
int cd_attention_backward(const float* qkv, const float* out, const float* dout, const float* lse, float* dqkv,
                          int64_t B, int64_t N, int64_t H, int64_t D, int threads) {
    const int64_t C = H * D, ld = 3 * C, Np = cd_pad16(N);
    const float scale = 1.0f / sqrtf((float)D);
    int failed = 0;
    (void)threads;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float* kt = (float*)malloc((size_t)(2 * D * Np + 2 * N * Np) * sizeof(float));
        if (!kt) {
            failed = 1;
        } else {
            float *vt = kt + D * Np, *p = vt + D * Np, *ds = p + N * Np;
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < B * H; ++bh) {
                const int64_t b = bh / H, h = bh % H;
                const float* q = qkv + b * N * ld + h * D;
                const float* o = out + b * N * C + h * D;
                const float* dout_b = dout + b * N * C + h * D;
                float* dq = dqkv + b * N * ld + h * D;
                const float* l = lse + bh * N;
                pack_transposed(q + C, ld, N, D, Np, kt);
                pack_transposed(q + 2 * C, ld, N, D, Np, vt);
                cd_gemm(q, ld, 1, kt, Np, p, Np, N, Np, D);  /* Q K^T, then P = exp(s Q K^T - lse) */
                for (int64_t i = 0; i < N; ++i) exp_row(p + i * Np, N, scale, l[i]);
                cd_gemm(p, 1, Np, dout_b, C, dq + 2 * C, ld, N, D, N);  /* dV = P^T dO */
                cd_gemm(dout_b, C, 1, vt, Np, ds, Np, N, Np, D);          /* dP = dO V^T */
                for (int64_t i = 0; i < N; ++i)  /* dS = s P o (dP - rowsum(dO o O)), over dP */
                    softmax_grad_row(ds + i * Np, p + i * Np, N, scale, dot(dout_b + i * C, o + i * C, D));
                cd_gemm(ds, Np, 1, q + C, ld, dq, ld, N, D, N);      /* dQ = s dS K */
                cd_gemm(ds, 1, Np, q, ld, dq + C, ld, N, D, N);      /* dK = s dS^T Q */
            }
        }
        free(kt);
    }
    return failed ? -1 : 0;
}
