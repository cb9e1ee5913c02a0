/* GroupNorm (+ optional SiLU, + optional per-(sample, channel) input offset) of channels_last float32 tensors,
 * forward and backward, for classdiff's U-Net on CPU (classdiff/images/native.py builds and loads this file).
 *
 * Layout: x is (B, P, C) row-major, i.e. a channels_last (B, C, H, W) tensor with P = H W pixels; groups of
 * C / G consecutive channels. With u = x + e[b, c] (e the optional offset, B x C), per sample b and group g:
 *   mean = E[u], rstd = 1 / sqrt(Var[u] + eps) over the P C/G elements of the group (moments in double),
 *   z = (u - mean) rstd w[c] + bias[c] = x scale[c] + shift[c]   (scale = w rstd, shift = bias + (e - mean) w rstd),
 *   y = silu(z) = z / (1 + exp(-z)) when silu, else z.
 * Backward from gy = dL/dy: gz = gy silu'(z) = gy s (1 + z (1 - s)), s = sigmoid(z) (gz = gy without silu);
 *   with uhat = (u - mean) rstd and group means m1 = <w gz>, m2 = <w gz uhat>:
 *   du = rstd (w gz - m1 - uhat m2) = gz w rstd + u (-rstd^2 m2) + rstd (mean rstd m2 - m1),
 *   dw[c] = sum_b sum_p gz uhat, dbias[c] = sum_b sum_p gz, de[b, c] = sum_p du.
 * Dropout (optional, after the SiLU): y = silu(z) keep with keep = [bits >> 8 >= threshold], bits a 32-bit hash of
 * (seed, sample, element index within the sample), so that the backward regenerates the mask instead of storing
 * it (gy keep in place of gy above); the drop probability is threshold / 2^24 and the 1 / (1 - p) scale is the
 * caller's.
 *
 * Each sample is processed by one thread (OpenMP over b, static schedule, when compiled with -fopenmp; the
 * Python side links the OpenMP runtime that PyTorch already loaded, so both share one thread pool), in two
 * passes over its P x C block (which fits in L2 at the U-Net's sizes): moments, then the normalisation. The
 * results do not depend on the number of threads. Pixel sums are accumulated in float over blocks of 32
 * pixels, then in double.
 */
#include "common.h"

#define CD_BLOCK 32

int cd_abi_version(void) { return CD_ABI_VERSION; }

/* Dropout bits: a 32-bit hash (two rounds of the "lowbias32" integer mixer of C. Wellons' hash prospector) of the
 * element index within the sample, keyed per sample by k1, k2 (from the call's seed and the sample index). */
typedef struct {
    uint32_t threshold; /* 0: no dropout; else keep where bits >> 8 >= threshold (1 .. 2^24 - 1) */
    uint32_t k1, k2;
} cd_drop;

static inline uint32_t cd_mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

static inline cd_drop cd_drop_for_sample(uint64_t seed, uint32_t threshold, int64_t b) {
    cd_drop d;
    uint32_t lo = (uint32_t)seed, hi = (uint32_t)(seed >> 32);
    d.threshold = threshold;
    d.k1 = cd_mix32(lo ^ cd_mix32((uint32_t)b * 0x9E3779B9U + hi));
    d.k2 = cd_mix32(d.k1 + 0x85EBCA6BU + hi);
    return d;
}

static inline int cd_keep(const cd_drop* d, uint32_t idx) {
    return (cd_mix32(cd_mix32(idx ^ d->k1) + d->k2) >> 8) >= d->threshold;
}

#ifdef __AVX2__
static inline __m256i cd_mix32x8(__m256i x) {
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7feb352d));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846ca68bU));
    return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}

/* All-ones lanes where the 8 elements idx .. idx + 7 are kept. */
static inline __m256 cd_keep8(const cd_drop* d, uint32_t idx) {
    __m256i i = _mm256_add_epi32(_mm256_set1_epi32((int)idx), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i h = cd_mix32x8(_mm256_add_epi32(cd_mix32x8(_mm256_xor_si256(i, _mm256_set1_epi32((int)d->k1))),
                                            _mm256_set1_epi32((int)d->k2)));
    __m256i keep = _mm256_cmpgt_epi32(_mm256_srli_epi32(h, 8), _mm256_set1_epi32((int)d->threshold - 1));
    return _mm256_castsi256_ps(keep);
}
#endif

/* One pixel row: y[c] = silu(x[c] scale[c] + shift[c]) (silu) or the affine value alone, times the dropout mask
 * (idx: the index of the row's first element within the sample). */
static inline void affine_row(const float* xr, const float* scale, const float* shift, float* yr, int64_t C,
                              int silu, const cd_drop* drop, uint32_t idx) {
    int64_t c = 0;
#ifdef __AVX2__
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; c + 8 <= C; c += 8) {
        __m256 z = _mm256_fmadd_ps(_mm256_loadu_ps(xr + c), _mm256_loadu_ps(scale + c), _mm256_loadu_ps(shift + c));
        if (silu) z = _mm256_div_ps(z, _mm256_add_ps(one, cd_exp8(_mm256_sub_ps(_mm256_setzero_ps(), z))));
        if (drop->threshold) z = _mm256_and_ps(z, cd_keep8(drop, idx + (uint32_t)c));
        _mm256_storeu_ps(yr + c, z);
    }
#endif
    for (; c < C; ++c) {
        float z = xr[c] * scale[c] + shift[c];
        z = silu ? z / (1.0f + cd_expf(-z)) : z;
        yr[c] = (drop->threshold && !cd_keep(drop, idx + (uint32_t)c)) ? 0.0f : z;
    }
}

/* gy times the dropout mask, for one pixel row. */
static inline void mask_row(const float* gr, float* out, int64_t C, const cd_drop* drop, uint32_t idx) {
    int64_t c = 0;
#ifdef __AVX2__
    for (; c + 8 <= C; c += 8)
        _mm256_storeu_ps(out + c, _mm256_and_ps(_mm256_loadu_ps(gr + c), cd_keep8(drop, idx + (uint32_t)c)));
#endif
    for (; c < C; ++c) out[c] = cd_keep(drop, idx + (uint32_t)c) ? gr[c] : 0.0f;
}

/* One pixel row of the backward's first pass: gz = gy silu'(z) (written to out when out is not NULL),
 * f1[c] += gz, f2[c] += gz x[c]. */
static inline void silu_grad_row(const float* xr, const float* gr, const float* scale, const float* shift, float* out,
                                 float* f1, float* f2, int64_t C) {
    int64_t c = 0;
#ifdef __AVX2__
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; c + 8 <= C; c += 8) {
        __m256 x = _mm256_loadu_ps(xr + c);
        __m256 z = _mm256_fmadd_ps(x, _mm256_loadu_ps(scale + c), _mm256_loadu_ps(shift + c));
        __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, cd_exp8(_mm256_sub_ps(_mm256_setzero_ps(), z))));
        __m256 gz = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(gr + c), s), _mm256_fmadd_ps(z, _mm256_sub_ps(one, s), one));
        if (out) _mm256_storeu_ps(out + c, gz);
        _mm256_storeu_ps(f1 + c, _mm256_add_ps(_mm256_loadu_ps(f1 + c), gz));
        _mm256_storeu_ps(f2 + c, _mm256_fmadd_ps(gz, x, _mm256_loadu_ps(f2 + c)));
    }
#endif
    for (; c < C; ++c) {
        float z = xr[c] * scale[c] + shift[c];
        float s = 1.0f / (1.0f + cd_expf(-z));
        float gz = gr[c] * s * (1.0f + z * (1.0f - s));
        if (out) out[c] = gz;
        f1[c] += gz;
        f2[c] += gz * xr[c];
    }
}

/* Per-channel sums over the P pixels of one sample: s1[c] = sum x, s2[c] = sum x^2 (double). */
static void channel_moments(const float* xb, int64_t P, int64_t C, float* f1, float* f2, double* s1, double* s2) {
    for (int64_t c = 0; c < C; ++c) s1[c] = s2[c] = 0.0;
    for (int64_t p0 = 0; p0 < P; p0 += CD_BLOCK) {
        int64_t p1 = p0 + CD_BLOCK < P ? p0 + CD_BLOCK : P;
        for (int64_t c = 0; c < C; ++c) f1[c] = f2[c] = 0.0f;
        for (int64_t p = p0; p < p1; ++p) {
            const float* xr = xb + p * C;
            for (int64_t c = 0; c < C; ++c) {
                f1[c] += xr[c];
                f2[c] += xr[c] * xr[c];
            }
        }
        for (int64_t c = 0; c < C; ++c) {
            s1[c] += f1[c];
            s2[c] += f2[c];
        }
    }
}

/* scale[c] = w rstd, shift[c] = bias + (e - mean) w rstd for one sample (e = 0 without offset). */
static void sample_affine(const float* w, const float* bias, const float* eb, const double* mean, const double* rstd,
                          int64_t C, int64_t G, float* scale, float* shift) {
    int64_t cg = C / G;
    for (int64_t c = 0; c < C; ++c) {
        double m = mean[c / cg], r = rstd[c / cg], e = eb ? eb[c] : 0.0;
        scale[c] = (float)(w[c] * r);
        shift[c] = (float)(bias[c] + (e - m) * w[c] * r);
    }
}

/* y (B, P, C) = silu?(GroupNorm(x + e)) (times the dropout mask when drop_threshold > 0); mean, rstd (B, G)
 * written. Returns 0, or -1 if scratch memory ran out. */
int cd_group_norm_forward(const float* x, const float* offset, const float* weight, const float* bias, float* y,
                          double* mean_out, double* rstd_out, int64_t B, int64_t P, int64_t C, int64_t G, double eps,
                          int silu, uint64_t seed, uint32_t drop_threshold, int threads) {
    int failed = 0;
    (void)threads;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float* fs = (float*)malloc((size_t)C * 4 * sizeof(float));
        double* ds = (double*)malloc((size_t)C * 2 * sizeof(double));
        if (!fs || !ds) {
            failed = 1;
        } else {
            float *f1 = fs, *f2 = fs + C, *scale = fs + 2 * C, *shift = fs + 3 * C;
            double *s1 = ds, *s2 = ds + C;
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; ++b) {
                const float* xb = x + b * P * C;
                const float* eb = offset ? offset + b * C : NULL;
                float* yb = y + b * P * C;
                double* mean = mean_out + b * G;
                double* rstd = rstd_out + b * G;
                channel_moments(xb, P, C, f1, f2, s1, s2);
                int64_t cg = C / G;
                double n = (double)(P * cg);
                for (int64_t g = 0; g < G; ++g) {
                    double a = 0.0, q = 0.0;
                    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
                        double e = eb ? eb[c] : 0.0;  /* sums of u = x + e from those of x */
                        a += s1[c] + P * e;
                        q += s2[c] + 2.0 * e * s1[c] + P * e * e;
                    }
                    double m = a / n, v = q / n - m * m;
                    mean[g] = m;
                    rstd[g] = 1.0 / sqrt((v > 0.0 ? v : 0.0) + eps);
                }
                sample_affine(weight, bias, eb, mean, rstd, C, G, scale, shift);
                cd_drop drop = cd_drop_for_sample(seed, drop_threshold, b);
                for (int64_t p = 0; p < P; ++p)
                    affine_row(xb + p * C, scale, shift, yb + p * C, C, silu, &drop, (uint32_t)(p * C));
            }
        }
        free(fs);
        free(ds);
    }
    return failed ? -1 : 0;
}

/* From gy = dL/dy (B, P, C), and the forward's seed and drop_threshold: dx (B, P, C) = dL/du when dx is not NULL
 * (it may not alias gy or x), and per (b, c) (B x C, double): dweight_part = sum_p gz uhat, dbias_part = sum_p gz,
 * doffset = sum_p du (when not NULL; needs dx). Returns 0, or -1 if scratch memory ran out. */
int cd_group_norm_backward(const float* gy, const float* x, const float* offset, const float* weight,
                           const float* bias, const double* mean_in, const double* rstd_in, float* dx,
                           double* dweight_part, double* dbias_part, double* doffset, int64_t B, int64_t P, int64_t C,
                           int64_t G, int silu, uint64_t seed, uint32_t drop_threshold, int threads) {
    int failed = 0;
    (void)threads;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float* fs = (float*)malloc((size_t)C * 8 * sizeof(float));
        double* ds = (double*)malloc((size_t)C * 3 * sizeof(double));
        if (!fs || !ds) {
            failed = 1;
        } else {
            float *f1 = fs, *f2 = fs + C, *scale = fs + 2 * C, *shift = fs + 3 * C;
            float *ca = fs + 4 * C, *cx = fs + 5 * C, *cc = fs + 6 * C, *gm = fs + 7 * C;
            double *sg = ds, *sgx = ds + C, *sdu = ds + 2 * C;
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; ++b) {
                const float* xb = x + b * P * C;
                const float* gb = gy + b * P * C;
                const float* eb = offset ? offset + b * C : NULL;
                float* db = dx ? dx + b * P * C : NULL;
                const double* mean = mean_in + b * G;
                const double* rstd = rstd_in + b * G;
                sample_affine(weight, bias, eb, mean, rstd, C, G, scale, shift);
                cd_drop drop = cd_drop_for_sample(seed, drop_threshold, b);
                /* pass 1: gz (kept in dx when silu and dx is wanted), sum gz, sum gz x */
                for (int64_t c = 0; c < C; ++c) sg[c] = sgx[c] = 0.0;
                for (int64_t p0 = 0; p0 < P; p0 += CD_BLOCK) {
                    int64_t p1 = p0 + CD_BLOCK < P ? p0 + CD_BLOCK : P;
                    for (int64_t c = 0; c < C; ++c) f1[c] = f2[c] = 0.0f;
                    for (int64_t p = p0; p < p1; ++p) {
                        const float* xr = xb + p * C;
                        const float* gr = gb + p * C;
                        if (drop.threshold) {  /* the gradient reaching z: gy times the regenerated mask */
                            mask_row(gr, gm, C, &drop, (uint32_t)(p * C));
                            gr = gm;
                        }
                        if (silu) {
                            silu_grad_row(xr, gr, scale, shift, db ? db + p * C : NULL, f1, f2, C);
                        } else {
                            for (int64_t c = 0; c < C; ++c) {
                                f1[c] += gr[c];
                                f2[c] += gr[c] * xr[c];
                            }
                        }
                    }
                    for (int64_t c = 0; c < C; ++c) {
                        sg[c] += f1[c];
                        sgx[c] += f2[c];
                    }
                }
                int64_t cg = C / G;
                double n = (double)(P * cg);
                for (int64_t g = 0; g < G; ++g) {
                    double m = mean[g], r = rstd[g], m1 = 0.0, m2 = 0.0;
                    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
                        double e = eb ? eb[c] : 0.0;
                        double sguhat = (sgx[c] + (e - m) * sg[c]) * r;  /* sum gz uhat, u = x + e */
                        dweight_part[b * C + c] = sguhat;
                        dbias_part[b * C + c] = sg[c];
                        m1 += weight[c] * sg[c];
                        m2 += weight[c] * sguhat;
                    }
                    m1 /= n;
                    m2 /= n;
                    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
                        double e = eb ? eb[c] : 0.0;
                        ca[c] = (float)(weight[c] * r);
                        cx[c] = (float)(-r * r * m2);
                        cc[c] = (float)(r * (m * r * m2 - m1) - r * r * m2 * e);  /* the u = x + e term folded */
                    }
                }
                if (!db) continue;
                /* pass 2: du = gz ca + x cx + cc (gz from dx when silu or dropout, else gy), and its pixel sums */
                if (!silu && drop.threshold)
                    for (int64_t p = 0; p < P; ++p) mask_row(gb + p * C, db + p * C, C, &drop, (uint32_t)(p * C));
                const float* src = (silu || drop.threshold) ? db : gb;
                for (int64_t c = 0; c < C; ++c) sdu[c] = 0.0;
                for (int64_t p0 = 0; p0 < P; p0 += CD_BLOCK) {
                    int64_t p1 = p0 + CD_BLOCK < P ? p0 + CD_BLOCK : P;
                    for (int64_t c = 0; c < C; ++c) f1[c] = 0.0f;
                    for (int64_t p = p0; p < p1; ++p) {
                        const float* xr = xb + p * C;
                        const float* sr = src + p * C;
                        float* dr = db + p * C;
                        for (int64_t c = 0; c < C; ++c) {
                            float d = sr[c] * ca[c] + xr[c] * cx[c] + cc[c];
                            dr[c] = d;
                            f1[c] += d;
                        }
                    }
                    for (int64_t c = 0; c < C; ++c) sdu[c] += f1[c];
                }
                if (doffset)
                    for (int64_t c = 0; c < C; ++c) doffset[b * C + c] = sdu[c];
            }
        }
        free(fs);
        free(ds);
    }
    return failed ? -1 : 0;
}
