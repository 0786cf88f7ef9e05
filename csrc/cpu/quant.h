/* quant.h -- weight storage formats of the CPU backend and their kernels (quant.c). */
#ifndef TG_CPU_QUANT_H
#define TG_CPU_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* Store one row of `cols` float32 values in `dtype` at dst (tg_cpu_row_bytes(dtype, cols) bytes);
 * returns how many values lie outside the float16 range (always 0 for other formats). */
int64_t tg_quantize_row(int dtype, const float *x, void *dst, int64_t cols);
/* out (n, K) float32 = rows [row0, row0 + n) of the stored (?, K) weight w */
void tg_dequant_rows(int dtype, const void *w, int64_t row0, int64_t n, int64_t K, float *out);
/* y (M, N) (+)= x (M, K) @ w^T, w stored (N, K) in dtype; threads split the N rows.  Every row of x is
 * summed in the same order whatever M is (a row of a batch is bitwise the row alone); meant for the few
 * rows of decoding (up to TG_CPU_EXACT_ROWS, backend.h), where it reads each weight once for all of them. */
void tg_gemv(int dtype, const void *w, const float *x, float *y, int64_t M, int64_t N, int64_t K, int accumulate);

#endif
