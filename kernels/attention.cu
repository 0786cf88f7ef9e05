/* attention.cu -- scaled dot-product attention (tg_attention of backend.h).
 *
 * Three paths, all float32 with float32 accumulation and max-subtracted
 * softmax, all reading q/k/v/out through the strides of tg_attention (token
 * t of batch b, head h at base + b*bstride + t*stride + h*head_dim):
 *
 *  - prefill (Tq > 8): flash-attention style.  Grid (ceil(Tq/64), H, B),
 *    256 threads.  A block keeps a 64-query tile in shared memory and walks
 *    key tiles of 32 (K and V tiles in shared memory), computing the 64x32
 *    score tile (4x2 per thread), an online-softmax update of the running
 *    row max / row sum, and the 64 x head_dim output accumulator in registers
 *    (4 x head_dim/16 per thread).  Key tiles past kv_len or past the last
 *    causally visible key are skipped; no Tq x Tk matrix exists anywhere.
 *    Templated on the head dim rounded up to 64, 80, 96, 128 or 256 (padding
 *    is zero-filled), so any head_dim <= 256 works.
 *  - decode (Tq <= 8): one block of 128 threads per (split, head, query):
 *    a warp per key for q.k (lanes over head_dim), scores in shared memory,
 *    then threads over head_dim for p.V.  Long contexts are split over the
 *    keys (enough splits to fill the GPU twice) with partial (max, sum,
 *    acc[head_dim]) written to scratch and merged by a second kernel.
 *  - probs_accum != NULL: the output comes from one of the paths above, and
 *    a separate simple path adds the probabilities summed over heads:
 *    kernel 1 computes each row's max and sum (grid (Tq, H, B)), kernel 2
 *    (grid (Tq, B)) recomputes the scores with the same code and adds
 *    sum_h exp(s - max_h) / sum_h into probs_accum.  Slow, exact.
 *
 * Visibility (backend.h): j < kv_len[b], !causal or j <= q_pos[b] + i, and
 * key_mask[b*Tk + j] != 0.  A query with no visible key gets zeros.  Values
 * of keys at or beyond kv_len are never read into a product (the KV cache
 * past kv_len may hold garbage, even NaN).
 */
#include "common.cuh"

#define DEC_MAX_TQ 8     /* decode path for Tq up to this */
#define DEC_THREADS 128
#define DEC_MAX_CHUNK 4096 /* keys per decode block (scores live in shared memory) */

/* ---- visibility helpers ------------------------------------------------------- */

__device__ __forceinline__ int att_kv_len(const tg_attention &a, int b) {
    int n = a.kv_len ? a.kv_len[b] : a.Tk;
    return n < 0 ? 0 : (n > a.Tk ? a.Tk : n);
}
__device__ __forceinline__ int att_q_pos(const tg_attention &a, int b) { return a.q_pos ? a.q_pos[b] : a.Tk - a.Tq; }

/* keys [0, end) may be visible to query i (before the key mask) */
__device__ __forceinline__ int att_key_end(const tg_attention &a, int b, int i, int kvl, int qp) {
    int e = kvl;
    if (a.causal) {
        const long long c = (long long)qp + i + 1;
        if (c < e) e = c < 0 ? 0 : (int)c;
    }
    return e;
}
__device__ __forceinline__ bool att_mask_ok(const tg_attention &a, int b, int j) {
    return a.key_mask == nullptr || a.key_mask[(int64_t)b * a.Tk + j] != 0;
}

/* q.k over D with the lanes of a warp (lanes over d); every lane gets the sum */
__device__ __forceinline__ float warp_dot(const float *q, const float *k, int D, int lane) {
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += q[d] * k[d];
    return tg_warp_sum(s);
}

/* ---- prefill: flash attention ------------------------------------------------ */

#define FA_BQ 64
#define FA_BK 32
#define FA_THREADS 256

template <int DP>
static size_t flash_smem_bytes() {
    return sizeof(float) * ((size_t)FA_BQ * (DP + 1) + (size_t)FA_BK * (DP + 1) + (size_t)FA_BK * DP +
                            (size_t)FA_BQ * (FA_BK + 1) + 3 * FA_BQ);
}

template <int DP>
__global__ void __launch_bounds__(FA_THREADS) flash_attn_kernel(const tg_attention a) {
    extern __shared__ float sm[];
    float *Qs = sm;                          // (BQ, DP+1)
    float *Ks = Qs + FA_BQ * (DP + 1);       // (BK, DP+1)
    float *Vs = Ks + FA_BK * (DP + 1);       // (BK, DP)
    float *Ss = Vs + FA_BK * DP;             // (BQ, BK+1) scores, then probabilities
    float *row_m = Ss + FA_BQ * (FA_BK + 1); // (BQ) running max
    float *row_l = row_m + FA_BQ;            // (BQ) running sum
    float *row_a = row_l + FA_BQ;            // (BQ) rescale factor of this tile

    const int tid = threadIdx.x;
    const int q0 = blockIdx.x * FA_BQ, h = blockIdx.y, b = blockIdx.z;
    const int D = a.head_dim;
    const int hk = h / (a.n_heads / a.n_kv_heads);
    const float *qb = a.q + b * a.q_bstride + (int64_t)h * D;
    const float *kb = a.k + b * a.k_bstride + (int64_t)hk * D;
    const float *vb = a.v + b * a.v_bstride + (int64_t)hk * D;
    float *ob = a.out + b * a.o_bstride + (int64_t)h * D;

    const int kvl = att_kv_len(a, b), qp = att_q_pos(a, b);
    const int qlast = min(q0 + FA_BQ, a.Tq) - 1;
    const int kend = att_key_end(a, b, qlast, kvl, qp); /* no query of the tile sees a key >= kend */

    for (int idx = tid; idx < FA_BQ * DP; idx += FA_THREADS) {
        const int r = idx / DP, c = idx - r * DP;
        const int qi = q0 + r;
        Qs[r * (DP + 1) + c] = (qi < a.Tq && c < D) ? qb[(int64_t)qi * a.q_stride + c] : 0.0f;
    }
    if (tid < FA_BQ) {
        row_m[tid] = -INFINITY;
        row_l[tid] = 0.0f;
    }

    /* thread tiles: scores rows tq + 16i (i < 4), keys tk + 16j (j < 2);
     * output rows tq + 16i, dims td + 16jj (jj < DP/16) with td = tk */
    const int tq = tid >> 4, tk = tid & 15;
    constexpr int ND = DP / 16;
    float acc[4][ND];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int jj = 0; jj < ND; jj++) acc[i][jj] = 0.0f;

    for (int k0 = 0; k0 < kend; k0 += FA_BK) {
        __syncthreads(); /* previous tile fully consumed (and Q/row stats written on the first pass) */
        for (int idx = tid; idx < FA_BK * DP; idx += FA_THREADS) {
            const int r = idx / DP, c = idx - r * DP;
            const int kj = k0 + r;
            const bool ok = kj < kend && c < D;
            Ks[r * (DP + 1) + c] = ok ? kb[(int64_t)kj * a.k_stride + c] : 0.0f;
            /* zero V of keys that are masked out: p = 0 must not meet a NaN */
            Vs[r * DP + c] = (ok && att_mask_ok(a, b, kj)) ? vb[(int64_t)kj * a.v_stride + c] : 0.0f;
        }
        __syncthreads();

        /* scores */
        {
            float s[4][2];
#pragma unroll
            for (int i = 0; i < 4; i++) s[i][0] = s[i][1] = 0.0f;
#pragma unroll 8
            for (int d = 0; d < DP; d++) {
                float qv[4], kv[2];
#pragma unroll
                for (int i = 0; i < 4; i++) qv[i] = Qs[(tq + 16 * i) * (DP + 1) + d];
#pragma unroll
                for (int j = 0; j < 2; j++) kv[j] = Ks[(tk + 16 * j) * (DP + 1) + d];
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 2; j++) s[i][j] += qv[i] * kv[j];
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int qi = q0 + tq + 16 * i;
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const int kj = k0 + tk + 16 * j;
                    bool vis = qi < a.Tq && kj < kvl && att_mask_ok(a, b, kj) && kj < kend;
                    if (vis && a.causal) vis = (long long)kj <= (long long)qp + qi;
                    Ss[(tq + 16 * i) * (FA_BK + 1) + tk + 16 * j] = vis ? s[i][j] * a.scale : -INFINITY;
                }
            }
        }
        __syncthreads();

        /* online softmax: 4 threads per row, 8 keys each */
        {
            const int r = tid >> 2, sub = tid & 3;
            float *sr = Ss + r * (FA_BK + 1) + sub * 8;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 8; j++) mx = fmaxf(mx, sr[j]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_old = row_m[r];
            const float m_new = fmaxf(m_old, mx);
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float p = expf(sr[j] - m_use);
                sr[j] = p;
                sum += p;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            if (sub == 0) {
                const float alpha = expf(m_old - m_use);
                row_a[r] = alpha;
                row_l[r] = row_l[r] * alpha + sum;
                row_m[r] = m_new;
            }
        }
        __syncthreads();

        /* acc = acc * alpha + P V */
        {
            float al[4];
#pragma unroll
            for (int i = 0; i < 4; i++) al[i] = row_a[tq + 16 * i];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int jj = 0; jj < ND; jj++) acc[i][jj] *= al[i];
#pragma unroll 4
            for (int kk = 0; kk < FA_BK; kk++) {
                float p[4];
#pragma unroll
                for (int i = 0; i < 4; i++) p[i] = Ss[(tq + 16 * i) * (FA_BK + 1) + kk];
#pragma unroll
                for (int jj = 0; jj < ND; jj++) {
                    const float vv = Vs[kk * DP + tk + 16 * jj];
#pragma unroll
                    for (int i = 0; i < 4; i++) acc[i][jj] += p[i] * vv;
                }
            }
        }
    }
    __syncthreads();

#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = tq + 16 * i, qi = q0 + r;
        if (qi >= a.Tq) continue;
        const float l = row_l[r];
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *orow = ob + (int64_t)qi * a.o_stride;
#pragma unroll
        for (int jj = 0; jj < ND; jj++) {
            const int d = tk + 16 * jj;
            if (d < D) orow[d] = acc[i][jj] * inv;
        }
    }
}

template <int DP>
static cudaError_t launch_flash(const tg_attention &a, size_t smem_optin, cudaStream_t s) {
    const size_t smem = flash_smem_bytes<DP>();
    if (smem > smem_optin) return cudaErrorInvalidConfiguration;
    cudaError_t e = cudaFuncSetAttribute(flash_attn_kernel<DP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    dim3 grid((unsigned)((a.Tq + FA_BQ - 1) / FA_BQ), (unsigned)a.n_heads, (unsigned)a.B);
    flash_attn_kernel<DP><<<grid, FA_THREADS, smem, s>>>(a);
    return cudaGetLastError();
}

/* ---- decode: split-K over keys ------------------------------------------------ */

__device__ __forceinline__ float block_reduce(float v, float *red, bool is_max) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = is_max ? tg_warp_max(v) : tg_warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : (is_max ? -INFINITY : 0.0f);
    return is_max ? tg_warp_max(t) : tg_warp_sum(t);
}

/* grid (nsplit, H, B*Tq), DEC_THREADS threads, dynamic smem (D + chunk) floats.
 * nsplit == 1: writes out directly.  Else part[((bq*H + h)*nsplit + split)] =
 * (max, sum, acc[D]) with acc = sum_j exp(s_j - max) v_j (unnormalized). */
__global__ void __launch_bounds__(DEC_THREADS)
decode_attn_kernel(const tg_attention a, int nsplit, int chunk, float *part) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    const int D = a.head_dim;
    float *qs = sm;      // (D)
    float *sc = sm + D;  // (chunk)
    const int split = blockIdx.x, h = blockIdx.y;
    const int b = blockIdx.z / a.Tq, i = blockIdx.z - b * a.Tq;
    const int hk = h / (a.n_heads / a.n_kv_heads);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    const int kvl = att_kv_len(a, b), qp = att_q_pos(a, b);
    const int kend = att_key_end(a, b, i, kvl, qp);
    const int j0 = split * chunk;
    const int j1 = min(j0 + chunk, kend);
    const int n = j1 > j0 ? j1 - j0 : 0;

    const float *qrow = a.q + b * a.q_bstride + (int64_t)i * a.q_stride + (int64_t)h * D;
    const float *kb = a.k + b * a.k_bstride + (int64_t)hk * D;
    const float *vb = a.v + b * a.v_bstride + (int64_t)hk * D;
    for (int d = tid; d < D; d += DEC_THREADS) qs[d] = qrow[d];
    __syncthreads();

    for (int jj = warp; jj < n; jj += DEC_THREADS / 32) {
        const int j = j0 + jj;
        const float dot = warp_dot(qs, kb + (int64_t)j * a.k_stride, D, lane);
        if (lane == 0) sc[jj] = att_mask_ok(a, b, j) ? dot * a.scale : -INFINITY;
    }
    __syncthreads();

    float mx = -INFINITY;
    for (int jj = tid; jj < n; jj += DEC_THREADS) mx = fmaxf(mx, sc[jj]);
    mx = block_reduce(mx, red, true);
    const float m_use = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f;
    for (int jj = tid; jj < n; jj += DEC_THREADS) {
        const float p = expf(sc[jj] - m_use);
        sc[jj] = p;
        sum += p;
    }
    sum = block_reduce(sum, red, false); /* its barriers also publish sc[] */

    const int64_t bq = blockIdx.z;
    float *pp = part ? part + ((bq * a.n_heads + h) * nsplit + split) * (int64_t)(D + 2) : nullptr;
    float *orow = a.out + b * a.o_bstride + (int64_t)i * a.o_stride + (int64_t)h * D;
    for (int d = tid; d < D; d += DEC_THREADS) {
        float acc = 0.0f;
        for (int jj = 0; jj < n; jj++) {
            const float p = sc[jj];
            if (p != 0.0f) acc += p * vb[(int64_t)(j0 + jj) * a.v_stride + d];
        }
        if (pp) pp[2 + d] = acc;
        else orow[d] = sum > 0.0f ? acc / sum : 0.0f;
    }
    if (pp && tid == 0) {
        pp[0] = mx;
        pp[1] = sum;
    }
}

/* grid (H, B*Tq), threads over d: merge the nsplit partials of decode_attn_kernel */
__global__ void decode_combine_kernel(const tg_attention a, int nsplit, const float *__restrict__ part) {
    const int D = a.head_dim, h = blockIdx.x;
    const int b = blockIdx.y / a.Tq, i = blockIdx.y - b * a.Tq;
    const float *pp = part + ((int64_t)blockIdx.y * a.n_heads + h) * nsplit * (int64_t)(D + 2);
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, pp[s * (int64_t)(D + 2)]);
    float *orow = a.out + b * a.o_bstride + (int64_t)i * a.o_stride + (int64_t)h * D;
    const float m_use = M == -INFINITY ? 0.0f : M;
    float L = 0.0f;
    for (int s = 0; s < nsplit; s++) {
        const float *ps = pp + s * (int64_t)(D + 2);
        if (ps[1] > 0.0f) L += ps[1] * expf(ps[0] - m_use);
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < nsplit; s++) {
            const float *ps = pp + s * (int64_t)(D + 2);
            if (ps[1] > 0.0f) acc += ps[2 + d] * expf(ps[0] - m_use);
        }
        orow[d] = L > 0.0f ? acc / L : 0.0f;
    }
}

/* ---- probabilities summed over heads (attention maps) --------------------------- */

/* grid (Tq, H, B), 128 threads: stats[((b*H + h)*Tq + i)*2] = (row max, row sum of exp) */
__global__ void probs_stats_kernel(const tg_attention a, float *stats) {
    __shared__ float red[32];
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, D = a.head_dim;
    const int hk = h / (a.n_heads / a.n_kv_heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int kvl = att_kv_len(a, b), qp = att_q_pos(a, b);
    const int kend = att_key_end(a, b, i, kvl, qp);
    const float *qrow = a.q + b * a.q_bstride + (int64_t)i * a.q_stride + (int64_t)h * D;
    const float *kb = a.k + b * a.k_bstride + (int64_t)hk * D;
    float mx = -INFINITY;
    for (int j = warp; j < kend; j += nw) {
        const float s = warp_dot(qrow, kb + (int64_t)j * a.k_stride, D, lane) * a.scale;
        if (att_mask_ok(a, b, j)) mx = fmaxf(mx, s);
    }
    mx = block_reduce(mx, red, true);
    const float m_use = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f;
    for (int j = warp; j < kend; j += nw) {
        const float s = warp_dot(qrow, kb + (int64_t)j * a.k_stride, D, lane) * a.scale;
        if (att_mask_ok(a, b, j) && lane == 0) sum += expf(s - m_use);
    }
    sum = block_reduce(sum, red, false);
    if (threadIdx.x == 0) {
        float *st = stats + (((int64_t)b * a.n_heads + h) * a.Tq + i) * 2;
        st[0] = mx;
        st[1] = sum;
    }
}

/* grid (Tq, B), 128 threads, a warp per key: probs[b, i, j] += sum_h p_h(i, j) */
__global__ void probs_accum_kernel(const tg_attention a, const float *__restrict__ stats) {
    const int i = blockIdx.x, b = blockIdx.y, D = a.head_dim;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int kvl = att_kv_len(a, b), qp = att_q_pos(a, b);
    const int kend = att_key_end(a, b, i, kvl, qp);
    const int group = a.n_heads / a.n_kv_heads;
    for (int j = warp; j < kend; j += nw) {
        if (!att_mask_ok(a, b, j)) continue;
        float total = 0.0f;
        for (int h = 0; h < a.n_heads; h++) {
            const float *qrow = a.q + b * a.q_bstride + (int64_t)i * a.q_stride + (int64_t)h * D;
            const float *krow = a.k + b * a.k_bstride + (int64_t)j * a.k_stride + (int64_t)(h / group) * D;
            const float s = warp_dot(qrow, krow, D, lane) * a.scale;
            const float *st = stats + (((int64_t)b * a.n_heads + h) * a.Tq + i) * 2;
            const float m_use = st[0] == -INFINITY ? 0.0f : st[0];
            if (st[1] > 0.0f) total += expf(s - m_use) / st[1];
        }
        if (lane == 0) a.probs_accum[((int64_t)b * a.Tq + i) * a.Tk + j] += total;
    }
}

/* ---- the table entry ------------------------------------------------------------ */

int cuda_attention(tg_backend *be, const tg_attention *ap) {
    TG_CUDA_USE(be);
    tg_cuda_impl *im = tg_impl(be);
    cudaStream_t s = im->stream;
    if (!ap) {
        tg_cuda_set_err(be, "attention: NULL argument");
        return -1;
    }
    const tg_attention a = *ap;
    if (a.B < 0 || a.Tq < 0 || a.Tk < 0 || a.n_heads <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0) {
        tg_cuda_set_err(be, "attention: bad shape B=%d Tq=%d Tk=%d n_heads=%d n_kv_heads=%d", a.B, a.Tq, a.Tk,
                        a.n_heads, a.n_kv_heads);
        return -1;
    }
    if (a.head_dim <= 0 || a.head_dim > 256) {
        tg_cuda_set_err(be, "attention: head_dim %d not supported (1..256)", a.head_dim);
        return -1;
    }
    if (a.B == 0 || a.Tq == 0) return 0;
    if (a.n_heads > 65535 || a.B > 65535) {
        tg_cuda_set_err(be, "attention: n_heads %d or B %d over the grid limit 65535", a.n_heads, a.B);
        return -1;
    }
    const int D = a.head_dim;

    if (a.Tq <= DEC_MAX_TQ && (int64_t)a.B * a.Tq <= 65535) {
        /* decode: enough (split, head, query) blocks to fill the GPU twice */
        const int64_t rows = (int64_t)a.B * a.Tq * a.n_heads;
        int64_t nsplit = (2LL * im->sm_count + rows - 1) / rows;
        const int64_t max_split = (a.Tk + 63) / 64;        /* at least 64 keys per split */
        const int64_t min_split = (a.Tk + DEC_MAX_CHUNK - 1) / DEC_MAX_CHUNK;
        if (nsplit > max_split) nsplit = max_split;
        if (nsplit < min_split) nsplit = min_split;
        if (nsplit < 1) nsplit = 1;
        int64_t chunk = (a.Tk + nsplit - 1) / nsplit;
        if (chunk < 1) chunk = 1;
        nsplit = (a.Tk + chunk - 1) / chunk;
        if (nsplit < 1) nsplit = 1;
        float *part = NULL;
        if (nsplit > 1) {
            const size_t bytes = (size_t)rows * (size_t)nsplit * (size_t)(D + 2) * sizeof(float);
            if (tg_cuda_grow(be, &im->attn_buf, &im->attn_bytes, bytes)) return -1;
            part = (float *)im->attn_buf;
        }
        const size_t smem = (size_t)(D + chunk) * sizeof(float);
        dim3 grid((unsigned)nsplit, (unsigned)a.n_heads, (unsigned)(a.B * a.Tq));
        decode_attn_kernel<<<grid, DEC_THREADS, smem, s>>>(a, (int)nsplit, (int)chunk, part);
        CUDA_CHECK_LAUNCH(be);
        if (part) {
            dim3 g2((unsigned)a.n_heads, (unsigned)(a.B * a.Tq));
            const int t2 = D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : 256;
            decode_combine_kernel<<<g2, t2, 0, s>>>(a, (int)nsplit, part);
            CUDA_CHECK_LAUNCH(be);
        }
    } else {
        cudaError_t e;
        if (D <= 64) e = launch_flash<64>(a, im->smem_optin, s);
        else if (D <= 80) e = launch_flash<80>(a, im->smem_optin, s);
        else if (D <= 96) e = launch_flash<96>(a, im->smem_optin, s);
        else if (D <= 128) e = launch_flash<128>(a, im->smem_optin, s);
        else e = launch_flash<256>(a, im->smem_optin, s);
        if (e == cudaErrorInvalidConfiguration) {
            tg_cuda_set_err(be, "attention: head_dim %d needs more shared memory than the device offers (%zu bytes)", D,
                            im->smem_optin);
            return -1;
        }
        CUDA_CHECK(be, e);
    }

    if (a.probs_accum && a.Tk > 0) {
        /* stats reuse the attention scratch: the stream orders these kernels after
         * the combine kernel, and tg_cuda_grow synchronizes before freeing */
        const size_t stats_bytes = (size_t)a.B * a.n_heads * a.Tq * 2 * sizeof(float);
        if (tg_cuda_grow(be, &im->attn_buf, &im->attn_bytes, stats_bytes)) return -1;
        float *stats = (float *)im->attn_buf;
        probs_stats_kernel<<<dim3((unsigned)a.Tq, (unsigned)a.n_heads, (unsigned)a.B), 128, 0, s>>>(a, stats);
        CUDA_CHECK_LAUNCH(be);
        probs_accum_kernel<<<dim3((unsigned)a.Tq, (unsigned)a.B), 128, 0, s>>>(a, stats);
        CUDA_CHECK_LAUNCH(be);
    }
    return 0;
}
