/* launchers.cuh -- the middle layer of every CUDA op: a launcher that takes
 * raw device pointers and a stream, enqueues the kernel(s) and returns the
 * launch status (cudaGetLastError()).  The backend-table entries validate
 * arguments, pick scratch memory and call these; tests and benchmarks may
 * call them directly.  Shapes follow backend.h.
 */
#ifndef TG_KERNELS_LAUNCHERS_CUH
#define TG_KERNELS_LAUNCHERS_CUH

#include <cuda_runtime.h>
#include <stdint.h>

/* elementwise.cu */
cudaError_t tg_launch_cast_f32(const float *x, void *y, int dtype, int64_t n, cudaStream_t s); // y (n) in dtype
// y (M, N) = act(src + bias) + residual; src NULL counts as 0; src or residual may equal y
cudaError_t tg_launch_bias_act_residual(float *y, const float *src, const float *bias, const float *residual, int64_t M,
                                        int64_t N, int act, cudaStream_t s);
cudaError_t tg_launch_activation(float *x, int64_t n, int act, cudaStream_t s);
cudaError_t tg_launch_silu_mul(const float *gu, float *out, int64_t rows, int64_t F, cudaStream_t s);
cudaError_t tg_launch_add_bcast(float *y, const float *x, int64_t outer, int64_t n, cudaStream_t s);
// an id outside [0, vocab) gives a zero row and sets *bad (bad may be NULL)
cudaError_t tg_launch_embedding(const void *table, int dtype, int64_t vocab, int64_t cols, const int32_t *ids,
                                float *out, int64_t n, int *bad, cudaStream_t s);
cudaError_t tg_launch_gather_rows(const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim,
                                  cudaStream_t s);
cudaError_t tg_launch_scatter_rows(const float *src, const int32_t *idx, float *dst, int64_t n, int64_t dim,
                                   cudaStream_t s);
cudaError_t tg_launch_im2col(const float *pix, float *cols, int B, int C, int S, int P, cudaStream_t s);
cudaError_t tg_launch_upscale_tiles(const float *pix, float *tiles, int B, int C, int S, cudaStream_t s);
// inv_freq (head_dim / 2) on the device: 1 / powf(theta, 2i / head_dim), computed on the host
cudaError_t tg_launch_rope(float *x, int64_t rows, int64_t row_stride, int n_heads, int head_dim, const int32_t *pos,
                           const float *inv_freq, cudaStream_t s);
cudaError_t tg_launch_argmax(const float *x, int64_t rows, int64_t cols, int32_t *out, cudaStream_t s);

/* norm.cu */
cudaError_t tg_launch_layernorm(const float *x, const float *gamma, const float *beta, float *y, int64_t rows,
                                int64_t dim, float eps, cudaStream_t s);
cudaError_t tg_launch_rmsnorm(const float *x, const float *gamma, float *y, int64_t rows, int64_t dim, float eps,
                              cudaStream_t s);

/* gemm.cu: y (M, N) = act(x (M, K) @ W^T + bias) + residual for M <= TG_GEMV_MAX_M,
 * W (N, K) row-major in dtype, any K and alignment (16-byte loads when K % 8 == 0 and x, W are
 * 16-byte aligned); x rounded to a 16-bit dtype like the weights (common.cuh tg_round_act). */
#define TG_GEMV_MAX_M 16
cudaError_t tg_launch_gemv(const float *x, const void *W, int dtype, const float *bias, const float *residual,
                           float *y, int64_t M, int64_t N, int64_t K, int act, cudaStream_t s);

#endif /* TG_KERNELS_LAUNCHERS_CUH */
