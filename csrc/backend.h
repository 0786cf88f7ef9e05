/* backend.h -- the op table every backend fills in.
 *
 * The model code (csrc/model/) is written once against this table and never
 * calls a CPU or CUDA function directly.  A backend owns its memory: every
 * pointer passed to an op below is *backend memory* (host memory for the CPU
 * backend, device memory for CUDA) unless the comment says "host".
 *
 * Activations are float32 everywhere between ops.  Large matrices (Linear
 * weights and embedding tables) are tg_weight: rows x cols in PyTorch's
 * (out, in) layout, stored in the backend's storage dtype (CPU: f32, f16,
 * bf16, int8 or int4 blocks; CUDA: f32, f16, bf16); products accumulate in
 * float32 whatever the storage.
 *
 * Activation rule of `linear`, one per storage format on every backend and
 * every path (GEMV, tiles, cuBLASLt; any M): with bfloat16 weights the
 * activations are rounded to bfloat16 (round to nearest even) before the
 * products; with float16 weights to float16 (nearest even), saturating at
 * +-65504 instead of becoming inf; with int8/int4 weights (CPU) quantised per
 * 32 input features as llama.cpp's q8_0 (d = max|x| / 127 in float32, q =
 * round-to-even(x / d)), a block with a non-finite value giving NaN; with
 * float32 weights they stay float32.  CPU: a product with compact weights
 * gives every row the same bits as that row alone, for every M; float32
 * weights do up to TG_CPU_EXACT_ROWS rows (sgemm above).  CUDA: products of up
 * to 16 rows (the scheduler's decode chunks) give every row its bits alone.
 *
 * Every op returns 0 on success, or -1 after writing a message into be->err
 * (ops never exit the process).  Ops run in order on the backend's single
 * stream; be->sync waits for them.  A backend is not thread-safe: one thread
 * at a time drives it (a Model serializes on its lock; the Python op
 * functions keep the GIL).
 *
 * Shared behaviour on edge inputs (every backend): an embedding id outside
 * the table is an error ("id out of range"); rope refuses an odd head_dim;
 * argmax returns the first maximum, NaN counting as larger than any number
 * (the first NaN wins, as NumPy); weight_write refuses float16 values beyond
 * +-65504.
 */
#ifndef TG_BACKEND_H
#define TG_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Storage of a tg_weight.  The block formats quantise each row in blocks of
 * TG_QBLOCK consecutive input features with one float16 scale d per block:
 *   TG_Q8: 32 int8 q, value = d * q (symmetric, d = max|w| / 127): 8.5 bits per weight;
 *   TG_Q4: 32 4-bit q, value = d * (q - 8) (d = w of largest |w| / -8): 4.5 bits per weight.
 * They need cols % TG_QBLOCK == 0 (the model falls back to TG_F16 otherwise). */
enum tg_dtype { TG_F32 = 0, TG_F16 = 1, TG_BF16 = 2, TG_Q8 = 3, TG_Q4 = 4, TG_DTYPE_COUNT = 5 };
#define TG_QBLOCK 32

enum tg_act {
    TG_ACT_NONE = 0,
    TG_ACT_GELU = 1,       /* exact erf GELU: 0.5 x (1 + erf(x / sqrt 2)) */
    TG_ACT_QUICK_GELU = 2, /* x * sigmoid(1.702 x) */
    TG_ACT_SILU = 3,       /* x * sigmoid(x) */
    TG_ACT_GELU_TANH = 4,  /* tanh GELU (PyTorch approximate="tanh", SigLIP): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    TG_ACT_COUNT = 5
};

typedef struct tg_weight {
    void *data;      /* backend memory, rows*cols elements of dtype */
    int dtype;       /* enum tg_dtype */
    int64_t rows;    /* out features (or vocabulary for tables) */
    int64_t cols;    /* in features (or width for tables) */
} tg_weight;

/* Scaled dot-product attention over heads laid out inside token rows:
 * token t of batch b of q starts at q + b*q_bstride + t*q_stride, and head h
 * occupies [h*head_dim, (h+1)*head_dim) of that row (same for k, v, out).
 * Query head h reads key/value head h / (n_heads / n_kv_heads).
 * Key j is visible to query i of batch b iff all of:
 *   j < kv_len[b]                         (kv_len NULL: j < Tk)
 *   !causal or j <= q_pos[b] + i          (q_pos NULL: q_pos[b] = Tk - Tq)
 *   key_mask == NULL or key_mask[b*Tk + j] != 0
 * A query with no visible key gets a zero output row.
 * probs_accum, when not NULL, is (B, Tq, Tk) float32 and receives += the
 * softmax probabilities summed over heads (for attention maps). */
typedef struct tg_attention {
    const float *q, *k, *v;
    float *out;
    int64_t q_stride, k_stride, v_stride, o_stride;     /* floats between tokens */
    int64_t q_bstride, k_bstride, v_bstride, o_bstride; /* floats between batch items */
    int B, Tq, Tk, n_heads, n_kv_heads, head_dim;
    float scale;
    int causal;
    const int32_t *q_pos;    /* (B) or NULL */
    const int32_t *kv_len;   /* (B) or NULL */
    const int32_t *key_mask; /* (B, Tk) or NULL */
    float *probs_accum;      /* (B, Tq, Tk) or NULL */
} tg_attention;

typedef struct tg_backend tg_backend;
struct tg_backend {
    const char *name;  /* "cpu", "cuda" */
    int device;        /* CUDA ordinal, 0 for cpu */
    void *impl;        /* backend private state */
    char err[512];     /* message of the last failure */

    void (*destroy)(tg_backend *be);

    /* memory: alloc returns NULL and sets err on failure.  to_device has read the host buffer when it
     * returns (the caller may free it at once); to_host has written it when it returns. */
    void *(*alloc)(tg_backend *be, size_t bytes);
    void (*release)(tg_backend *be, void *p);
    int (*to_device)(tg_backend *be, void *dst, const void *host_src, size_t bytes);
    int (*to_host)(tg_backend *be, void *host_dst, const void *src, size_t bytes);
    int (*copy)(tg_backend *be, void *dst, const void *src, size_t bytes);
    int (*sync)(tg_backend *be);

    /* What the backend stores and how its products treat rows (ggml's supports_op habit: model code asks
     * the backend, never a backend's own functions).  row_bytes: bytes of one stored row of `cols` features
     * in `dtype`, 0 when the backend cannot store dtype.  exact_rows: a `linear` with weights in dtype of at
     * most this many rows gives every row the same bits as that row alone; 0 = of any number of rows. */
    size_t (*row_bytes)(tg_backend *be, int dtype, int64_t cols);
    int (*exact_rows)(tg_backend *be, int dtype);

    /* Weights are filled in slices so that a checkpoint is never expanded to float32 as a whole:
     * weight_alloc gives w (rows, cols) storage in `dtype` (a backend refuses a dtype it cannot store,
     * and the block formats need cols % TG_QBLOCK == 0); weight_write converts rows [row0, row0 + n)
     * from host float32 (n, cols) into it (the caller may free `host` on return). */
    int (*weight_alloc)(tg_backend *be, tg_weight *w, int64_t rows, int64_t cols, int dtype);
    int (*weight_write)(tg_backend *be, tg_weight *w, int64_t row0, int64_t n, const float *host);
    void (*weight_release)(tg_backend *be, tg_weight *w);

    /* y(M, w->rows) = act(x(M, w->cols) @ w^T + bias) + residual.
     * bias (w->rows) and residual (M, w->rows) may be NULL; residual may equal y. */
    int (*linear)(tg_backend *be, const float *x, const tg_weight *w, const float *bias,
                  const float *residual, float *y, int64_t M, int act);

    /* Row-wise norms over the last dimension; y may equal x. */
    int (*layernorm)(tg_backend *be, const float *x, const float *gamma, const float *beta, float *y,
                     int64_t rows, int64_t dim, float eps);
    int (*rmsnorm)(tg_backend *be, const float *x, const float *gamma, float *y, int64_t rows, int64_t dim, float eps);

    int (*attention)(tg_backend *be, const tg_attention *a);

    /* x[i] = act(x[i]) for i < n, in place */
    int (*activation)(tg_backend *be, float *x, int64_t n, int act);
    /* out(rows, F) = silu(gu[:, :F]) * gu[:, F:], gu is (rows, 2F) */
    int (*silu_mul)(tg_backend *be, const float *gu, float *out, int64_t rows, int64_t F);
    /* y[o*n + i] += x[i] for o < outer, i < n  (outer = 1 is a plain add) */
    int (*add_bcast)(tg_backend *be, float *y, const float *x, int64_t outer, int64_t n);

    /* out(n, table->cols) = table[ids[i]] ; ids (n) int32; an id outside [0, rows) is an error */
    int (*embedding)(tg_backend *be, const tg_weight *table, const int32_t *ids, float *out, int64_t n);
    /* dst(n, dim) = src[idx[i]] rows; idx (n) int32 */
    int (*gather_rows)(tg_backend *be, const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim);
    /* dst rows idx[i] (rows of dim floats) = src(n, dim) row i; idx (n) int32, distinct */
    int (*scatter_rows)(tg_backend *be, const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim);

    /* pixels (B, C, S, S) -> cols (B * (S/P)^2, C*P*P), patches row-major,
     * each row ordered (c, ky, kx) like a conv weight (D, C, P, P). */
    int (*im2col)(tg_backend *be, const float *pix, float *cols, int B, int C, int S, int P);
    /* pixels (B, C, S, S) -> tiles (B, 4, C, S, S): bilinear 2x upscale,
     * align_corners=False, then crops TL, TR, BL, BR. */
    int (*upscale_tiles)(tg_backend *be, const float *pix, float *tiles, int B, int C, int S);

    /* Rotary embedding, rotate-half layout, in place on the first n_heads
     * heads of each row: x (rows, row_stride), pos (rows) int32; head_dim even. */
    int (*rope)(tg_backend *be, float *x, int64_t rows, int64_t row_stride, int n_heads, int head_dim,
                const int32_t *pos, float theta);

    /* out (rows) int32 = argmax over cols of x (rows, cols), first max wins, the first NaN over any number */
    int (*argmax)(tg_backend *be, const float *x, int64_t rows, int64_t cols, int32_t *out);
};

/* alloc + write of a whole matrix (tests and the op checks) */
static inline int tg_weight_upload(tg_backend *be, tg_weight *w, const float *host, int64_t rows, int64_t cols,
                                   int dtype) {
    if (be->weight_alloc(be, w, rows, cols, dtype)) return -1;
    if (rows > 0 && be->weight_write(be, w, 0, rows, host)) {
        be->weight_release(be, w);
        return -1;
    }
    return 0;
}

/* Backends.  Each returns NULL and writes err (size errlen) on failure. */
tg_backend *tg_cpu_backend_create(char *err, size_t errlen);
/* seconds the CPU backend spent in matrix products since the last reset (process-wide) */
double tg_cpu_gemm_seconds(int reset);
/* bytes of one stored row of `cols` features in `dtype` (0 for an unknown dtype) */
size_t tg_cpu_row_bytes(int dtype, int64_t cols);
/* the CPU kernels in use: "avx2" (AVX2 + FMA + F16C, detected at run time) or "portable";
 * TGLLAVA_CPU_KERNELS=portable in the environment forces the portable C path */
const char *tg_cpu_kernels(void);
/* the CPU backend's float32 products of at most this many rows compute every row exactly as that row
 * alone (the GEMV kernel); larger ones go through sgemm, equal to rounding only.  Compact formats are
 * exact per row for every M (matmul.c). */
#define TG_CPU_EXACT_ROWS 16
#ifdef TG_WITH_CUDA
tg_backend *tg_cuda_backend_create(int device, char *err, size_t errlen);
/* Memory and streams of other libraries (the binding's device arrays):
 * the device ordinal of memory at p (device or managed memory), -1 for memory CUDA does not know as a
 * device's (host, pageable or pinned), -2 with be->err set when CUDA fails; */
int tg_cuda_pointer_device(tg_backend *be, const void *p);
/* the backend's cudaStream_t as an integer (what __dlpack__(stream=...) takes); */
uintptr_t tg_cuda_stream(tg_backend *be);
/* make the backend's stream wait for the work queued so far on `stream` (1: the legacy default
 * stream, 2: the per-thread default stream, else a cudaStream_t), without waiting on the host */
int tg_cuda_wait_stream(tg_backend *be, uintptr_t stream);
#endif

#ifdef __cplusplus
}
#endif
#endif /* TG_BACKEND_H */
