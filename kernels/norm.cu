/* norm.cu -- LayerNorm and RMSNorm over the last dimension.
 *
 * One block per row (256 threads; 1024 for rows of 4096+), float32
 * accumulation: per-thread partial sums, then a warp-shuffle reduction and a
 * shared-memory pass across warps.  LayerNorm is two-pass like the CPU
 * backend (mean, then the sum of squared deviations), so a large mean does
 * not cancel the variance.  y may alias x: every element is read by the same
 * thread that later writes it, after the reductions have finished.
 */
#include "common.cuh"

/* Sum of v over the block; every thread gets the result.  `red` holds 32 floats. */
__device__ __forceinline__ float block_sum(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = tg_warp_sum(v);
    __syncthreads(); /* red may still be read from a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return tg_warp_sum(t);
}

__global__ void layernorm_kernel(const float *x, const float *__restrict__ gamma, const float *__restrict__ beta,
                                 float *y, int64_t dim, float eps) {
    __shared__ float red[32];
    const float *xr = x + (int64_t)blockIdx.x * dim;
    float *yr = y + (int64_t)blockIdx.x * dim;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, red) / (float)dim;
    float q = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        const float d = xr[i] - mean;
        q += d * d;
    }
    const float var = block_sum(q, red) / (float)dim;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        yr[i] = (xr[i] - mean) * inv * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f);
}

__global__ void rmsnorm_kernel(const float *x, const float *__restrict__ gamma, float *y, int64_t dim, float eps) {
    __shared__ float red[32];
    const float *xr = x + (int64_t)blockIdx.x * dim;
    float *yr = y + (int64_t)blockIdx.x * dim;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
    const float inv = 1.0f / sqrtf(block_sum(s, red) / (float)dim + eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * inv * (gamma ? gamma[i] : 1.0f);
}

static int norm_threads(int64_t dim) { return dim >= 4096 ? 1024 : dim >= 1024 ? 512 : 256; }

/* rows are split in launches of at most 2^31-1 blocks */
#define NORM_MAX_GRID 2147483647LL

cudaError_t tg_launch_layernorm(const float *x, const float *gamma, const float *beta, float *y, int64_t rows,
                                int64_t dim, float eps, cudaStream_t s) {
    if (rows <= 0 || dim <= 0) return cudaSuccess;
    for (int64_t r0 = 0; r0 < rows; r0 += NORM_MAX_GRID) {
        const int64_t nr = rows - r0 < NORM_MAX_GRID ? rows - r0 : NORM_MAX_GRID;
        layernorm_kernel<<<(unsigned)nr, norm_threads(dim), 0, s>>>(x + r0 * dim, gamma, beta, y + r0 * dim, dim, eps);
    }
    return cudaGetLastError();
}

cudaError_t tg_launch_rmsnorm(const float *x, const float *gamma, float *y, int64_t rows, int64_t dim, float eps,
                              cudaStream_t s) {
    if (rows <= 0 || dim <= 0) return cudaSuccess;
    for (int64_t r0 = 0; r0 < rows; r0 += NORM_MAX_GRID) {
        const int64_t nr = rows - r0 < NORM_MAX_GRID ? rows - r0 : NORM_MAX_GRID;
        rmsnorm_kernel<<<(unsigned)nr, norm_threads(dim), 0, s>>>(x + r0 * dim, gamma, y + r0 * dim, dim, eps);
    }
    return cudaGetLastError();
}

int cuda_layernorm(tg_backend *be, const float *x, const float *gamma, const float *beta, float *y, int64_t rows,
                   int64_t dim, float eps) {
    TG_CUDA_USE(be);
    CUDA_CHECK(be, tg_launch_layernorm(x, gamma, beta, y, rows, dim, eps, tg_impl(be)->stream));
    return 0;
}

int cuda_rmsnorm(tg_backend *be, const float *x, const float *gamma, float *y, int64_t rows, int64_t dim, float eps) {
    TG_CUDA_USE(be);
    CUDA_CHECK(be, tg_launch_rmsnorm(x, gamma, y, rows, dim, eps, tg_impl(be)->stream));
    return 0;
}
