/* vmath.h -- the CPU backend's row-wise exponentials (vmath.c): one rule for e^x on every path. */
#ifndef TG_VMATH_H
#define TG_VMATH_H
#include <stdint.h>

/* x[i] = e^(x[i] - shift) */
void tg_exp_shift(float *x, int64_t n, float shift);
/* x[i] = act(x[i]) for TG_ACT_SILU, TG_ACT_QUICK_GELU and TG_ACT_GELU_TANH (returns 1); other acts: 0, x untouched */
int tg_sigmoid_act(float *x, int64_t n, int act);
/* o[i] = silu(g[i]) * u[i] */
void tg_silu_mul_row(const float *g, const float *u, float *o, int64_t n);
/* the sum of x[0..n) in 8 lanes (element i in lane i % 8), then pairwise */
float tg_lanes_sum(const float *x, int64_t n);
#endif
