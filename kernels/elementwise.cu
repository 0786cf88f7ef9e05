/* elementwise.cu -- memory-bound ops of the CUDA backend.
 *
 * activation, silu_mul, add_bcast, embedding, gather_rows, scatter_rows, rope, im2col,
 * upscale_tiles, argmax, plus two helpers of gemm.cu and weight_upload: the
 * float32 -> bf16/fp16 cast and the GEMM epilogue y = act(y + bias) + residual.
 *
 * All kernels are grid-stride loops over 64-bit indices (launch: 256 threads,
 * at most 32 blocks per SM), vectorized with float4 where the shape and the
 * pointer alignment allow, with a scalar path otherwise.  Math is exact
 * float32 (erff/expf/sincosf, no fast-math intrinsics) to stay close to the
 * CPU backend; rope's inv_freq table is computed on the host (bit-identical).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

#define EW_THREADS 256

static int g_sm_count = 0; /* cached for grid sizing in launchers (no backend handle there) */
static unsigned ew_grid(int64_t n) {
    if (g_sm_count == 0) {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess)
            g_sm_count = v;
        else
            (void)cudaGetLastError();
    }
    return tg_grid_for(n, EW_THREADS, g_sm_count);
}

static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* ---- casts and the GEMM epilogue ----------------------------------------- */

template <typename T>
__global__ void cast_f32_kernel(const float *__restrict__ x, T *__restrict__ y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = tg_from_float<T>(x[i]);
}

/* 4 elements per thread: x 16-byte aligned, y 8-byte aligned, n4 = n / 4 */
template <typename T>
__global__ void cast_f32_vec_kernel(const float4 *__restrict__ x, T *__restrict__ y, int64_t n4) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
        float4 v = x[i];
        T *o = y + 4 * i;
        o[0] = tg_from_float<T>(v.x);
        o[1] = tg_from_float<T>(v.y);
        o[2] = tg_from_float<T>(v.z);
        o[3] = tg_from_float<T>(v.w);
    }
}

cudaError_t tg_launch_cast_f32(const float *x, void *y, int dtype, int64_t n, cudaStream_t s) {
    if (n <= 0) return cudaSuccess;
    if (dtype == TG_F32) return cudaMemcpyAsync(y, x, (size_t)n * 4, cudaMemcpyDeviceToDevice, s);
    const bool vec = (n % 4 == 0) && aligned16(x) && (((uintptr_t)y & 7) == 0);
    const int64_t work = vec ? n / 4 : n;
    unsigned g = ew_grid(work);
    if (dtype == TG_F16) {
        if (vec) cast_f32_vec_kernel<__half><<<g, EW_THREADS, 0, s>>>((const float4 *)x, (__half *)y, n / 4);
        else cast_f32_kernel<__half><<<g, EW_THREADS, 0, s>>>(x, (__half *)y, n);
    } else {
        if (vec) cast_f32_vec_kernel<__nv_bfloat16><<<g, EW_THREADS, 0, s>>>((const float4 *)x, (__nv_bfloat16 *)y, n / 4);
        else cast_f32_kernel<__nv_bfloat16><<<g, EW_THREADS, 0, s>>>(x, (__nv_bfloat16 *)y, n);
    }
    return cudaGetLastError();
}

/* y (M, N) = act(src + bias) + residual; src NULL counts as 0; src and
 * residual may equal y (each element is read and written by one thread) */
__global__ void bias_act_residual_kernel(float *y, const float *src, const float *__restrict__ bias,
                                         const float *residual, int64_t M, int64_t N, int act) {
    const int64_t total = M * N;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        float v = src ? src[i] : 0.0f;
        if (bias) v += bias[i % N];
        v = tg_act_apply(v, act);
        if (residual) v += residual[i];
        y[i] = v;
    }
}

cudaError_t tg_launch_bias_act_residual(float *y, const float *src, const float *bias, const float *residual, int64_t M,
                                        int64_t N, int act, cudaStream_t s) {
    if (M * N <= 0) return cudaSuccess;
    if (src == y && !bias && !residual && act == TG_ACT_NONE) return cudaSuccess;
    bias_act_residual_kernel<<<ew_grid(M * N), EW_THREADS, 0, s>>>(y, src, bias, residual, M, N, act);
    return cudaGetLastError();
}

/* ---- activation, silu_mul, add_bcast -------------------------------------- */

__global__ void activation_vec_kernel(float4 *x, int64_t n4, int act) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
        float4 v = x[i];
        v.x = tg_act_apply(v.x, act);
        v.y = tg_act_apply(v.y, act);
        v.z = tg_act_apply(v.z, act);
        v.w = tg_act_apply(v.w, act);
        x[i] = v;
    }
}

__global__ void activation_kernel(float *x, int64_t n, int act) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = tg_act_apply(x[i], act);
}

cudaError_t tg_launch_activation(float *x, int64_t n, int act, cudaStream_t s) {
    if (n <= 0 || act == TG_ACT_NONE) return cudaSuccess;
    if (n % 4 == 0 && aligned16(x))
        activation_vec_kernel<<<ew_grid(n / 4), EW_THREADS, 0, s>>>((float4 *)x, n / 4, act);
    else
        activation_kernel<<<ew_grid(n), EW_THREADS, 0, s>>>(x, n, act);
    return cudaGetLastError();
}

/* out (rows, F) = silu(gu[:, :F]) * gu[:, F:] ; gu (rows, 2F) */
__global__ void silu_mul_kernel(const float *__restrict__ gu, float *__restrict__ out, int64_t rows, int64_t F) {
    const int64_t total = rows * F;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / F, f = i - r * F;
        const float g = gu[r * 2 * F + f], u = gu[r * 2 * F + F + f];
        out[i] = tg_act_apply(g, TG_ACT_SILU) * u;
    }
}

/* same with 4 consecutive features per thread (F % 4 == 0, aligned) */
__global__ void silu_mul_vec_kernel(const float4 *__restrict__ gu, float4 *__restrict__ out, int64_t rows, int64_t F4) {
    const int64_t total = rows * F4;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / F4, f = i - r * F4;
        const float4 g = gu[r * 2 * F4 + f], u = gu[r * 2 * F4 + F4 + f];
        float4 o;
        o.x = tg_act_apply(g.x, TG_ACT_SILU) * u.x;
        o.y = tg_act_apply(g.y, TG_ACT_SILU) * u.y;
        o.z = tg_act_apply(g.z, TG_ACT_SILU) * u.z;
        o.w = tg_act_apply(g.w, TG_ACT_SILU) * u.w;
        out[i] = o;
    }
}

cudaError_t tg_launch_silu_mul(const float *gu, float *out, int64_t rows, int64_t F, cudaStream_t s) {
    if (rows * F <= 0) return cudaSuccess;
    if (F % 4 == 0 && aligned16(gu) && aligned16(out))
        silu_mul_vec_kernel<<<ew_grid(rows * F / 4), EW_THREADS, 0, s>>>((const float4 *)gu, (float4 *)out, rows, F / 4);
    else
        silu_mul_kernel<<<ew_grid(rows * F), EW_THREADS, 0, s>>>(gu, out, rows, F);
    return cudaGetLastError();
}

/* y[o*n + i] += x[i] */
__global__ void add_bcast_kernel(float *y, const float *x, int64_t outer, int64_t n) {
    const int64_t total = outer * n;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += x[i % n];
}

__global__ void add_bcast_vec_kernel(float4 *y, const float4 *x, int64_t outer, int64_t n4) {
    const int64_t total = outer * n4;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        float4 a = y[i];
        const float4 b = x[i % n4];
        a.x += b.x;
        a.y += b.y;
        a.z += b.z;
        a.w += b.w;
        y[i] = a;
    }
}

cudaError_t tg_launch_add_bcast(float *y, const float *x, int64_t outer, int64_t n, cudaStream_t s) {
    if (outer * n <= 0) return cudaSuccess;
    if (n % 4 == 0 && aligned16(y) && aligned16(x))
        add_bcast_vec_kernel<<<ew_grid(outer * n / 4), EW_THREADS, 0, s>>>((float4 *)y, (const float4 *)x, outer, n / 4);
    else
        add_bcast_kernel<<<ew_grid(outer * n), EW_THREADS, 0, s>>>(y, x, outer, n);
    return cudaGetLastError();
}

/* ---- embedding, gather_rows ---------------------------------------------- */

/* out (n, cols) = table[ids[i]] converted to float32; an id outside [0, vocab) gives a zero row and
 * sets *bad (when bad is not NULL), which the table entry turns into an error like the CPU's */
template <typename T>
__global__ void embedding_kernel(const T *__restrict__ table, int64_t vocab, int64_t cols, const int32_t *__restrict__ ids,
                                 float *__restrict__ out, int64_t n, int *bad) {
    const int64_t total = n * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i - r * cols;
        const int64_t id = ids[r];
        const bool ok = id >= 0 && id < vocab;
        out[i] = ok ? tg_to_float(table[id * cols + c]) : 0.0f;
        if (!ok && bad) *bad = 1;
    }
}

cudaError_t tg_launch_embedding(const void *table, int dtype, int64_t vocab, int64_t cols, const int32_t *ids,
                                float *out, int64_t n, int *bad, cudaStream_t s) {
    if (n * cols <= 0) return cudaSuccess;
    unsigned g = ew_grid(n * cols);
    if (dtype == TG_F32) embedding_kernel<float><<<g, EW_THREADS, 0, s>>>((const float *)table, vocab, cols, ids, out, n, bad);
    else if (dtype == TG_F16) embedding_kernel<__half><<<g, EW_THREADS, 0, s>>>((const __half *)table, vocab, cols, ids, out, n, bad);
    else embedding_kernel<__nv_bfloat16><<<g, EW_THREADS, 0, s>>>((const __nv_bfloat16 *)table, vocab, cols, ids, out, n, bad);
    return cudaGetLastError();
}

/* dst (n, dim) = src[idx[i]] */
__global__ void gather_rows_kernel(const float *__restrict__ src, const int32_t *__restrict__ idx, float *__restrict__ dst,
                                   int64_t n, int64_t dim) {
    const int64_t total = n * dim;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / dim, c = i - r * dim;
        dst[i] = src[(int64_t)idx[r] * dim + c];
    }
}

cudaError_t tg_launch_gather_rows(const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim,
                                  cudaStream_t s) {
    if (n * dim <= 0) return cudaSuccess;
    gather_rows_kernel<<<ew_grid(n * dim), EW_THREADS, 0, s>>>(src, idx, dst, n, dim);
    return cudaGetLastError();
}

/* dst[idx[i]] = src (n, dim) row i (the decode step's new K/V rows into their cache slots) */
__global__ void scatter_rows_kernel(const float *__restrict__ src, const int32_t *__restrict__ idx, float *__restrict__ dst,
                                    int64_t n, int64_t dim) {
    const int64_t total = n * dim;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / dim, c = i - r * dim;
        dst[(int64_t)idx[r] * dim + c] = src[i];
    }
}

cudaError_t tg_launch_scatter_rows(const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim,
                                   cudaStream_t s) {
    if (n * dim <= 0) return cudaSuccess;
    scatter_rows_kernel<<<ew_grid(n * dim), EW_THREADS, 0, s>>>(src, idx, dst, n, dim);
    return cudaGetLastError();
}

/* ---- rope ----------------------------------------------------------------- */

/* One thread per (row, i < head_dim/2); it rotates pair (i, i + half) of every
 * head.  inv_freq[i] = 1 / powf(theta, 2i / head_dim) comes from a table the
 * backend computed on the host (rope_table below) with the same expression as
 * the CPU backend, so it is bit-identical there; the device's powf may differ
 * by a few ulp, and at position p an ulp of inv_freq moves the angle by
 * ~p * 6e-8 rad.  angle = pos * inv_freq (one float32 product, as on the
 * CPU), then sincosf: float32, like HF's LlamaRotaryEmbedding. */
__global__ void rope_kernel(float *x, int64_t rows, int64_t row_stride, int n_heads, int head_dim,
                            const int32_t *__restrict__ pos, const float *__restrict__ inv_freq) {
    const int half = head_dim / 2;
    const int64_t total = rows * half;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = t / half;
        const int i = (int)(t - r * half);
        const float ang = __fmul_rn((float)pos[r], inv_freq[i]);
        float sn, cs;
        sincosf(ang, &sn, &cs);
        float *base = x + r * row_stride;
        for (int h = 0; h < n_heads; h++) {
            float *v = base + (int64_t)h * head_dim;
            const float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * cs - x2 * sn;
            v[i + half] = x2 * cs + x1 * sn;
        }
    }
}

cudaError_t tg_launch_rope(float *x, int64_t rows, int64_t row_stride, int n_heads, int head_dim, const int32_t *pos,
                           const float *inv_freq, cudaStream_t s) {
    if (rows <= 0 || n_heads <= 0 || head_dim < 2) return cudaSuccess;
    if (!inv_freq) return cudaErrorInvalidValue;
    rope_kernel<<<ew_grid(rows * (head_dim / 2)), EW_THREADS, 0, s>>>(x, rows, row_stride, n_heads, head_dim, pos,
                                                                       inv_freq);
    return cudaGetLastError();
}

/* ---- im2col, upscale_tiles ---------------------------------------------------- */

/* pix (B, C, S, S) -> cols (B*(S/P)^2, C*P*P); one thread per output element */
__global__ void im2col_kernel(const float *__restrict__ pix, float *__restrict__ cols, int B, int C, int S, int P) {
    const int np = S / P;
    const int64_t width = (int64_t)C * P * P;
    const int64_t total = (int64_t)B * np * np * width;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = t / width;
        const int col = (int)(t - row * width);
        const int b = (int)(row / ((int64_t)np * np));
        const int patch = (int)(row - (int64_t)b * np * np);
        const int py = patch / np, px = patch - py * np;
        const int c = col / (P * P), rem = col - c * P * P;
        const int ky = rem / P, kx = rem - ky * P;
        cols[t] = pix[(((int64_t)b * C + c) * S + (py * P + ky)) * S + (px * P + kx)];
    }
}

cudaError_t tg_launch_im2col(const float *pix, float *cols, int B, int C, int S, int P, cudaStream_t s) {
    const int np = S / P;
    const int64_t total = (int64_t)B * np * np * C * P * P;
    if (total <= 0) return cudaSuccess;
    im2col_kernel<<<ew_grid(total), EW_THREADS, 0, s>>>(pix, cols, B, C, S, P);
    return cudaGetLastError();
}

/* pix (B, C, S, S) -> tiles (B, 4, C, S, S).  Tile k = (ty, tx) in order TL,
 * TR, BL, BR of the 2S x 2S bilinear upscale (align_corners=False, PyTorch:
 * src = (dst + 0.5) / 2 - 0.5 clamped at 0, i0 = floor, i1 = min(i0+1, S-1)). */
__global__ void upscale_tiles_kernel(const float *__restrict__ pix, float *__restrict__ tiles, int B, int C, int S) {
    const int64_t total = (int64_t)B * 4 * C * S * S;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = t;
        const int x = (int)(r % S); r /= S;
        const int y = (int)(r % S); r /= S;
        const int c = (int)(r % C); r /= C;
        const int k = (int)(r % 4); r /= 4;
        const int b = (int)r;
        const int Y = (k >> 1) * S + y, X = (k & 1) * S + x;
        float sy = ((float)Y + 0.5f) * 0.5f - 0.5f;
        float sx = ((float)X + 0.5f) * 0.5f - 0.5f;
        sy = sy < 0.0f ? 0.0f : sy;
        sx = sx < 0.0f ? 0.0f : sx;
        const int y0 = (int)sy, x0 = (int)sx;
        const int y1 = y0 < S - 1 ? y0 + 1 : S - 1, x1 = x0 < S - 1 ? x0 + 1 : S - 1;
        const float ly = sy - (float)y0, lx = sx - (float)x0;
        const float *p = pix + ((int64_t)b * C + c) * S * S;
        const float top = (1.0f - lx) * p[(int64_t)y0 * S + x0] + lx * p[(int64_t)y0 * S + x1];
        const float bot = (1.0f - lx) * p[(int64_t)y1 * S + x0] + lx * p[(int64_t)y1 * S + x1];
        tiles[t] = (1.0f - ly) * top + ly * bot;
    }
}

cudaError_t tg_launch_upscale_tiles(const float *pix, float *tiles, int B, int C, int S, cudaStream_t s) {
    const int64_t total = (int64_t)B * 4 * C * S * S;
    if (total <= 0) return cudaSuccess;
    upscale_tiles_kernel<<<ew_grid(total), EW_THREADS, 0, s>>>(pix, tiles, B, C, S);
    return cudaGetLastError();
}

/* ---- argmax --------------------------------------------------------------- */

/* One block (256 threads) per row; (value, index) reduction where a larger
 * value wins and ties go to the smaller index (first max wins), NaN counting
 * as the largest value (the first NaN wins, like NumPy and the CPU backend). */
__device__ __forceinline__ void argmax_merge(float &v, int64_t &i, float v2, int64_t i2) {
    const bool n1 = isnan(v), n2 = isnan(v2);
    if (n1 != n2 ? n2 : n1 ? i2 < i : (v2 > v || (v2 == v && i2 < i))) {
        v = v2;
        i = i2;
    }
}

__global__ void argmax_kernel(const float *__restrict__ x, int64_t cols, int32_t *__restrict__ out) {
    const float *xr = x + (int64_t)blockIdx.x * cols;
    float bv = -INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) argmax_merge(bv, bi, xr[c], c);
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
        int64_t i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        argmax_merge(bv, bi, v2, i2);
    }
    __shared__ float sv[32];
    __shared__ int64_t si[32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        bv = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : INT64_MAX;
        for (int o = 16; o > 0; o >>= 1) {
            float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
            int64_t i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            argmax_merge(bv, bi, v2, i2);
        }
        /* (an all -inf row ends at index 0 by the tie rule; cols >= 1 here) */
        if (lane == 0) out[blockIdx.x] = (int32_t)(bi == INT64_MAX ? 0 : bi);
    }
}

cudaError_t tg_launch_argmax(const float *x, int64_t rows, int64_t cols, int32_t *out, cudaStream_t s) {
    if (rows <= 0) return cudaSuccess;
    if (cols <= 0) return cudaMemsetAsync(out, 0, (size_t)rows * 4, s);
    for (int64_t r0 = 0; r0 < rows; r0 += 65535 * 1024LL) { /* grid.x limit is 2^31-1; chunk generously */
        const int64_t nr = (rows - r0) < 65535 * 1024LL ? (rows - r0) : 65535 * 1024LL;
        argmax_kernel<<<(unsigned)nr, 256, 0, s>>>(x + r0 * cols, cols, out + r0);
    }
    return cudaGetLastError();
}

/* ---- backend-table entries ---------------------------------------------------- */

#define LAUNCH_OR_FAIL(be, call) CUDA_CHECK(be, (call))

static bool bad_act(int act) { return act < TG_ACT_NONE || act >= TG_ACT_COUNT; }

int cuda_activation(tg_backend *be, float *x, int64_t n, int act) {
    TG_CUDA_USE(be);
    if (bad_act(act)) {
        tg_cuda_set_err(be, "activation: unknown act %d", act);
        return -1;
    }
    LAUNCH_OR_FAIL(be, tg_launch_activation(x, n, act, tg_impl(be)->stream));
    return 0;
}

int cuda_silu_mul(tg_backend *be, const float *gu, float *out, int64_t rows, int64_t F) {
    TG_CUDA_USE(be);
    LAUNCH_OR_FAIL(be, tg_launch_silu_mul(gu, out, rows, F, tg_impl(be)->stream));
    return 0;
}

int cuda_add_bcast(tg_backend *be, float *y, const float *x, int64_t outer, int64_t n) {
    TG_CUDA_USE(be);
    LAUNCH_OR_FAIL(be, tg_launch_add_bcast(y, x, outer, n, tg_impl(be)->stream));
    return 0;
}

int cuda_embedding(tg_backend *be, const tg_weight *table, const int32_t *ids, float *out, int64_t n) {
    TG_CUDA_USE(be);
    if (!table || !table->data) {
        tg_cuda_set_err(be, "embedding: table has no data");
        return -1;
    }
    if (n <= 0 || table->cols <= 0) return 0;
    /* ids live on the device: the kernel reports an id out of range in im->flag, read back here (one
     * small wait per call: the model embeds once per forward or decode step) */
    tg_cuda_impl *im = tg_impl(be);
    int bad = 0;
    CUDA_CHECK(be, cudaMemsetAsync(im->flag, 0, sizeof(int), im->stream));
    LAUNCH_OR_FAIL(be, tg_launch_embedding(table->data, table->dtype, table->rows, table->cols, ids, out, n, im->flag,
                                           im->stream));
    CUDA_CHECK(be, cudaMemcpyAsync(&bad, im->flag, sizeof(int), cudaMemcpyDeviceToHost, im->stream));
    CUDA_CHECK(be, cudaStreamSynchronize(im->stream));
    if (bad) {
        tg_cuda_set_err(be, "embedding: id out of range");
        return -1;
    }
    return 0;
}

int cuda_gather_rows(tg_backend *be, const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim) {
    TG_CUDA_USE(be);
    LAUNCH_OR_FAIL(be, tg_launch_gather_rows(src, idx, dst, n, dim, tg_impl(be)->stream));
    return 0;
}

int cuda_scatter_rows(tg_backend *be, const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim) {
    TG_CUDA_USE(be);
    LAUNCH_OR_FAIL(be, tg_launch_scatter_rows(src, idx, dst, n, dim, tg_impl(be)->stream));
    return 0;
}

int cuda_im2col(tg_backend *be, const float *pix, float *cols, int B, int C, int S, int P) {
    TG_CUDA_USE(be);
    if (P <= 0 || S % P != 0) {
        tg_cuda_set_err(be, "im2col: image side %d is not a multiple of the patch size %d", S, P);
        return -1;
    }
    LAUNCH_OR_FAIL(be, tg_launch_im2col(pix, cols, B, C, S, P, tg_impl(be)->stream));
    return 0;
}

int cuda_upscale_tiles(tg_backend *be, const float *pix, float *tiles, int B, int C, int S) {
    TG_CUDA_USE(be);
    LAUNCH_OR_FAIL(be, tg_launch_upscale_tiles(pix, tiles, B, C, S, tg_impl(be)->stream));
    return 0;
}

/* The inv_freq table of (theta, head_dim), computed on the host exactly like
 * cpu_rope and cached on the device (a model uses one or two pairs; the
 * table is filled once, so decode steps upload nothing).  When all slots are
 * taken the oldest is replaced after a stream synchronize (a queued kernel
 * may still read it). */
static const float *rope_table(tg_backend *be, float theta, int head_dim) {
    tg_cuda_impl *im = tg_impl(be);
    uint32_t tbits;
    memcpy(&tbits, &theta, sizeof tbits);
    for (int k = 0; k < TG_ROPE_TABLES; k++) {
        const tg_rope_table *t = &im->rope[k];
        if (t->inv_freq && t->head_dim == head_dim && t->theta_bits == tbits) return t->inv_freq;
    }
    const int half = head_dim / 2;
    float *host = (float *)malloc((size_t)half * sizeof(float));
    if (!host) {
        tg_cuda_set_err(be, "rope: out of host memory for a %d-entry inv_freq table", half);
        return NULL;
    }
    for (int i = 0; i < half; i++) host[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    tg_rope_table *slot = &im->rope[im->rope_next];
    float *dev = NULL;
    cudaError_t e = cudaSuccess;
    if (slot->inv_freq) {
        e = cudaStreamSynchronize(im->stream);
        if (e == cudaSuccess) e = cudaFree(slot->inv_freq);
        slot->inv_freq = NULL;
    }
    if (e == cudaSuccess) e = cudaMalloc((void **)&dev, (size_t)half * sizeof(float));
    if (e == cudaSuccess) e = cudaMemcpyAsync(dev, host, (size_t)half * sizeof(float), cudaMemcpyHostToDevice, im->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream); /* `host` is freed below */
    free(host);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        if (dev) (void)cudaFree(dev);
        (void)cudaGetLastError();
        tg_cuda_set_err(be, "rope: inv_freq table (theta %g, head_dim %d): %s", (double)theta, head_dim,
                        cudaGetErrorString(e));
        return NULL;
    }
    slot->inv_freq = dev;
    slot->theta_bits = tbits;
    slot->head_dim = head_dim;
    im->rope_next = (im->rope_next + 1) % TG_ROPE_TABLES;
    return dev;
}

void tg_rope_tables_free(tg_cuda_impl *im) {
    for (int k = 0; k < TG_ROPE_TABLES; k++) {
        if (im->rope[k].inv_freq) (void)cudaFree(im->rope[k].inv_freq);
        im->rope[k].inv_freq = NULL;
    }
}

int cuda_rope(tg_backend *be, float *x, int64_t rows, int64_t row_stride, int n_heads, int head_dim,
              const int32_t *pos, float theta) {
    TG_CUDA_USE(be);
    if (head_dim % 2 != 0) {
        tg_cuda_set_err(be, "rope: head_dim is odd (rotate-half needs pairs)");
        return -1;
    }
    if (rows <= 0 || n_heads <= 0 || head_dim < 2) return 0;
    const float *inv_freq = rope_table(be, theta, head_dim);
    if (!inv_freq) return -1;
    LAUNCH_OR_FAIL(be, tg_launch_rope(x, rows, row_stride, n_heads, head_dim, pos, inv_freq, tg_impl(be)->stream));
    return 0;
}

int cuda_argmax(tg_backend *be, const float *x, int64_t rows, int64_t cols, int32_t *out) {
    TG_CUDA_USE(be);
    LAUNCH_OR_FAIL(be, tg_launch_argmax(x, rows, cols, out, tg_impl(be)->stream));
    return 0;
}
