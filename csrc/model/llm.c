/* llm.c -- the language model: Llama-2/Vicuna, Llama-3 and Qwen2 decoders with a KV cache.
 *
 * Pre-norm decoder layers (SPEC 3): RMSNorm -> q/k/v projections (biases for
 * Qwen2) -> rotary embedding (rotate-half, theta from config) -> grouped-query
 * causal attention against the cache -> o_proj + residual; RMSNorm -> SwiGLU
 * (gate and up stacked in one matrix) -> down_proj + residual.  One forward
 * function serves prefill and decode: its rows are segments of sequences, each
 * in its own slot of a caller-owned KV cache (tg_kv_cache, model.h); the
 * products run over all rows at once, attention per segment.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fail.h"
#include "model.h"

void kv_release(tg_model *m, tg_kv_cache *kv) {
    for (int l = 0; kv->k && l < m->c.layers; l++) {
        if (kv->k[l]) BE->release(BE, kv->k[l]);
        if (kv->v[l]) BE->release(BE, kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

int kv_reserve(tg_model *m, tg_kv_cache *kv, int slots, int len) {
    const tg_config *c = &m->c;
    if (kv->k && slots <= kv->slots && len <= kv->len) return 0;
    if (slots < kv->slots) slots = kv->slots;
    if (len < kv->len) len = kv->len;
    kv_release(m, kv);
    kv->k = calloc((size_t)c->layers + 1, sizeof(float *));
    kv->v = calloc((size_t)c->layers + 1, sizeof(float *));
    if (!kv->k || !kv->v) {
        kv_release(m, kv);
        return model_oom(m, "KV cache table");
    }
    const size_t bytes = (size_t)slots * (size_t)len * (size_t)c->kv_heads * (size_t)c->head_dim * sizeof(float);
    for (int l = 0; l < c->layers; l++) {
        kv->k[l] = BE->alloc(BE, bytes);
        kv->v[l] = kv->k[l] ? BE->alloc(BE, bytes) : NULL;
        if (!kv->v[l]) {
            be_fail(m, "KV cache allocation");
            kv_release(m, kv);
            return -1;
        }
    }
    kv->slots = slots;
    kv->len = len;
    return 0;
}

int llm_exact_rows(tg_model *m) { return BE->exact_rows(BE, m->c.dtype); }

/* the MLP half of a layer, in place on the residual stream res (rows, H) */
static int llm_mlp(tg_model *m, const llm_layer *L, float *res, float *n, float *gu, float *f, int64_t rows) {
    const tg_config *c = &m->c;
    CHECK(BE->rmsnorm(BE, res, L->post_norm.w.data, n, rows, c->hidden, c->rms_eps));
    CHECK(BE->linear(BE, n, &L->gate_up_w.w, NULL, NULL, gu, rows, TG_ACT_NONE));
    CHECK(BE->silu_mul(BE, gu, f, rows, c->ffn));
    CHECK(BE->linear(BE, f, &L->down_w.w, NULL, res, res, rows, TG_ACT_NONE));
    return 0;
}

/* Attention of the rows of segments [s0, s1) over their slots.  A one-row segment is a decode row: it
 * attends over kv_len = pos0 + 1 keys of its slot, and consecutive one-row segments in consecutive slots go
 * in one batched call (bitwise what each gets alone).  A longer segment attends causally in one call. */
static int llm_attend(tg_model *m, tg_kv_cache *kv, int l, const float *q, float *a, int n_seg, const int32_t *slot,
                      const int32_t *pos0, const int32_t *len, const int32_t *kvlen_dev, float *probs_accum) {
    const tg_config *c = &m->c;
    const int64_t hd = c->head_dim, Dq = (int64_t)c->heads * hd, Dk = (int64_t)c->kv_heads * hd;
    const int64_t slot_floats = (int64_t)kv->len * Dk;
    int64_t row = 0;
    for (int s = 0; s < n_seg;) {
        int e = s + 1; /* [s, e): one call */
        if (len[s] == 1)
            while (e < n_seg && len[e] == 1 && slot[e] == slot[s] + (e - s)) e++;
        tg_attention at = {0};
        at.q = q + row * Dq, at.out = a + row * Dq;
        at.k = kv->k[l] + slot[s] * slot_floats, at.v = kv->v[l] + slot[s] * slot_floats;
        at.q_stride = at.o_stride = Dq;
        at.k_stride = at.v_stride = Dk;
        at.k_bstride = at.v_bstride = slot_floats;
        at.n_heads = c->heads, at.n_kv_heads = c->kv_heads, at.head_dim = (int)hd;
        at.scale = 1.0f / sqrtf((float)hd);
        at.probs_accum = probs_accum;
        if (len[s] == 1) {
            at.q_bstride = at.o_bstride = Dq;
            at.B = e - s, at.Tq = 1, at.Tk = 0;
            for (int i = s; i < e; i++)
                if (pos0[i] + 1 > at.Tk) at.Tk = pos0[i] + 1;
            at.kv_len = kvlen_dev + s;
        } else {
            at.q_bstride = at.o_bstride = (int64_t)len[s] * Dq;
            at.B = 1, at.Tq = len[s], at.Tk = pos0[s] + len[s];
            at.causal = 1;
        }
        CHECK(BE->attention(BE, &at));
        for (int i = s; i < e; i++) row += len[i];
        s = e;
    }
    return 0;
}

int llm_forward(tg_model *m, tg_kv_cache *kv, const float *x, int n_seg, const int32_t *slot, const int32_t *pos0,
                const int32_t *len, float *hidden_out, float *probs_accum) {
    const tg_config *c = &m->c;
    const int64_t H = c->hidden, hd = c->head_dim, Dq = (int64_t)c->heads * hd, Dk = (int64_t)c->kv_heads * hd;
    if (n_seg < 1 || (probs_accum && n_seg != 1)) return model_fail(m, "internal: llm_forward of %d segments", n_seg);
    int64_t T = 0;
    for (int s = 0; s < n_seg; s++) {
        if (slot[s] < 0 || slot[s] >= kv->slots || pos0[s] < 0 || len[s] < 1 || pos0[s] + len[s] > kv->len)
            return model_fail(m, "internal: KV cache too small");
        if ((int64_t)slot[s] * kv->len + pos0[s] + len[s] > INT32_MAX) return model_fail(m, "KV cache of more than 2^31 rows");
        T += len[s];
    }
    float *res, *n, *q, *k, *v, *a, *gu, *f, *pos_dev, *rows_dev, *kvlen_dev;
    ALLOC(res, T * H);
    ALLOC(n, T * H);
    ALLOC(q, T * Dq);
    ALLOC(k, T * Dk);
    ALLOC(v, T * Dk);
    ALLOC(a, T * Dq);
    ALLOC(gu, T * 2 * c->ffn);
    ALLOC(f, T * c->ffn);
    ALLOC(pos_dev, T);
    ALLOC(rows_dev, T);
    ALLOC(kvlen_dev, n_seg);
    /* per row: its position (rope) and its cache row (slot * len + position); per segment: keys it sees */
    int32_t *host = malloc((size_t)(2 * T + n_seg) * sizeof(int32_t));
    if (!host) return model_oom(m, "positions");
    int32_t *pos = host, *rows = host + T, *kvlen = host + 2 * T;
    for (int s = 0, r = 0; s < n_seg; s++) {
        kvlen[s] = pos0[s] + len[s];
        for (int i = 0; i < len[s]; i++, r++) {
            pos[r] = pos0[s] + i;
            rows[r] = (int32_t)((int64_t)slot[s] * kv->len + pos[r]);
        }
    }
    int rc = BE->to_device(BE, pos_dev, pos, (size_t)T * 4) || BE->to_device(BE, rows_dev, rows, (size_t)T * 4) ||
             BE->to_device(BE, kvlen_dev, kvlen, (size_t)n_seg * 4);
    free(host);
    if (rc) return be_fail(m, "positions upload");
    CHECK(BE->copy(BE, res, x, (size_t)(T * H) * sizeof(float)));
    for (int l = 0; l < c->layers; l++) {
        const llm_layer *L = &m->l_layers[l];
        CHECK(BE->rmsnorm(BE, res, L->in_norm.w.data, n, T, H, c->rms_eps));
        CHECK(BE->linear(BE, n, &L->q_w.w, L->q_b.w.data, NULL, q, T, TG_ACT_NONE));
        CHECK(BE->linear(BE, n, &L->k_w.w, L->k_b.w.data, NULL, k, T, TG_ACT_NONE));
        CHECK(BE->linear(BE, n, &L->v_w.w, L->v_b.w.data, NULL, v, T, TG_ACT_NONE));
        CHECK(BE->rope(BE, q, T, Dq, c->heads, (int)hd, (const int32_t *)pos_dev, c->rope_theta));
        CHECK(BE->rope(BE, k, T, Dk, c->kv_heads, (int)hd, (const int32_t *)pos_dev, c->rope_theta));
        CHECK(BE->scatter_rows(BE, k, (const int32_t *)rows_dev, kv->k[l], T, Dk));
        CHECK(BE->scatter_rows(BE, v, (const int32_t *)rows_dev, kv->v[l], T, Dk));
        if (llm_attend(m, kv, l, q, a, n_seg, slot, pos0, len, (const int32_t *)kvlen_dev, probs_accum)) return -1;
        CHECK(BE->linear(BE, a, &L->o_w.w, NULL, res, res, T, TG_ACT_NONE));
        if (llm_mlp(m, L, res, n, gu, f, T)) return -1;
    }
    CHECK(BE->rmsnorm(BE, res, m->norm.w.data, hidden_out, T, H, c->rms_eps));
    return 0;
}

int llm_head(tg_model *m, const float *hidden, int64_t rows, float *logits) {
    CHECK(BE->linear(BE, hidden, &m->lm_head.w, NULL, NULL, logits, rows, TG_ACT_NONE));
    return 0;
}
