/* op_check.cu -- every op of the CUDA backend against a plain C reference.
 *
 * Built by hand on a GPU machine (setup.py does not build it); for the H100/H200
 * name the target, or nvcc emits sm_75 code and the driver JIT-compiles PTX:
 *   nvcc -O2 -std=c++17 -lineinfo -Icsrc -Ikernels -DTG_WITH_CUDA -arch=sm_90 \
 *        -o /tmp/op_check kernels/tests/op_check.cu kernels/backend.cu kernels/gemm.cu \
 *        kernels/norm.cu kernels/attention.cu kernels/elementwise.cu -lcublas -lcublasLt
 *   /tmp/op_check            # all ops;  /tmp/op_check quick  skips the benchmarks
 * (benchmarks/gpu_run.sh does this as the first step of the device job.)
 *
 * Each case runs the op through the backend table (tg_cuda_backend_create) on
 * random data, copies the result back and compares with a host reference
 * written here (double accumulation), printing the max abs error, the error
 * bound, PASS/FAIL and a microbenchmark (GB/s of bytes touched or TFLOP/s).
 * A backend call that fails (OK below) ends only its own case, printed as
 * ERROR with the backend's message and counted as a failure; the next case
 * runs.  If the device is unusable after a failure (a sticky error: the
 * stream no longer synchronizes), the remaining cases are reported as skipped.
 * Exit status: 0 when every case passes, 1 otherwise, 2 when no backend could
 * be created.  Bounds are relative to max(1, max |reference|).  16-bit weights
 * are rounded on the host the same way (round to nearest even) before the
 * reference product.
 */
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh" /* backend.h + the backend's private state (cuBLASLt fallback count) */

static tg_backend *be;
static int n_fail = 0, n_pass = 0, n_skip = 0;
static bool do_bench = true;
static bool device_broken = false;

/* A failed backend call: thrown by OK(), caught by run_case(). */
struct CaseError {
    std::string msg;
};

#define OK(call)                                                                                               \
    do {                                                                                                       \
        if ((call) != 0)                                                                                       \
            throw CaseError{std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + #call + " failed: " + \
                            be->err};                                                                          \
    } while (0)

/* Run one case; a failed backend call inside it fails that case only. */
template <typename F> static void run_case(const std::string &what, F fn) {
    if (device_broken) {
        printf("%-58s SKIPPED (device unusable)\n", what.c_str());
        n_skip++;
        return;
    }
    try {
        fn();
    } catch (const CaseError &e) {
        n_fail++;
        printf("%-58s ERROR %s\n", what.c_str(), e.msg.c_str());
        if (be->sync(be) != 0) {
            device_broken = true;
            printf("the stream no longer synchronizes (%s): later cases are skipped\n", be->err);
        }
    }
    fflush(stdout);
}
#define CASE(...) run_case(#__VA_ARGS__, [&] { __VA_ARGS__; })

/* ---- host helpers --------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand() { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static std::vector<float> randv(size_t n, float scale = 1.0f) {
    std::vector<float> v(n);
    for (auto &x : v) x = frand() * scale;
    return v;
}
static float round_dtype(float x, int dtype) {
    if (dtype == TG_BF16) return __bfloat162float(__float2bfloat16_rn(x));
    if (dtype == TG_F16) return __half2float(__float2half_rn(fminf(fmaxf(x, -65504.0f), 65504.0f)));
    return x;
}
static const char *dtype_name(int d) { return d == TG_BF16 ? "bf16" : d == TG_F16 ? "f16" : "f32"; }
static double act_ref(double x, int act) {
    switch (act) {
    case TG_ACT_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case TG_ACT_QUICK_GELU: return x / (1.0 + exp(-1.702 * x));
    case TG_ACT_SILU: return x / (1.0 + exp(-x));
    case TG_ACT_GELU_TANH: return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    default: return x;
    }
}

/* device buffer through the backend */
struct Dev {
    void *p = nullptr;
    size_t bytes = 0;
    explicit Dev(size_t b) : bytes(b) {
        p = be->alloc(be, b);
        if (!p) throw CaseError{std::string("alloc of ") + std::to_string(b) + " bytes failed: " + be->err};
    }
    template <typename T> explicit Dev(const std::vector<T> &v) : Dev(v.size() * sizeof(T)) {
        OK(be->to_device(be, p, v.data(), bytes));
    }
    ~Dev() { be->release(be, p); }
    float *f() { return (float *)p; }
    int32_t *i() { return (int32_t *)p; }
    std::vector<float> get() {
        std::vector<float> v(bytes / 4);
        OK(be->to_host(be, v.data(), p, bytes));
        return v;
    }
};

/* The one place op_check fills a weight: backend.h's alloc + write of a whole matrix. */
static int upload(tg_weight *w, const std::vector<float> &host, int64_t rows, int64_t cols, int dtype) {
    memset(w, 0, sizeof *w);
    return tg_weight_upload(be, w, host.data(), rows, cols, dtype);
}

/* a weight uploaded through the backend, released when the case ends (also by an error) */
struct Weight {
    tg_weight w;
    Weight(const std::vector<float> &host, int64_t rows, int64_t cols, int dtype) { OK(upload(&w, host, rows, cols, dtype)); }
    ~Weight() { be->weight_release(be, &w); }
    Weight(const Weight &) = delete;
    Weight &operator=(const Weight &) = delete;
};

static void report(const std::string &name, const std::vector<float> &got, const std::vector<double> &ref, double tol,
                   double bench_ms, double bench_amount, const char *unit) {
    double err = 0.0, mag = 1.0;
    bool nan = false;
    for (size_t i = 0; i < ref.size(); i++) {
        if (std::isnan(got[i]) && !std::isnan(ref[i])) nan = true;
        err = std::fmax(err, std::fabs((double)got[i] - ref[i]));
        mag = std::fmax(mag, std::fabs(ref[i]));
    }
    const bool pass = !nan && err <= tol * mag;
    (pass ? n_pass : n_fail)++;
    char perf[64] = "";
    if (bench_ms > 0) snprintf(perf, sizeof perf, "%9.3f ms %9.2f %s", bench_ms, bench_amount / (bench_ms * 1e-3) / 1e9 / (unit[0] == 'T' ? 1e3 : 1), unit);
    printf("%-58s err %.3e (bound %.1e x %.2g) %s  %s\n", name.c_str(), err, tol, mag, pass ? "PASS" : "FAIL", perf);
}

/* average time of fn() in ms over enough runs */
template <typename F> static double bench(F fn) {
    if (!do_bench) return 0.0;
    fn();
    OK(be->sync(be));
    int iters = 1;
    for (;;) {
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; i++) fn();
        OK(be->sync(be));
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (ms > 50.0 || iters >= 1 << 14) return ms / iters;
        iters *= 4;
    }
}

/* ---- linear ------------------------------------------------------------------------ */

/* xoff / yoff: x and y (and the residual) start that many floats into their
 * allocations, like the model's sub-offsets into arena buffers (a K/V
 * projection written straight into the KV cache at kslot + pos0*Dk, rows of a
 * batch at out + b*count*H): only 4-byte aligned in general. */
static void check_linear(int64_t M, int64_t N, int64_t K, int dtype, bool use_bias, bool use_res, bool res_is_y, int act,
                         int64_t xoff = 0, int64_t yoff = 0) {
    auto x = randv(M * K), w = randv(N * K, 1.0f / sqrtf((float)K)), bias = randv(N), res = randv(M * N);
    Weight W(w, N, K, dtype);
    std::vector<float> xpad(xoff, 0.0f), respad(yoff, 0.0f);
    xpad.insert(xpad.end(), x.begin(), x.end());
    respad.insert(respad.end(), res.begin(), res.end());
    Dev dx(xpad), db(bias), dres(respad), dy((yoff + M * N) * 4);
    const float *xp = dx.f() + xoff;
    float *y = (res_is_y ? dres.f() : dy.f()) + yoff;
    const float *resp = use_res ? dres.f() + yoff : nullptr;
    OK(be->linear(be, xp, &W.w, use_bias ? db.f() : nullptr, resp, y, M, act));
    std::vector<float> got = res_is_y ? dres.get() : dy.get();
    got.erase(got.begin(), got.begin() + yoff);
    /* reference: weights rounded like the storage and x rounded to the same 16-bit type on every path
     * (backend.h's activation-precision rule; round_dtype saturates f16 like the backend) */
    const bool xr = dtype != TG_F32;
    std::vector<double> ref(M * N);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++)
                s += (double)round_dtype(w[n * K + k], dtype) * (xr ? round_dtype(x[m * K + k], dtype) : x[m * K + k]);
            if (use_bias) s += bias[n];
            s = act_ref(s, act);
            if (use_res) s += res[m * N + n];
            ref[m * N + n] = s;
        }
    double ms = 0.0;
    if (!res_is_y) ms = bench([&] { OK(be->linear(be, xp, &W.w, use_bias ? db.f() : nullptr, resp, y, M, act)); });
    const double flops = 2.0 * M * N * K, bytes = (double)N * K * (dtype == TG_F32 ? 4 : 2) + 4.0 * M * (K + N);
    char name[160];
    snprintf(name, sizeof name, "linear %s M=%lld N=%lld K=%lld%s%s%s act=%d%s", dtype_name(dtype), (long long)M,
             (long long)N, (long long)K, use_bias ? " bias" : "", use_res ? " res" : "", res_is_y ? "=y" : "", act,
             xoff || yoff ? (xoff ? (yoff ? " x+off y+off" : " x+off") : " y+off") : "");
    const double tol = dtype == TG_F32 ? 1e-5 : 2e-3;
    if (M <= 8) report(name, got, ref, tol, ms, bytes, "GB/s");
    else report(name, got, ref, tol, ms, flops, "TFLOP/s");
}

/* ---- norms ------------------------------------------------------------------------ */

static void check_norms(int64_t rows, int64_t dim) {
    auto x = randv(rows * dim, 2.0f), g = randv(dim), bb = randv(dim);
    for (auto &v : x) v += 3.0f; /* a mean far from 0 */
    Dev dx(x), dg(g), db(bb), dy(rows * dim * 4);
    std::vector<double> ref(rows * dim), ref2(rows * dim);
    for (int64_t r = 0; r < rows; r++) {
        double mean = 0, var = 0, ss = 0;
        for (int64_t i = 0; i < dim; i++) mean += x[r * dim + i], ss += (double)x[r * dim + i] * x[r * dim + i];
        mean /= dim;
        for (int64_t i = 0; i < dim; i++) var += (x[r * dim + i] - mean) * (x[r * dim + i] - mean);
        var /= dim;
        for (int64_t i = 0; i < dim; i++) {
            ref[r * dim + i] = (x[r * dim + i] - mean) / sqrt(var + 1e-5) * g[i] + bb[i];
            ref2[r * dim + i] = x[r * dim + i] / sqrt(ss / dim + 1e-6) * g[i];
        }
    }
    char name[128];
    OK(be->layernorm(be, dx.f(), dg.f(), db.f(), dy.f(), rows, dim, 1e-5f));
    double ms = bench([&] { OK(be->layernorm(be, dx.f(), dg.f(), db.f(), dy.f(), rows, dim, 1e-5f)); });
    snprintf(name, sizeof name, "layernorm rows=%lld dim=%lld", (long long)rows, (long long)dim);
    report(name, dy.get(), ref, 1e-5, ms, 8.0 * rows * dim, "GB/s");
    OK(be->rmsnorm(be, dx.f(), dg.f(), dy.f(), rows, dim, 1e-6f));
    ms = bench([&] { OK(be->rmsnorm(be, dx.f(), dg.f(), dy.f(), rows, dim, 1e-6f)); });
    snprintf(name, sizeof name, "rmsnorm rows=%lld dim=%lld", (long long)rows, (long long)dim);
    report(name, dy.get(), ref2, 1e-5, ms, 8.0 * rows * dim, "GB/s");
    OK(be->rmsnorm(be, dx.f(), dg.f(), dx.f(), rows, dim, 1e-6f)); /* in place */
    snprintf(name, sizeof name, "rmsnorm in place rows=%lld dim=%lld", (long long)rows, (long long)dim);
    report(name, dx.get(), ref2, 1e-5, 0, 0, "");
}

/* ---- attention ------------------------------------------------------------------- */

struct AttCase {
    int B, Tq, Tk, H, Hkv, D;
    bool causal, use_qpos, use_kvlen, use_mask, probs;
    int cache_len = 0; /* > 0: k/v laid out like the KV cache, k_bstride = cache_len * k_stride (cache_len >= Tk) */
};

static void check_attention(const AttCase &c) {
    /* q/k/v/out live inside wider token rows (like a fused qkv buffer) to exercise the strides */
    const int64_t qs = (int64_t)c.H * c.D + 8, ks = (int64_t)c.Hkv * c.D + 4, os = (int64_t)c.H * c.D + 12;
    const int64_t krows = c.cache_len > c.Tk ? c.cache_len : c.Tk;
    const int64_t qbs = qs * c.Tq + 3, kbs = c.cache_len > 0 ? ks * krows : ks * c.Tk + 5, obs = os * c.Tq;
    auto q = randv(qbs * c.B), k = randv(kbs * c.B), v = randv(kbs * c.B);
    std::vector<int32_t> qpos(c.B), kvlen(c.B), mask((size_t)c.B * c.Tk);
    for (int b = 0; b < c.B; b++) {
        kvlen[b] = c.use_kvlen ? c.Tk - 7 * b - 1 : c.Tk;
        if (kvlen[b] < 1) kvlen[b] = 1;
        qpos[b] = c.use_qpos ? kvlen[b] - c.Tq : c.Tk - c.Tq;
        for (int j = 0; j < c.Tk; j++) mask[(size_t)b * c.Tk + j] = c.use_mask ? ((j * 7 + b) % 5 != 0) : 1;
        if (c.use_mask) mask[(size_t)b * c.Tk] = 0; /* so a causal first query may see nothing */
    }
    /* poison keys and values past kv_len (and the unused cache rows past Tk):
     * they must never reach the output */
    for (int b = 0; b < c.B; b++)
        for (int64_t j = kvlen[b]; j < krows; j++)
            for (int d = 0; d < ks; d++) k[b * kbs + j * ks + d] = v[b * kbs + j * ks + d] = NAN;
    Dev dq(q), dk(k), dv(v), dout(obs * c.B * 4), dqpos(qpos), dkvlen(kvlen), dmask(mask);
    Dev dprobs((size_t)c.B * c.Tq * c.Tk * 4);
    std::vector<float> probs0 = randv((size_t)c.B * c.Tq * c.Tk);
    OK(be->to_device(be, dprobs.p, probs0.data(), dprobs.bytes));
    OK(be->to_device(be, dout.p, std::vector<float>(obs * c.B, 7.0f).data(), dout.bytes));

    tg_attention a;
    memset(&a, 0, sizeof a);
    a.q = dq.f();
    a.k = dk.f();
    a.v = dv.f();
    a.out = dout.f();
    a.q_stride = qs, a.k_stride = ks, a.v_stride = ks, a.o_stride = os;
    a.q_bstride = qbs, a.k_bstride = kbs, a.v_bstride = kbs, a.o_bstride = obs;
    a.B = c.B, a.Tq = c.Tq, a.Tk = c.Tk, a.n_heads = c.H, a.n_kv_heads = c.Hkv, a.head_dim = c.D;
    a.scale = 1.0f / sqrtf((float)c.D);
    a.causal = c.causal;
    a.q_pos = c.use_qpos ? dqpos.i() : nullptr;
    a.kv_len = c.use_kvlen ? dkvlen.i() : nullptr;
    a.key_mask = c.use_mask ? dmask.i() : nullptr;
    a.probs_accum = c.probs ? dprobs.f() : nullptr;
    OK(be->attention(be, &a));
    auto got = dout.get();
    auto gotp = dprobs.get();

    std::vector<double> ref(obs * c.B, 0.0), refp(probs0.begin(), probs0.end());
    std::vector<double> sc(c.Tk);
    for (int b = 0; b < c.B; b++)
        for (int h = 0; h < c.H; h++) {
            const int hk = h / (c.H / c.Hkv);
            for (int i = 0; i < c.Tq; i++) {
                double mx = -INFINITY;
                for (int j = 0; j < c.Tk; j++) {
                    bool vis = j < kvlen[b] && (!c.causal || j <= qpos[b] + i) && mask[(size_t)b * c.Tk + j];
                    double s = 0;
                    if (vis)
                        for (int d = 0; d < c.D; d++)
                            s += (double)q[b * qbs + i * qs + h * c.D + d] * k[b * kbs + j * ks + hk * c.D + d];
                    sc[j] = vis ? s * a.scale : -INFINITY;
                    mx = std::fmax(mx, sc[j]);
                }
                double l = 0;
                for (int j = 0; j < c.Tk; j++) l += sc[j] == -INFINITY ? 0.0 : exp(sc[j] - mx);
                for (int d = 0; d < c.D; d++) {
                    double o = 0;
                    for (int j = 0; j < c.Tk; j++)
                        if (sc[j] != -INFINITY) o += exp(sc[j] - mx) * v[b * kbs + j * ks + hk * c.D + d];
                    ref[b * obs + i * os + h * c.D + d] = l > 0 ? o / l : 0.0;
                }
                if (c.probs && l > 0)
                    for (int j = 0; j < c.Tk; j++)
                        if (sc[j] != -INFINITY) refp[((size_t)b * c.Tq + i) * c.Tk + j] += exp(sc[j] - mx) / l;
            }
        }
    /* only the head slots are outputs; the padding columns must keep their 7.0 */
    for (int b = 0; b < c.B; b++)
        for (int i = 0; i < c.Tq; i++)
            for (int64_t d = (int64_t)c.H * c.D; d < os; d++) ref[b * obs + i * os + d] = 7.0;
    a.probs_accum = nullptr;
    double ms = bench([&] { OK(be->attention(be, &a)); });
    double vis_pairs = (double)c.B * c.H * c.Tq * c.Tk * (c.causal && c.Tq > 1 ? 0.5 : 1.0);
    char name[200];
    snprintf(name, sizeof name, "attention B=%d Tq=%d Tk=%d H=%d/%d D=%d%s%s%s%s%s", c.B, c.Tq, c.Tk, c.H, c.Hkv, c.D,
             c.causal ? " causal" : "", c.use_qpos ? " q_pos" : "", c.use_kvlen ? " kv_len" : "",
             c.use_mask ? " mask" : "", c.cache_len > 0 ? " kv-cache" : "");
    if (c.Tq <= 8) report(name, got, ref, 1e-4, ms, (double)c.B * c.Hkv * c.Tk * c.D * 8.0, "GB/s");
    else report(name, got, ref, 1e-4, ms, 4.0 * vis_pairs * c.D, "TFLOP/s");
    if (c.probs) report(std::string(name) + " probs_accum", gotp, refp, 1e-4, 0, 0, "");
}

/* ---- elementwise --------------------------------------------------------------------- */

/* rope on rows of width `stride` starting `off` floats into the buffer, pos[r] =
 * pos0 + r * step.  The reference uses the CPU backend's float32 inv_freq and
 * angle; the backend computes the same inv_freq table on the host, so only
 * sincosf (a few ulp) and the rotation's rounding differ from it, whatever the
 * position (with a device powf, one ulp of inv_freq at position 1661 alone
 * would have been ~1e-4). */
static void check_rope(const char *name, int64_t rows, int64_t nh, int64_t hd, int64_t stride, int64_t off, float theta,
                       int32_t pos0, int32_t step, bool timed) {
    auto x = randv(off + rows * stride);
    std::vector<int32_t> pos(rows);
    for (int64_t r = 0; r < rows; r++) pos[r] = (int32_t)(pos0 + r * step);
    Dev dx(x), dpos(pos);
    OK(be->rope(be, dx.f() + off, rows, stride, (int)nh, (int)hd, dpos.i(), theta));
    std::vector<double> ref(x.begin() + off, x.end());
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < hd / 2; i++) {
            const float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
            const double ang = (double)((float)pos[r] * inv);
            for (int64_t h = 0; h < nh; h++) {
                const double x1 = x[off + r * stride + h * hd + i], x2 = x[off + r * stride + h * hd + i + hd / 2];
                ref[r * stride + h * hd + i] = x1 * cos(ang) - x2 * sin(ang);
                ref[r * stride + h * hd + i + hd / 2] = x2 * cos(ang) + x1 * sin(ang);
            }
        }
    auto got = dx.get();
    got.erase(got.begin(), got.begin() + off);
    report(name, got, ref, 1e-5, 0, 0, "");
    if (timed && do_bench) {
        double ms = bench([&] { OK(be->rope(be, dx.f() + off, rows, stride, (int)nh, (int)hd, dpos.i(), theta)); });
        printf("%-58s %9.3f ms %9.2f GB/s\n", "rope (bench)", ms, 8.0 * rows * nh * hd / (ms * 1e-3) / 1e9);
    }
}

static void check_elementwise() {
    char name[128];
    const int64_t n = 1 << 20;
    for (int act = 1; act < TG_ACT_COUNT; act++) {
        run_case("activation act=" + std::to_string(act), [&] {
            auto x = randv(n, 6.0f);
            Dev dx(x);
            OK(be->activation(be, dx.f(), n, act));
            std::vector<double> ref(n);
            for (int64_t i = 0; i < n; i++) ref[i] = act_ref(x[i], act);
            auto got = dx.get();
            double ms = bench([&] { OK(be->activation(be, dx.f(), n, TG_ACT_NONE + act)); });
            snprintf(name, sizeof name, "activation act=%d n=%lld", act, (long long)n);
            report(name, got, ref, 2e-6, ms, 8.0 * n, "GB/s");
        });
    }
    run_case("activation gelu n=1001", [&] { /* odd size: scalar path */
        const int64_t m = 1001;
        auto x = randv(m, 6.0f);
        Dev dx(x);
        OK(be->activation(be, dx.f(), m, TG_ACT_GELU));
        std::vector<double> ref(m);
        for (int64_t i = 0; i < m; i++) ref[i] = act_ref(x[i], TG_ACT_GELU);
        report("activation gelu n=1001 (scalar path)", dx.get(), ref, 2e-6, 0, 0, "");
    });
    run_case("silu_mul rows=37", [&] {
        const int64_t rows = 37, F = 11008;
        auto gu = randv(rows * 2 * F, 4.0f);
        Dev dgu(gu), dout(rows * F * 4);
        OK(be->silu_mul(be, dgu.f(), dout.f(), rows, F));
        std::vector<double> ref(rows * F);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t f = 0; f < F; f++) ref[r * F + f] = act_ref(gu[r * 2 * F + f], TG_ACT_SILU) * gu[r * 2 * F + F + f];
        double ms = bench([&] { OK(be->silu_mul(be, dgu.f(), dout.f(), rows, F)); });
        report("silu_mul rows=37 F=11008", dout.get(), ref, 2e-6, ms, 12.0 * rows * F, "GB/s");
    });
    for (int64_t nn : {4096LL, 1023LL}) {
        run_case("add_bcast n=" + std::to_string(nn), [&] {
            const int64_t outer = 577;
            auto y = randv(outer * nn), x = randv(nn);
            Dev dy(y), dx(x);
            OK(be->add_bcast(be, dy.f(), dx.f(), outer, nn));
            std::vector<double> ref(outer * nn);
            for (int64_t o = 0; o < outer; o++)
                for (int64_t i = 0; i < nn; i++) ref[o * nn + i] = (double)y[o * nn + i] + x[i];
            auto got = dy.get();
            snprintf(name, sizeof name, "add_bcast outer=%lld n=%lld", (long long)outer, (long long)nn);
            double ms = bench([&] { OK(be->add_bcast(be, dy.f(), dx.f(), outer, nn)); });
            report(name, got, ref, 1e-6, ms, 12.0 * outer * nn, "GB/s");
        });
    }
    for (int dtype : {TG_F32, TG_F16, TG_BF16}) {
        run_case(std::string("embedding n=300 ") + dtype_name(dtype), [&] {
            const int64_t vocab = 1000, cols = 4096, nid = 300;
            auto table = randv(vocab * cols);
            std::vector<int32_t> ids(nid);
            for (auto &i : ids) i = (int32_t)((frand() + 1.0f) * 0.5f * vocab) % vocab;
            Weight T(table, vocab, cols, dtype);
            Dev dids(ids), dout(nid * cols * 4);
            OK(be->embedding(be, &T.w, dids.i(), dout.f(), nid));
            std::vector<double> ref(nid * cols);
            for (int64_t r = 0; r < nid; r++)
                for (int64_t c = 0; c < cols; c++) ref[r * cols + c] = round_dtype(table[ids[r] * cols + c], dtype);
            double ms = bench([&] { OK(be->embedding(be, &T.w, dids.i(), dout.f(), nid)); });
            snprintf(name, sizeof name, "embedding %s (weight_upload rounding) n=300 cols=4096", dtype_name(dtype));
            report(name, dout.get(), ref, 0.0, ms, (4.0 + (dtype == TG_F32 ? 4 : 2)) * nid * cols, "GB/s");
        });
    }
    run_case("gather_rows", [&] {
        const int64_t rows = 2304, dim = 1024, nidx = 700;
        auto src = randv(rows * dim);
        std::vector<int32_t> idx(nidx);
        for (int64_t i = 0; i < nidx; i++) idx[i] = (int32_t)((i * 37) % rows);
        Dev dsrc(src), didx(idx), ddst(nidx * dim * 4);
        OK(be->gather_rows(be, dsrc.f(), didx.i(), ddst.f(), nidx, dim));
        std::vector<double> ref(nidx * dim);
        for (int64_t r = 0; r < nidx; r++)
            for (int64_t c = 0; c < dim; c++) ref[r * dim + c] = src[idx[r] * dim + c];
        double ms = bench([&] { OK(be->gather_rows(be, dsrc.f(), didx.i(), ddst.f(), nidx, dim)); });
        report("gather_rows n=700 dim=1024", ddst.get(), ref, 0.0, ms, 8.0 * nidx * dim, "GB/s");
    });
    run_case("scatter_rows", [&] {
        const int64_t rows = 4096, dim = 1024, nidx = 32; /* 32 decode rows into a (slots x ctx) cache */
        auto src = randv(nidx * dim), base = randv(rows * dim);
        std::vector<int32_t> idx(nidx);
        for (int64_t i = 0; i < nidx; i++) idx[i] = (int32_t)(i * 128 + (i * 7) % 100);
        Dev dsrc(src), didx(idx), ddst(base);
        OK(be->scatter_rows(be, dsrc.f(), didx.i(), ddst.f(), nidx, dim));
        std::vector<double> ref(base.begin(), base.end());
        for (int64_t r = 0; r < nidx; r++)
            for (int64_t c = 0; c < dim; c++) ref[idx[r] * dim + c] = src[r * dim + c];
        double ms = bench([&] { OK(be->scatter_rows(be, dsrc.f(), didx.i(), ddst.f(), nidx, dim)); });
        report("scatter_rows n=32 dim=1024 into 4096 rows", ddst.get(), ref, 0.0, ms, 8.0 * nidx * dim, "GB/s");
    });
    run_case("rope q in a qkv row", [&] { check_rope("rope rows=333 heads=32 hd=128 theta=1e4 (q of a qkv row)", 333, 32, 128, 3 * 32 * 128, 0, 1e4f, 1, 5, true); });
    run_case("rope long positions", [&] { check_rope("rope positions 0..32067 heads=8 hd=128 theta=1e4", 64, 8, 128, 8 * 128, 0, 1e4f, 0, 509, false); });
    run_case("rope table cache", [&] { /* more (theta, head_dim) pairs than the backend caches: replacement */
        for (int k = 0; k < 11; k++) {
            char nm[96];
            snprintf(nm, sizeof nm, "rope table %d: theta=%g hd=%d", k, 1e4 * (k + 1), 32 + 16 * (k % 3));
            check_rope(nm, 5, 2, 32 + 16 * (k % 3), 2 * (32 + 16 * (k % 3)), 0, 1e4f * (float)(k + 1), 100 * k, 7, false);
        }
    });
    run_case("im2col + upscale_tiles", [&] {
        const int B = 2, C = 3, S = 336, P = 14, np = S / P;
        auto pix = randv((size_t)B * C * S * S);
        Dev dpix(pix), dcols((size_t)B * np * np * C * P * P * 4), dt((size_t)B * 4 * C * S * S * 4);
        OK(be->im2col(be, dpix.f(), dcols.f(), B, C, S, P));
        std::vector<double> ref((size_t)B * np * np * C * P * P);
        for (int b = 0; b < B; b++)
            for (int py = 0; py < np; py++)
                for (int px = 0; px < np; px++)
                    for (int c = 0; c < C; c++)
                        for (int ky = 0; ky < P; ky++)
                            for (int kx = 0; kx < P; kx++)
                                ref[((size_t)(b * np + py) * np + px) * C * P * P + (c * P + ky) * P + kx] =
                                    pix[(((size_t)b * C + c) * S + py * P + ky) * S + px * P + kx];
        double ms = bench([&] { OK(be->im2col(be, dpix.f(), dcols.f(), B, C, S, P)); });
        report("im2col B=2 C=3 S=336 P=14", dcols.get(), ref, 0.0, ms, 8.0 * ref.size(), "GB/s");

        OK(be->upscale_tiles(be, dpix.f(), dt.f(), B, C, S));
        std::vector<double> reft((size_t)B * 4 * C * S * S);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < 4; t++)
                for (int c = 0; c < C; c++)
                    for (int y = 0; y < S; y++)
                        for (int x = 0; x < S; x++) {
                            const int Y = (t >> 1) * S + y, X = (t & 1) * S + x;
                            double sy = std::fmax((Y + 0.5) * 0.5 - 0.5, 0.0), sx = std::fmax((X + 0.5) * 0.5 - 0.5, 0.0);
                            int y0 = (int)sy, x0 = (int)sx, y1 = std::min(y0 + 1, S - 1), x1 = std::min(x0 + 1, S - 1);
                            double ly = sy - y0, lx = sx - x0;
                            const float *p = &pix[((size_t)b * C + c) * S * S];
                            reft[((((size_t)b * 4 + t) * C + c) * S + y) * S + x] =
                                (1 - ly) * ((1 - lx) * p[y0 * S + x0] + lx * p[y0 * S + x1]) +
                                ly * ((1 - lx) * p[y1 * S + x0] + lx * p[y1 * S + x1]);
                        }
        ms = bench([&] { OK(be->upscale_tiles(be, dpix.f(), dt.f(), B, C, S)); });
        report("upscale_tiles B=2 C=3 S=336", dt.get(), reft, 1e-6, ms, 4.0 * reft.size() * 1.25, "GB/s");
    });
    run_case("argmax", [&] {
        const int64_t rows = 5, cols = 32000;
        auto x = randv(rows * cols);
        x[1 * cols + 77] = 5.0f, x[1 * cols + 9000] = 5.0f; /* tie: first wins */
        x[3 * cols + cols - 1] = 9.0f;
        Dev dx(x), dout(rows * 4);
        OK(be->argmax(be, dx.f(), rows, cols, dout.i()));
        std::vector<int32_t> got(rows);
        OK(be->to_host(be, got.data(), dout.p, rows * 4));
        std::vector<float> gotf(rows);
        std::vector<double> ref(rows);
        for (int64_t r = 0; r < rows; r++) {
            int64_t best = 0;
            for (int64_t c = 1; c < cols; c++)
                if (x[r * cols + c] > x[r * cols + best]) best = c;
            ref[r] = (double)best;
            gotf[r] = (float)got[r];
        }
        double ms = bench([&] { OK(be->argmax(be, dx.f(), rows, cols, dout.i())); });
        report("argmax rows=5 cols=32000 (ties)", gotf, ref, 0.0, ms, 4.0 * rows * cols, "GB/s");
    });
}

/* ---- elementwise ops at the model's unaligned sub-offsets --------------------------------- */

static void check_offsets() {
    run_case("silu_mul at +1 float", [&] { /* silu_mul: odd F (perceiver/tiny FFN widths), gu and out 4-byte aligned only */
        const int64_t rows = 7, F = 33;
        auto gu = randv(1 + rows * 2 * F, 4.0f);
        Dev dgu(gu), dout((1 + rows * F) * 4);
        OK(be->silu_mul(be, dgu.f() + 1, dout.f() + 1, rows, F));
        std::vector<double> ref(rows * F);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t f = 0; f < F; f++) ref[r * F + f] = act_ref(gu[1 + r * 2 * F + f], TG_ACT_SILU) * gu[1 + r * 2 * F + F + f];
        auto got = dout.get();
        got.erase(got.begin());
        report("silu_mul rows=7 F=33 at +1 float", got, ref, 2e-6, 0, 0, "");
    });
    run_case("add_bcast + activation at +1 float", [&] { /* add_bcast and activation with n % 4 == 0 but a pointer 4-byte aligned only */
        const int64_t outer = 5, n = 256;
        auto y = randv(1 + outer * n), x = randv(1 + n);
        Dev dy(y), dx(x);
        OK(be->add_bcast(be, dy.f() + 1, dx.f() + 1, outer, n));
        OK(be->activation(be, dy.f() + 1, outer * n, TG_ACT_GELU));
        std::vector<double> ref(outer * n);
        for (int64_t o = 0; o < outer; o++)
            for (int64_t i = 0; i < n; i++) ref[o * n + i] = act_ref((double)(y[1 + o * n + i] + x[1 + i]), TG_ACT_GELU);
        auto got = dy.get();
        got.erase(got.begin());
        report("add_bcast + activation n=256 at +1 float", got, ref, 2e-6, 0, 0, "");
    });
    /* rope on the key part of a KV cache slot: row_stride = Dk = kv_heads * hd, from kslot + pos0 * Dk + 1 */
    run_case("rope KV-cache keys", [&] { check_rope("rope KV-cache keys (stride Dk, +1 float) theta=1e6", 9, 4, 64, 4 * 64, 3 * 4 * 64 + 1, 1e6f, 3, 1, false); });
    /* embedding of device ids into the middle of a spliced row buffer */
    for (int dtype : {TG_F32, TG_BF16}) {
        run_case(std::string("embedding at an offset ") + dtype_name(dtype), [&] {
            const int64_t vocab = 50, cols = 36, nid = 5, off = 3 * cols + 1;
            auto table = randv(vocab * cols);
            std::vector<int32_t> ids = {0, 49, 7, 7, 13};
            Weight T(table, vocab, cols, dtype);
            Dev dids(ids), dout((off + nid * cols) * 4);
            OK(be->embedding(be, &T.w, dids.i() + 1, dout.f() + off, nid - 1));
            std::vector<double> ref((nid - 1) * cols);
            for (int64_t r = 0; r < nid - 1; r++)
                for (int64_t c = 0; c < cols; c++) ref[r * cols + c] = round_dtype(table[ids[1 + r] * cols + c], dtype);
            auto got = dout.get();
            got.erase(got.begin(), got.begin() + off);
            got.resize(ref.size());
            char name[96];
            snprintf(name, sizeof name, "embedding %s ids+1 out+%lld floats", dtype_name(dtype), (long long)off);
            report(name, got, ref, 0.0, 0, 0, "");
        });
    }
}

/* ---- errors: bad input is reported, never fatal --------------------------------------- */

static void check_errors() {
    bool ok = true;
    tg_weight W;
    std::vector<float> w(16, 1.0f);
    ok &= upload(&W, w, 4, 4, 7) != 0 && strstr(be->err, "dtype") != nullptr;
    void *p = be->alloc(be, (size_t)1 << 50);
    ok &= p == nullptr && strstr(be->err, "out of memory") != nullptr;
    tg_attention a;
    memset(&a, 0, sizeof a);
    a.B = 1, a.Tq = 1, a.Tk = 1, a.n_heads = 3, a.n_kv_heads = 2, a.head_dim = 64;
    ok &= be->attention(be, &a) != 0;
    char err[256];
    tg_backend *bad = tg_cuda_backend_create(999, err, sizeof err);
    ok &= bad == nullptr && strstr(err, "no CUDA device") != nullptr;
    ok &= be->sync(be) == 0; /* the stream is still healthy */
    /* a failed call is reported by its own op and cleared there: the next op succeeds with no message */
    {
        Dev dx(std::vector<float>(64, 1.0f));
        ok &= be->copy(be, nullptr, dx.f(), 64) != 0 && strstr(be->err, "cudaMemcpyAsync") != nullptr &&
              strstr(be->err, "lost for good") == nullptr;
        be->err[0] = 0;
        ok &= be->activation(be, dx.f(), 64, TG_ACT_SILU) == 0 && be->err[0] == 0 && be->sync(be) == 0;
    }
    std::vector<float> w16(16, 1.0f);
    w16[5] = 70000.0f;
    ok &= upload(&W, w16, 4, 4, TG_F16) != 0 && strstr(be->err, "float16 range") != nullptr;
    printf("%-58s %s\n", "error paths (bad dtype, OOM, bad heads, bad ordinal, failed copy, f16 range)", ok ? "PASS" : "FAIL");
    (ok ? n_pass : n_fail)++;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "quick")) do_bench = false;
    char err[512];
    be = tg_cuda_backend_create(0, err, sizeof err);
    if (!be) {
        fprintf(stderr, "tg_cuda_backend_create: %s\n", err);
        return 2;
    }
    /* cases in a dtype loop name the dtype (the macro text says only "dtype") */
#define DCASE(...) run_case(std::string(dtype_name(dtype)) + ": " #__VA_ARGS__, [&] { __VA_ARGS__; })
    for (int dtype : {TG_F32, TG_BF16, TG_F16}) {
        DCASE(check_linear(1, 1024, 512, dtype, true, false, false, TG_ACT_NONE));
        DCASE(check_linear(3, 1000, 776, dtype, true, true, true, TG_ACT_GELU));
        DCASE(check_linear(77, 768, 1024, dtype, true, true, false, TG_ACT_NONE));
        DCASE(check_linear(77, 768, 1024, dtype, true, true, true, TG_ACT_QUICK_GELU));
        DCASE(check_linear(130, 256, 100, dtype, false, false, false, TG_ACT_SILU)); /* K % 8 != 0 */
        DCASE(check_linear(25, 208, 144, dtype, true, true, false, TG_ACT_GELU_TANH)); /* SigLIP MLP */
        DCASE(check_linear(5, 300, 100, dtype, true, true, false, TG_ACT_GELU));     /* GEMV refused: Lt */
        /* unaligned pointers, as the model passes them */
        DCASE(check_linear(1, 257, 512, dtype, true, false, false, TG_ACT_NONE, 0, 1));  /* decode K/V row into the cache */
        DCASE(check_linear(37, 257, 512, dtype, true, false, false, TG_ACT_NONE, 0, 1)); /* prefill K/V into the cache */
        DCASE(check_linear(37, 256, 512, dtype, true, true, true, TG_ACT_NONE, 0, 3));   /* residual == y at an offset */
        DCASE(check_linear(2, 256, 512, dtype, false, true, true, TG_ACT_NONE, 0, 1));   /* GEMV residual == y at an offset */
        DCASE(check_linear(3, 256, 512, dtype, true, true, false, TG_ACT_GELU, 1, 0));   /* x unaligned: GEMV refused */
        DCASE(check_linear(37, 301, 100, dtype, true, true, true, TG_ACT_SILU, 1, 1));   /* odd widths, both unaligned */
    }
    CASE(check_norms(577, 1024));
    CASE(check_norms(3, 4096));
    CASE(check_norms(7, 77));
    const AttCase cases[] = {
        {2, 100, 100, 4, 2, 64, true, false, false, false, true},
        {2, 77, 77, 8, 8, 64, true, false, false, true, true},   /* CLIP text: causal + padding mask */
        {1, 577, 577, 16, 16, 64, false, false, false, false, false},
        {2, 64, 130, 16, 4, 96, false, false, false, false, true}, /* perceiver */
        {2, 576, 1, 16, 16, 64, false, false, false, false, false}, /* FOM cross-attention */
        {3, 50, 120, 8, 2, 128, true, true, true, true, true},
        {2, 33, 90, 4, 4, 80, true, true, true, false, false},
        {1, 20, 20, 2, 1, 200, true, false, false, false, false},
        {2, 1, 1500, 32, 8, 128, true, true, true, false, false}, /* decode, split-K */
        {2, 3, 200, 8, 8, 64, true, true, true, true, true},
        {1, 1, 5000, 8, 8, 128, true, false, false, false, false}, /* decode, many splits */
        /* the model's real shapes */
        {1, 64, 4 * 576 + 64, 16, 4, 96, false, false, false, false, true}, /* perceiver image layer + DP map */
        {2, 64, 77 + 64, 16, 4, 96, false, false, false, true, false},      /* perceiver text layer, padded texts */
        {2, 5, 5, 8, 8, 64, true, false, false, true, false},               /* short CLIP text guide: decode path */
        {3, 1, 40, 4, 4, 64, false, false, true, false, false, 64},         /* tiny LLM decode step, KV cache */
        {4, 1, 700, 32, 32, 128, false, false, true, false, false, 1024},   /* Vicuna-7B decode step, B = 4 */
        {2, 1, 300, 14, 2, 64, false, false, true, false, false, 512},      /* Qwen2-0.5B-like GQA decode */
        {1, 300, 300, 4, 4, 64, true, false, false, false, true, 512},      /* tiny LLM prefill + attention map */
        {1, 5, 5, 4, 4, 64, true, false, false, false, true, 512},          /* short prompt prefill: decode path */
        {1, 20, 120, 4, 4, 64, true, false, false, false, false, 512},      /* continuation, q_pos = Tk - Tq */
    };
    for (const auto &c : cases)
        run_case("attention case " + std::to_string(&c - cases) + " of the table in main", [&] { check_attention(c); });
    if (do_bench) {
        /* the shapes that matter on H100/H200 */
        CASE(check_linear(1, 4096, 4096, TG_BF16, false, true, true, TG_ACT_NONE));
        CASE(check_linear(1, 11008 * 2, 4096, TG_BF16, false, false, false, TG_ACT_NONE));
        CASE(check_linear(700, 4096, 4096, TG_BF16, false, true, false, TG_ACT_NONE));
        CASE(check_linear(700, 11008, 4096, TG_BF16, true, false, false, TG_ACT_GELU));
        CASE(check_attention({1, 700, 700, 32, 32, 128, true, false, false, false, false}));
        CASE(check_attention({1, 1, 2048, 32, 32, 128, true, false, false, false, false}));
    }
    check_elementwise(); /* run_case per op inside */
    check_offsets();
    CASE(check_errors());
    printf("cuBLASLt calls redone with cublasGemmEx: %d\n", tg_impl(be)->lt_failures);
    be->destroy(be);
    printf("%d passed, %d failed, %d skipped\n", n_pass, n_fail, n_skip);
    return n_fail || n_skip ? 1 : 0;
}
