/* cpu_backend.c -- the CPU backend: every op of backend.h in plain C.
 *
 * Matrix products go through OpenBLAS cblas_sgemm (from the scipy-openblas32
 * wheel, symbols prefixed scipy_); everything else is C11 loops parallelised
 * with OpenMP.  Weights may be stored compact (float16, bfloat16, int8/int4
 * blocks: quant.c), whose products are matmul.c's kernels for every M; float32
 * products of few rows (decoding) use the GEMV of quant.c, larger ones sgemm.  Memory is ordinary host memory, so to_device/to_host are
 * memcpy.  Attention is computed per (batch, head) in blocks of query rows:
 * a (block x Tk) score slab, never the whole (Tq x Tk) matrix, plus a direct
 * path for the few-query case of decoding.  This backend is also the
 * reference the CUDA backend is tested against.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include <cblas.h>

#include "backend.h"
#include "quant.h"
#include "vmath.h"

#ifdef BLAS_SYMBOL_PREFIX
#define SGEMM scipy_cblas_sgemm
#else
#define SGEMM cblas_sgemm
#endif

#define QBLOCK 64 /* query rows per score slab */
#define PAR_MIN 32768 /* below this many elements a loop runs on one thread: waking the others costs more */

/* wall time spent in matrix products (sgemm and the decode GEMV), for the benchmark's breakdown */
static _Atomic int64_t gemm_ns; /* every model's threads add to it: atomic, in whole nanoseconds */
static void count_gemm(double t0) { atomic_fetch_add(&gemm_ns, (int64_t)((omp_get_wtime() - t0) * 1e9)); }
double tg_cpu_gemm_seconds(int reset) {
    const double s = (double)(reset ? atomic_exchange(&gemm_ns, 0) : atomic_load(&gemm_ns)) * 1e-9;
    return s;
}

typedef struct {
    float *scratch; /* score slabs, grows on demand */
    size_t scratch_len;
    float *acts; /* activations of a compact-weight product in the weight's precision (matmul.c) */
    size_t acts_len;
} cpu_impl;

static int fail(tg_backend *be, const char *msg) {
    snprintf(be->err, sizeof be->err, "cpu backend: %s", msg);
    return -1;
}

static float *grow(float **buf, size_t *len, size_t n) {
    if (*len < n) {
        float *p = realloc(*buf, n * sizeof(float));
        if (!p) return NULL;
        *buf = p;
        *len = n;
    }
    return *buf;
}
static float *scratch(tg_backend *be, size_t n) {
    cpu_impl *im = be->impl;
    return grow(&im->scratch, &im->scratch_len, n);
}

/* ---- memory ---- */

static void *cpu_alloc(tg_backend *be, size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, n ? n : 64);
    if (!p) snprintf(be->err, sizeof be->err, "cpu backend: out of memory allocating %zu bytes", bytes);
    return p;
}
static void cpu_release(tg_backend *be, void *p) { (void)be; free(p); }
static int cpu_memcpy(tg_backend *be, void *dst, const void *src, size_t n) {
    (void)be;
    if (n) memmove(dst, src, n);
    return 0;
}
static int cpu_sync(tg_backend *be) { (void)be; return 0; }

static size_t cpu_row_bytes(tg_backend *be, int dtype, int64_t cols) {
    (void)be;
    return tg_cpu_row_bytes(dtype, cols);
}

/* float32 rows above TG_CPU_EXACT_ROWS go through sgemm; the compact formats are exact for every M (matmul.c) */
static int cpu_exact_rows(tg_backend *be, int dtype) {
    (void)be;
    return dtype == TG_F32 ? TG_CPU_EXACT_ROWS : 0;
}

static int cpu_weight_alloc(tg_backend *be, tg_weight *w, int64_t rows, int64_t cols, int dtype) {
    w->data = NULL;
    if (dtype < 0 || dtype >= TG_DTYPE_COUNT) return fail(be, "weight_alloc: unknown dtype");
    if (rows < 0 || cols <= 0) return fail(be, "weight_alloc: bad shape");
    if ((dtype == TG_Q8 || dtype == TG_Q4) && cols % TG_QBLOCK)
        return fail(be, "weight_alloc: int8/int4 blocks need the input features to be a multiple of 32");
    const size_t rb = tg_cpu_row_bytes(dtype, cols);
    if (rows && rb > SIZE_MAX / 2 / (size_t)(rows + 7)) return fail(be, "weight_alloc: size overflows");
    const size_t bytes = tg_cpu_weight_bytes(dtype, rows, cols), whole = (size_t)(rows / 8 * 8) * rb;
    w->data = cpu_alloc(be, bytes);
    if (!w->data) return -1;
    if (dtype == TG_Q8 || dtype == TG_Q4) memset((char *)w->data + whole, 0, bytes - whole); /* a last group's padding */
    w->dtype = dtype;
    w->rows = rows;
    w->cols = cols;
    return 0;
}

static int cpu_weight_write(tg_backend *be, tg_weight *w, int64_t row0, int64_t n, const float *host) {
    if (!w->data || row0 < 0 || n < 0 || row0 + n > w->rows) return fail(be, "weight_write: rows out of range");
    if (tg_store_rows(w->dtype, host, w->data, row0, n, w->cols)) {
        if (w->dtype == TG_F16) return fail(be, "weight_write: values beyond the float16 range (+-65504): use bfloat16");
        return fail(be, w->dtype == TG_Q8 ? "weight_write: an int8 block scale overflows float16 (weights beyond "
                                            "+-8.3e6): use bfloat16"
                                          : "weight_write: an int4 block scale overflows float16 (weights beyond "
                                            "+-5.2e5): use bfloat16");
    }
    return 0;
}

static void cpu_weight_release(tg_backend *be, tg_weight *w) {
    (void)be;
    free(w->data);
    w->data = NULL;
}

/* ---- activations ---- */

/* act on n values in place: SiLU, QuickGELU and tanh GELU are x * sigmoid(.) on vectors (vmath.c), the erf
 * GELU is libm's erff */
static void act_span(float *x, int64_t n, int act) {
    if (!tg_sigmoid_act(x, n, act) && act == TG_ACT_GELU)
        for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

#define ACT_SPAN 4096 /* elements per work item */
static int cpu_activation(tg_backend *be, float *x, int64_t n, int act) {
    (void)be;
    const int64_t items = (n + ACT_SPAN - 1) / ACT_SPAN;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t it = 0; it < items; it++)
        act_span(x + it * ACT_SPAN, n - it * ACT_SPAN < ACT_SPAN ? n - it * ACT_SPAN : ACT_SPAN, act);
    return 0;
}

static int cpu_silu_mul(tg_backend *be, const float *gu, float *out, int64_t rows, int64_t F) {
    (void)be;
#pragma omp parallel for schedule(static) if (rows * F > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gu + r * 2 * F, *u = g + F;
        float *o = out + r * F;
        tg_silu_mul_row(g, u, o, F);
    }
    return 0;
}

static int cpu_add_bcast(tg_backend *be, float *y, const float *x, int64_t outer, int64_t n) {
    (void)be;
#pragma omp parallel for schedule(static) if (outer * n > PAR_MIN)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < n; i++) y[o * n + i] += x[i];
    return 0;
}

/* ---- linear ---- */

/* y (M, N) = x @ w^T (+ y when accumulating): float32 weights through the exact GEMV (few rows) or sgemm,
 * compact weights through matmul.c (any M, batch invariant) */
static int product(tg_backend *be, const float *x, const tg_weight *w, float *y, int64_t M, int accumulate) {
    const int64_t N = w->rows, K = w->cols;
    if (w->dtype != TG_F32) {
        cpu_impl *im = be->impl;
        const size_t bytes = tg_matmul_scratch_bytes(w->dtype, M, K);
        float *buf = grow(&im->acts, &im->acts_len, bytes / sizeof(float) + 1);
        if (!buf) return fail(be, "linear: out of memory for the activations");
        tg_matmul(w->dtype, w->data, x, y, M, N, K, accumulate, buf);
    } else if (M <= TG_CPU_EXACT_ROWS) {
        tg_gemv(w->data, x, y, M, N, K, accumulate);
    } else {
        SGEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x, (int)K, (const float *)w->data,
              (int)K, accumulate ? 1.0f : 0.0f, y, (int)N);
    }
    return 0;
}

static int cpu_linear(tg_backend *be, const float *x, const tg_weight *w, const float *bias, const float *residual,
                      float *y, int64_t M, int act) {
    const int64_t N = w->rows;
    if (M <= 0) return 0;
    if (residual == y && act != TG_ACT_NONE) return fail(be, "linear: residual may alias y only without activation");
    double t0 = omp_get_wtime();
    const int rc = product(be, x, w, y, M, residual == y);
    count_gemm(t0);
    if (rc) return rc;
    if (!bias && act == TG_ACT_NONE && (!residual || residual == y)) return 0;
#pragma omp parallel for schedule(static) if (M * N > PAR_MIN)
    for (int64_t r = 0; r < M; r++) {
        float *yr = y + r * N;
        const float *rr = (residual && residual != y) ? residual + r * N : NULL;
        if (bias)
            for (int64_t c = 0; c < N; c++) yr[c] += bias[c];
        act_span(yr, N, act);
        if (rr)
            for (int64_t c = 0; c < N; c++) yr[c] += rr[c];
    }
    return 0;
}

/* ---- norms ---- */

static int cpu_layernorm(tg_backend *be, const float *x, const float *g, const float *b, float *y, int64_t rows,
                         int64_t dim, float eps) {
    (void)be;
#pragma omp parallel for schedule(static) if (rows * dim > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        float mean = 0.0f, var = 0.0f;
        for (int64_t i = 0; i < dim; i++) mean += xr[i];
        mean /= (float)dim;
        for (int64_t i = 0; i < dim; i++) var += (xr[i] - mean) * (xr[i] - mean);
        float inv = 1.0f / sqrtf(var / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++) yr[i] = (xr[i] - mean) * inv * g[i] + (b ? b[i] : 0.0f);
    }
    return 0;
}

static int cpu_rmsnorm(tg_backend *be, const float *x, const float *g, float *y, int64_t rows, int64_t dim, float eps) {
    (void)be;
#pragma omp parallel for schedule(static) if (rows * dim > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        float ss = 0.0f;
        for (int64_t i = 0; i < dim; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++) yr[i] = xr[i] * inv * g[i];
    }
    return 0;
}

/* ---- attention ---- */

/* Number of keys visible to query i of batch b (keys beyond are masked by causality/length). */
static inline int64_t key_limit(const tg_attention *a, int b, int64_t i) {
    int64_t lim = a->kv_len ? a->kv_len[b] : a->Tk;
    if (a->causal) {
        int64_t qp = a->q_pos ? a->q_pos[b] : a->Tk - a->Tq;
        if (qp + i + 1 < lim) lim = qp + i + 1;
    }
    return lim < 0 ? 0 : lim;
}

/* Softmax of one score row in place over keys [0, lim) honouring key_mask; returns 0 if no key visible. */
static int softmax_row(float *s, int64_t lim, const int32_t *mask) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < lim; j++)
        if (!mask || mask[j]) mx = s[j] > mx ? s[j] : mx;
    if (mx == -INFINITY) return 0;
    tg_exp_shift(s, lim, mx);
    if (mask)
        for (int64_t j = 0; j < lim; j++) s[j] = mask[j] ? s[j] : 0.0f;
    const float inv = 1.0f / tg_lanes_sum(s, lim);
    for (int64_t j = 0; j < lim; j++) s[j] *= inv;
    return 1;
}

/* Few queries (decode): direct loops, parallel over (batch, head). */
static int attention_direct(tg_backend *be, const tg_attention *a) {
    const int64_t hd = a->head_dim, Tk = a->Tk;
    const int group = a->n_heads / a->n_kv_heads;
    const int nbh = a->B * a->n_heads;
    int nthreads = omp_get_max_threads();
    float *buf = scratch(be, (size_t)nthreads * (size_t)(Tk + hd));
    if (!buf) return fail(be, "attention: out of memory for scores");
    int accum_heads_serial = a->probs_accum != NULL;
#pragma omp parallel for schedule(dynamic) if (!accum_heads_serial && (int64_t)nbh * a->Tq * Tk * hd > PAR_MIN)
    for (int bh = 0; bh < nbh; bh++) {
        const int b = bh / a->n_heads, h = bh % a->n_heads, kvh = h / group;
        float *s = buf + (size_t)omp_get_thread_num() * (size_t)(Tk + hd);
        float *acc = s + Tk;
        const int32_t *mask = a->key_mask ? a->key_mask + (int64_t)b * Tk : NULL;
        for (int64_t i = 0; i < a->Tq; i++) {
            const float *q = a->q + b * a->q_bstride + i * a->q_stride + h * hd;
            float *o = a->out + b * a->o_bstride + i * a->o_stride + h * hd;
            int64_t lim = key_limit(a, b, i);
            for (int64_t j = 0; j < lim; j++) {
                const float *k = a->k + b * a->k_bstride + j * a->k_stride + kvh * hd;
                float d = 0.0f;
                for (int64_t c = 0; c < hd; c++) d += q[c] * k[c];
                s[j] = d * a->scale;
            }
            if (!softmax_row(s, lim, mask)) {
                memset(o, 0, (size_t)hd * sizeof(float));
                continue;
            }
            memset(acc, 0, (size_t)hd * sizeof(float));
            for (int64_t j = 0; j < lim; j++) {
                if (s[j] == 0.0f) continue;
                const float *v = a->v + b * a->v_bstride + j * a->v_stride + kvh * hd;
                for (int64_t c = 0; c < hd; c++) acc[c] += s[j] * v[c];
            }
            memcpy(o, acc, (size_t)hd * sizeof(float));
            if (a->probs_accum) {
                float *pa = a->probs_accum + ((int64_t)b * a->Tq + i) * Tk;
                for (int64_t j = 0; j < lim; j++) pa[j] += s[j];
            }
        }
    }
    return 0;
}

/* Many queries (prefill, encoders): per (batch, head, query block) two sgemms around a row softmax. */
static int attention_blocked(tg_backend *be, const tg_attention *a) {
    const int64_t hd = a->head_dim, Tk = a->Tk;
    const int group = a->n_heads / a->n_kv_heads;
    float *slab = scratch(be, (size_t)QBLOCK * (size_t)Tk);
    if (!slab) return fail(be, "attention: out of memory for scores");
    for (int b = 0; b < a->B; b++) {
        const int32_t *mask = a->key_mask ? a->key_mask + (int64_t)b * Tk : NULL;
        for (int h = 0; h < a->n_heads; h++) {
            const int kvh = h / group;
            const float *kb = a->k + b * a->k_bstride + kvh * hd;
            const float *vb = a->v + b * a->v_bstride + kvh * hd;
            for (int64_t i0 = 0; i0 < a->Tq; i0 += QBLOCK) {
                const int64_t nq = a->Tq - i0 < QBLOCK ? a->Tq - i0 : QBLOCK;
                const int64_t kmax = key_limit(a, b, i0 + nq - 1); /* widest row of the block */
                const float *qb = a->q + b * a->q_bstride + i0 * a->q_stride + h * hd;
                float *ob = a->out + b * a->o_bstride + i0 * a->o_stride + h * hd;
                if (kmax == 0) {
                    for (int64_t i = 0; i < nq; i++) memset(ob + i * a->o_stride, 0, (size_t)hd * sizeof(float));
                    continue;
                }
                /* slab (nq, kmax) = scale * q_blk @ k^T */
                double t0 = omp_get_wtime();
                SGEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)kmax, (int)hd, a->scale, qb,
                      (int)a->q_stride, kb, (int)a->k_stride, 0.0f, slab, (int)kmax);
                count_gemm(t0);
                int empty = 0;
#pragma omp parallel for schedule(static) reduction(| : empty)
                for (int64_t i = 0; i < nq; i++) {
                    float *s = slab + i * kmax;
                    int64_t lim = key_limit(a, b, i0 + i);
                    int ok = softmax_row(s, lim, mask);
                    for (int64_t j = lim; j < kmax; j++) s[j] = 0.0f;
                    if (!ok) {
                        memset(s, 0, (size_t)kmax * sizeof(float));
                        empty = 1;
                    }
                    if (a->probs_accum) {
                        float *pa = a->probs_accum + ((int64_t)b * a->Tq + i0 + i) * Tk;
                        for (int64_t j = 0; j < kmax; j++) pa[j] += s[j];
                    }
                }
                (void)empty; /* an all-masked row has zero probabilities, so its output is zero */
                /* out_blk (nq, hd) = slab @ v */
                t0 = omp_get_wtime();
                SGEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)hd, (int)kmax, 1.0f, slab, (int)kmax, vb,
                      (int)a->v_stride, 0.0f, ob, (int)a->o_stride);
                count_gemm(t0);
            }
        }
    }
    return 0;
}

static int cpu_attention(tg_backend *be, const tg_attention *a) {
    if (a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads) return fail(be, "attention: n_heads must be a multiple of n_kv_heads");
    if (a->Tq <= 0 || a->B <= 0) return 0;
    if (a->Tq <= 4) return attention_direct(be, a);
    return attention_blocked(be, a);
}

/* ---- gathers ---- */

static int cpu_embedding(tg_backend *be, const tg_weight *t, const int32_t *ids, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->rows) return fail(be, "embedding: id out of range");
    for (int64_t i = 0; i < n; i++) tg_dequant_rows(t->dtype, t->data, ids[i], 1, t->cols, out + i * t->cols);
    return 0;
}

static int cpu_gather_rows(tg_backend *be, const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim) {
    (void)be;
    for (int64_t i = 0; i < n; i++) memcpy(dst + i * dim, src + (int64_t)idx[i] * dim, (size_t)dim * sizeof(float));
    return 0;
}

static int cpu_scatter_rows(tg_backend *be, const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim) {
    (void)be;
    for (int64_t i = 0; i < n; i++) memcpy(dst + (int64_t)idx[i] * dim, src + i * dim, (size_t)dim * sizeof(float));
    return 0;
}

/* ---- image ops ---- */

static int cpu_im2col(tg_backend *be, const float *pix, float *cols, int B, int C, int S, int P) {
    (void)be;
    const int G = S / P;
    const int64_t rowlen = (int64_t)C * P * P;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int p = 0; p < G * G; p++) {
            const int py = p / G, px = p % G;
            float *row = cols + ((int64_t)b * G * G + p) * rowlen;
            for (int c = 0; c < C; c++)
                for (int ky = 0; ky < P; ky++) {
                    const float *src = pix + (((int64_t)b * C + c) * S + py * P + ky) * S + px * P;
                    memcpy(row + ((int64_t)c * P + ky) * P, src, (size_t)P * sizeof(float));
                }
        }
    return 0;
}

/* PyTorch upsample_bilinear2d, align_corners=False, scale_factor 2: source index (d + 0.5) * 0.5 - 0.5, clamped at 0. */
static inline void bilinear_src(int d, int in, int *i0, int *i1, float *l1) {
    float s = ((float)d + 0.5f) * 0.5f - 0.5f;
    if (s < 0.0f) s = 0.0f;
    int i = (int)s;
    *i0 = i;
    *i1 = i + (i < in - 1 ? 1 : 0);
    *l1 = s - (float)i;
}

static int cpu_upscale_tiles(tg_backend *be, const float *pix, float *tiles, int B, int C, int S) {
    (void)be;
#pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < 4; t++)
            for (int c = 0; c < C; c++) {
                const float *src = pix + ((int64_t)b * C + c) * S * S;
                float *dst = tiles + (((int64_t)b * 4 + t) * C + c) * S * S;
                const int oy = (t / 2) * S, ox = (t % 2) * S;
                for (int y = 0; y < S; y++) {
                    int y0, y1;
                    float ly;
                    bilinear_src(oy + y, S, &y0, &y1, &ly);
                    for (int x = 0; x < S; x++) {
                        int x0, x1;
                        float lx;
                        bilinear_src(ox + x, S, &x0, &x1, &lx);
                        float top = (1.0f - lx) * src[y0 * S + x0] + lx * src[y0 * S + x1];
                        float bot = (1.0f - lx) * src[y1 * S + x0] + lx * src[y1 * S + x1];
                        dst[y * S + x] = (1.0f - ly) * top + ly * bot;
                    }
                }
            }
    return 0;
}

/* ---- rotary, argmax ---- */

static int cpu_rope(tg_backend *be, float *x, int64_t rows, int64_t row_stride, int n_heads, int head_dim,
                    const int32_t *pos, float theta) {
    if (head_dim % 2) return fail(be, "rope: head_dim is odd (rotate-half needs pairs)");
    const int half = head_dim / 2;
#pragma omp parallel for schedule(static) if (rows * n_heads * head_dim > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        for (int i = 0; i < half; i++) {
            float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
            float ang = (float)pos[r] * inv_freq;
            float c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < n_heads; h++) {
                float *v = x + r * row_stride + (int64_t)h * head_dim;
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
    }
    return 0;
}

static int cpu_argmax(tg_backend *be, const float *x, int64_t rows, int64_t cols, int32_t *out) {
    (void)be;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        int64_t best = 0; /* first max wins; NaN is the largest value: the first NaN wins (as NumPy) */
        for (int64_t c = 1; c < cols && xr[best] == xr[best]; c++)
            if (xr[c] > xr[best] || xr[c] != xr[c]) best = c;
        out[r] = (int32_t)best;
    }
    return 0;
}

static void cpu_destroy(tg_backend *be) {
    if (!be) return;
    cpu_impl *im = be->impl;
    if (im) {
        free(im->scratch);
        free(im->acts);
    }
    free(im);
    free(be);
}

tg_backend *tg_cpu_backend_create(char *err, size_t errlen) {
    tg_backend *be = calloc(1, sizeof *be);
    cpu_impl *im = calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        snprintf(err, errlen, "cpu backend: out of memory");
        return NULL;
    }
    be->name = "cpu";
    be->impl = im;
    be->destroy = cpu_destroy;
    be->alloc = cpu_alloc;
    be->release = cpu_release;
    be->to_device = cpu_memcpy;
    be->to_host = cpu_memcpy;
    be->copy = cpu_memcpy;
    be->sync = cpu_sync;
    be->weight_alloc = cpu_weight_alloc;
    be->weight_write = cpu_weight_write;
    be->weight_release = cpu_weight_release;
    be->linear = cpu_linear;
    be->layernorm = cpu_layernorm;
    be->rmsnorm = cpu_rmsnorm;
    be->attention = cpu_attention;
    be->activation = cpu_activation;
    be->silu_mul = cpu_silu_mul;
    be->add_bcast = cpu_add_bcast;
    be->embedding = cpu_embedding;
    be->gather_rows = cpu_gather_rows;
    be->scatter_rows = cpu_scatter_rows;
    be->im2col = cpu_im2col;
    be->upscale_tiles = cpu_upscale_tiles;
    be->rope = cpu_rope;
    be->argmax = cpu_argmax;
    be->row_bytes = cpu_row_bytes;
    be->exact_rows = cpu_exact_rows;
    return be;
}
