/* common.cuh -- shared state and helpers of the CUDA backend.
 *
 * tg_cuda_impl is the backend's private state (be->impl): one stream on which
 * every op runs in order, the cuBLASLt and cuBLAS handles, the cuBLASLt
 * workspace, growable scratch buffers (activations cast to bf16/fp16 for
 * the GEMMs, partial results of split-K decode attention) and rope's
 * inv_freq tables.  Scratch buffers
 * grow only when a call needs more than they hold (geometrically), so the
 * decode loop allocates nothing once warm.
 *
 * Error handling: CUDA_CHECK / CUBLAS_CHECK evaluate a call and, on failure,
 * clear the error where it happened (so it is never reported by a later op),
 * write "<file>:<line>: <statement>: <error string>" into be->err (saying so
 * when the CUDA context is lost for good) and return -1 from the enclosing
 * function.  CUDA_TRY / CUBLAS_TRY do the same but jump
 * to a local `fail:` label instead, for functions that must free what they
 * allocated.  Nothing here exits the process.
 *
 * Every op family (.cu file) has three layers: the __global__ kernels, a
 * launcher taking raw pointers and a cudaStream_t (declared in launchers.cuh,
 * returning cudaError_t), and the backend-table entry cuda_<op> declared below.
 */
#ifndef TG_KERNELS_COMMON_CUH
#define TG_KERNELS_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"

/* ---- errors ------------------------------------------------------------- */

void tg_cuda_set_err(tg_backend *be, const char *fmt, ...);
const char *tg_cublas_status_str(cublasStatus_t s);
/* A failed CUDA call: clears the error at once (cudaGetLastError), so that the next op's launch check
 * does not report it as its own, and writes "<file>:<line>: <stmt>: <error>" into be->err, adding that
 * the CUDA context is lost for good when the error is sticky (every later call fails). */
void tg_cuda_fail(tg_backend *be, const char *file, int line, const char *stmt, cudaError_t e);

#define CUDA_CHECK(be, stmt)                                                                      \
    do {                                                                                          \
        cudaError_t e_ = (stmt);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            tg_cuda_fail((be), __FILE__, __LINE__, #stmt, e_);                                    \
            return -1;                                                                            \
        }                                                                                         \
    } while (0)

#define CUBLAS_CHECK(be, stmt)                                                                    \
    do {                                                                                          \
        cublasStatus_t s_ = (stmt);                                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                        \
            (void)cudaGetLastError();                                                             \
            tg_cuda_set_err((be), "%s:%d: %s: %s", __FILE__, __LINE__, #stmt, tg_cublas_status_str(s_)); \
            return -1;                                                                            \
        }                                                                                         \
    } while (0)

/* Variants that `goto fail` (caller frees its resources there). */
#define CUDA_TRY(be, stmt)                                                                        \
    do {                                                                                          \
        cudaError_t e_ = (stmt);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            tg_cuda_fail((be), __FILE__, __LINE__, #stmt, e_);                                    \
            goto fail;                                                                            \
        }                                                                                         \
    } while (0)

#define CUBLAS_TRY(be, stmt)                                                                      \
    do {                                                                                          \
        cublasStatus_t s_ = (stmt);                                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                        \
            (void)cudaGetLastError();                                                             \
            tg_cuda_set_err((be), "%s:%d: %s: %s", __FILE__, __LINE__, #stmt, tg_cublas_status_str(s_)); \
            goto fail;                                                                            \
        }                                                                                         \
    } while (0)

/* Check the launch of the kernel(s) just issued (configuration errors). */
#define CUDA_CHECK_LAUNCH(be) CUDA_CHECK(be, cudaGetLastError())

/* ---- private state ------------------------------------------------------- */

/* One cached cuBLASLt plan: descriptors and the chosen algorithm for a
 * (M, N, K, dtype, epilogue, pointer alignments) combination. */
typedef struct tg_lt_plan {
    int used;
    int64_t M, N, K;
    int dtype;       /* weight dtype (A and B types) */
    int epi_bias;    /* CUBLASLT_EPILOGUE_BIAS vs DEFAULT */
    int beta_one;    /* C (residual) is added */
    int alignB, alignC, alignD; /* alignment in bytes assumed by the heuristic */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c, d;
    cublasLtMatmulAlgo_t algo;
    int algo_found;  /* 0: cuBLASLt offered nothing, use the cublasGemmEx fallback */
    uint64_t last_use;
} tg_lt_plan;

#define TG_LT_PLAN_CACHE 64

/* rope's inv_freq[head_dim / 2] for one (theta, head_dim), on the device,
 * computed on the host like the CPU backend (elementwise.cu). */
typedef struct tg_rope_table {
    uint32_t theta_bits; /* theta's float32 bit pattern */
    int head_dim;
    float *inv_freq;     /* NULL: slot empty */
} tg_rope_table;

#define TG_ROPE_TABLES 8

typedef struct tg_cuda_impl {
    cudaStream_t stream;
    cublasHandle_t cublas;
    cublasLtHandle_t lt;
    void *workspace;          /* cuBLASLt workspace */
    size_t workspace_bytes;
    void *cast_buf;           /* activations cast to bf16/fp16, grows */
    size_t cast_bytes;
    float *gemm_buf;          /* GEMM result when the residual aliases y and an activation follows */
    size_t gemm_bytes;
    void *attn_buf;           /* attention partials / row stats, grows */
    size_t attn_bytes;
    int sm_count;
    size_t smem_optin;        /* max dynamic shared memory per block */
    tg_lt_plan plans[TG_LT_PLAN_CACHE];
    uint64_t plan_clock;
    int lt_failures;          /* cublasLtMatmul calls that failed and were redone with cublasGemmEx */
    tg_rope_table rope[TG_ROPE_TABLES];
    int rope_next;            /* slot the next new table goes to (round robin) */
    int *flag;                /* one device int: embedding's out-of-range report */
    /* weight_write's staging ring (allocated at the first write): TG_STAGE_SLOTS pinned host buffers and
     * device float buffers of TG_STAGE_FLOATS each; slot i is free again once staged[i] has completed */
    float *pin[2];
    float *dstage[2];
    cudaEvent_t staged[2];
    int stage_next;
} tg_cuda_impl;

#define TG_STAGE_SLOTS 2
#define TG_STAGE_FLOATS ((size_t)4 << 20) /* 16 MiB of float32 per slot */

static inline tg_cuda_impl *tg_impl(tg_backend *be) { return (tg_cuda_impl *)be->impl; }

/* Make be->device the calling thread's current device.  The current device is
 * per host thread: a backend created for device N and then driven from another
 * thread (tgllava's generate_stream runs generate in a worker thread), or after
 * another backend switched the thread to its own device, would otherwise
 * allocate on the wrong device and launch into a stream of another device
 * (cudaErrorInvalidResourceHandle).  Every table entry calls this first. */
static inline int tg_cuda_use(tg_backend *be) {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur == be->device) return 0;
    cudaError_t e = cudaSetDevice(be->device);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        tg_cuda_set_err(be, "cudaSetDevice(%d): %s", be->device, cudaGetErrorString(e));
        return -1;
    }
    return 0;
}
#define TG_CUDA_USE(be)                  \
    do {                                 \
        if (tg_cuda_use(be)) return -1;  \
    } while (0)

/* Make sure *buf holds at least `bytes` (grows x1.5 over the request; the
 * stream is synchronized before the old buffer is freed). */
int tg_cuda_grow(tg_backend *be, void **buf, size_t *cap, size_t bytes);

/* ---- numeric helpers ----------------------------------------------------- */

__device__ __forceinline__ float tg_to_float(float x) { return x; }
__device__ __forceinline__ float tg_to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float tg_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

/* float32 -> storage type, round to nearest even; float16 saturates at +-65504 (infinities too) instead of
 * becoming inf, NaN stays NaN.  Weights beyond the float16 range are refused before they get here
 * (weight_write), so saturation only ever applies to activations. */
#define TG_F16_MAX 65504.0f
template <typename T> __device__ __forceinline__ T tg_from_float(float x);
template <> __device__ __forceinline__ float tg_from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half tg_from_float<__half>(float x) {
    return __float2half_rn(x > TG_F16_MAX ? TG_F16_MAX : x < -TG_F16_MAX ? -TG_F16_MAX : x);
}
template <> __device__ __forceinline__ __nv_bfloat16 tg_from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/* The activation-precision rule of every product (backend.h): an activation multiplied by a weight stored
 * as WT is first rounded to WT (bf16 / saturating f16; float32 unchanged), accumulation stays float32. */
template <typename WT> __device__ __forceinline__ float tg_round_act(float x) { return tg_to_float(tg_from_float<WT>(x)); }

/* Activations (exact, no fast-math intrinsics). */
__device__ __forceinline__ float tg_act_apply(float x, int act) {
    switch (act) {
    case TG_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
    case TG_ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    case TG_ACT_SILU: return x / (1.0f + expf(-x));
    case TG_ACT_GELU_TANH: return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    default: return x;
    }
}

__device__ __forceinline__ float tg_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float tg_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static inline size_t tg_dtype_size(int dtype) { return dtype == TG_F32 ? 4 : 2; }

/* Number of blocks for a grid-stride loop over n items. */
static inline unsigned tg_grid_for(int64_t n, int threads, int sm_count) {
    int64_t b = (n + threads - 1) / threads;
    int64_t cap = (int64_t)(sm_count > 0 ? sm_count : 80) * 32;
    if (b > cap) b = cap;
    if (b < 1) b = 1;
    return (unsigned)b;
}

/* ---- backend-table entries, one per op (defined in the family files) ----- */
extern "C++" {
int cuda_linear(tg_backend *be, const float *x, const tg_weight *w, const float *bias, const float *residual,
                float *y, int64_t M, int act);
int cuda_layernorm(tg_backend *be, const float *x, const float *gamma, const float *beta, float *y, int64_t rows,
                   int64_t dim, float eps);
int cuda_rmsnorm(tg_backend *be, const float *x, const float *gamma, float *y, int64_t rows, int64_t dim, float eps);
int cuda_attention(tg_backend *be, const tg_attention *a);
int cuda_activation(tg_backend *be, float *x, int64_t n, int act);
int cuda_silu_mul(tg_backend *be, const float *gu, float *out, int64_t rows, int64_t F);
int cuda_add_bcast(tg_backend *be, float *y, const float *x, int64_t outer, int64_t n);
int cuda_embedding(tg_backend *be, const tg_weight *table, const int32_t *ids, float *out, int64_t n);
int cuda_gather_rows(tg_backend *be, const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim);
int cuda_scatter_rows(tg_backend *be, const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim);
int cuda_im2col(tg_backend *be, const float *pix, float *cols, int B, int C, int S, int P);
int cuda_upscale_tiles(tg_backend *be, const float *pix, float *tiles, int B, int C, int S);
int cuda_rope(tg_backend *be, float *x, int64_t rows, int64_t row_stride, int n_heads, int head_dim,
              const int32_t *pos, float theta);
int cuda_argmax(tg_backend *be, const float *x, int64_t rows, int64_t cols, int32_t *out);

/* gemm.cu: free the cached cuBLASLt plans (called by destroy). */
void tg_lt_plans_free(tg_cuda_impl *impl);
/* elementwise.cu: free rope's inv_freq tables (called by destroy). */
void tg_rope_tables_free(tg_cuda_impl *impl);
}

#include "launchers.cuh"

#endif /* TG_KERNELS_COMMON_CUH */
