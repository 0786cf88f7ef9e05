/* llm.c -- the language model: Llama-2/Vicuna, Llama-3 and Qwen2 decoders with a KV cache.
 *
 * Pre-norm decoder layers (SPEC 3): RMSNorm -> q/k/v projections (biases for
 * Qwen2) -> rotary embedding (rotate-half, theta from config) -> grouped-query
 * causal attention against the cache -> o_proj + residual; RMSNorm -> SwiGLU
 * (gate and up stacked in one matrix) -> down_proj + residual.  The cache is
 * (slots, cache_len, kv_heads*head_dim) per layer for keys and for values,
 * allocated once per generate call; prefill writes a sequence's keys straight
 * into its slot, a decode step appends one row per sequence.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fail.h"
#include "model.h"

int llm_cache_reserve(tg_model *m, int slots, int len) {
    const tg_config *c = &m->c;
    if (m->cache_k && slots <= m->cache_slots && len <= m->cache_len) return 0;
    if (slots < m->cache_slots) slots = m->cache_slots;
    if (len < m->cache_len) len = m->cache_len;
    if (!m->cache_k) {
        m->cache_k = calloc((size_t)c->layers + 1, sizeof(float *));
        m->cache_v = calloc((size_t)c->layers + 1, sizeof(float *));
        if (!m->cache_k || !m->cache_v) return model_oom(m, "KV cache table");
    }
    const size_t bytes = (size_t)slots * (size_t)len * (size_t)c->kv_heads * (size_t)c->head_dim * sizeof(float);
    for (int l = 0; l < c->layers; l++) {
        if (m->cache_k[l]) BE->release(BE, m->cache_k[l]);
        if (m->cache_v[l]) BE->release(BE, m->cache_v[l]);
        m->cache_k[l] = m->cache_v[l] = NULL;
    }
    m->cache_slots = m->cache_len = 0;
    for (int l = 0; l < c->layers; l++) {
        m->cache_k[l] = BE->alloc(BE, bytes);
        m->cache_v[l] = m->cache_k[l] ? BE->alloc(BE, bytes) : NULL;
        if (!m->cache_v[l]) return be_fail(m, "KV cache allocation");
    }
    m->cache_slots = slots;
    m->cache_len = len;
    return 0;
}

/* the MLP half of a layer, in place on the residual stream res (rows, H) */
static int llm_mlp(tg_model *m, const llm_layer *L, float *res, float *n, float *gu, float *f, int64_t rows) {
    const tg_config *c = &m->c;
    CHECK(BE->rmsnorm(BE, res, L->post_norm.w.data, n, rows, c->hidden, c->rms_eps));
    CHECK(BE->linear(BE, n, &L->gate_up_w.w, NULL, NULL, gu, rows, TG_ACT_NONE));
    CHECK(BE->silu_mul(BE, gu, f, rows, c->ffn));
    CHECK(BE->linear(BE, f, &L->down_w.w, NULL, res, res, rows, TG_ACT_NONE));
    return 0;
}

int llm_forward(tg_model *m, const float *x, int64_t T, int slot, int pos0, float *hidden_out, float *probs_accum) {
    const tg_config *c = &m->c;
    const int64_t H = c->hidden, hd = c->head_dim, Dq = (int64_t)c->heads * hd, Dk = (int64_t)c->kv_heads * hd;
    if (slot >= m->cache_slots || pos0 + T > m->cache_len) return model_fail(m, "internal: KV cache too small");
    float *res, *n, *q, *a, *gu, *f, *pos_dev;
    ALLOC(res, T * H);
    ALLOC(n, T * H);
    ALLOC(q, T * Dq);
    ALLOC(a, T * Dq);
    ALLOC(gu, T * 2 * c->ffn);
    ALLOC(f, T * c->ffn);
    ALLOC(pos_dev, T);
    int32_t *pos = malloc((size_t)T * sizeof(int32_t));
    if (!pos) return model_oom(m, "positions");
    for (int64_t i = 0; i < T; i++) pos[i] = (int32_t)(pos0 + i);
    int rc = BE->to_device(BE, pos_dev, pos, (size_t)T * 4);
    free(pos);
    if (rc) return be_fail(m, "positions upload");
    CHECK(BE->copy(BE, res, x, (size_t)(T * H) * sizeof(float)));

    for (int l = 0; l < c->layers; l++) {
        const llm_layer *L = &m->l_layers[l];
        float *kslot = m->cache_k[l] + (int64_t)slot * m->cache_len * Dk, *vslot = m->cache_v[l] + (int64_t)slot * m->cache_len * Dk;
        CHECK(BE->rmsnorm(BE, res, L->in_norm.w.data, n, T, H, c->rms_eps));
        CHECK(BE->linear(BE, n, &L->q_w.w, L->q_b.w.data, NULL, q, T, TG_ACT_NONE));
        CHECK(BE->linear(BE, n, &L->k_w.w, L->k_b.w.data, NULL, kslot + pos0 * Dk, T, TG_ACT_NONE));
        CHECK(BE->linear(BE, n, &L->v_w.w, L->v_b.w.data, NULL, vslot + pos0 * Dk, T, TG_ACT_NONE));
        CHECK(BE->rope(BE, q, T, Dq, c->heads, (int)hd, (const int32_t *)pos_dev, c->rope_theta));
        CHECK(BE->rope(BE, kslot + pos0 * Dk, T, Dk, c->kv_heads, (int)hd, (const int32_t *)pos_dev, c->rope_theta));
        tg_attention at = {0};
        at.q = q, at.k = kslot, at.v = vslot, at.out = a;
        at.q_stride = at.o_stride = Dq;
        at.k_stride = at.v_stride = Dk;
        at.q_bstride = at.o_bstride = T * Dq;
        at.k_bstride = at.v_bstride = (int64_t)m->cache_len * Dk;
        at.B = 1, at.Tq = (int)T, at.Tk = (int)(pos0 + T);
        at.n_heads = c->heads, at.n_kv_heads = c->kv_heads, at.head_dim = (int)hd;
        at.scale = 1.0f / sqrtf((float)hd);
        at.causal = 1;
        at.probs_accum = probs_accum;
        CHECK(BE->attention(BE, &at));
        CHECK(BE->linear(BE, a, &L->o_w.w, NULL, res, res, T, TG_ACT_NONE));
        if (llm_mlp(m, L, res, n, gu, f, T)) return -1;
    }
    CHECK(BE->rmsnorm(BE, res, m->norm.w.data, hidden_out, T, H, c->rms_eps));
    return 0;
}

/* Row b's sequence lives in cache slot slots_host[b] (slots_host NULL: slot b).  Consecutive slots (the
 * scheduler keeps its running sequences in slots 0..n-1) attend in one batched call, others row by row. */
int llm_decode_step(tg_model *m, const float *x, int B, const int32_t *slots_host, const int32_t *pos_host, float *hidden_out) {
    const tg_config *c = &m->c;
    const int64_t H = c->hidden, hd = c->head_dim, Dq = (int64_t)c->heads * hd, Dk = (int64_t)c->kv_heads * hd;
    const int s0 = slots_host ? slots_host[0] : 0;
    int consecutive = 1;
    for (int b = 0; b < B; b++) {
        const int sb = slots_host ? slots_host[b] : b;
        if (sb < 0 || sb >= m->cache_slots) return model_fail(m, "internal: KV cache has too few slots");
        if (sb != s0 + b) consecutive = 0;
    }
    const int64_t slot_floats = (int64_t)m->cache_len * Dk;
    float *res, *n, *q, *k, *v, *a, *gu, *f, *pos_dev, *len_dev, *rows_dev;
    ALLOC(res, B * H);
    ALLOC(n, B * H);
    ALLOC(q, B * Dq);
    ALLOC(k, B * Dk);
    ALLOC(v, B * Dk);
    ALLOC(a, B * Dq);
    ALLOC(gu, (int64_t)B * 2 * c->ffn);
    ALLOC(f, (int64_t)B * c->ffn);
    ALLOC(pos_dev, B);
    ALLOC(len_dev, B);
    ALLOC(rows_dev, B);
    int32_t lens[256], rows[256];
    if (B > 256) return model_fail(m, "decode batch larger than 256");
    int maxlen = 0;
    for (int b = 0; b < B; b++) {
        if (pos_host[b] >= m->cache_len) return model_fail(m, "internal: KV cache too short");
        lens[b] = pos_host[b] + 1;
        if (lens[b] > maxlen) maxlen = lens[b];
        /* the cache row (of Dk floats) this row's new K/V go to: slot * cache_len + position */
        const int64_t row = (int64_t)(slots_host ? slots_host[b] : b) * m->cache_len + pos_host[b];
        if (row > INT32_MAX) return model_fail(m, "KV cache of more than 2^31 rows");
        rows[b] = (int32_t)row;
    }
    if (BE->to_device(BE, pos_dev, pos_host, (size_t)B * 4) || BE->to_device(BE, len_dev, lens, (size_t)B * 4) ||
        BE->to_device(BE, rows_dev, rows, (size_t)B * 4))
        return be_fail(m, "positions upload");
    CHECK(BE->copy(BE, res, x, (size_t)(B * H) * sizeof(float)));
    for (int l = 0; l < c->layers; l++) {
        const llm_layer *L = &m->l_layers[l];
        CHECK(BE->rmsnorm(BE, res, L->in_norm.w.data, n, B, H, c->rms_eps));
        CHECK(BE->linear(BE, n, &L->q_w.w, L->q_b.w.data, NULL, q, B, TG_ACT_NONE));
        /* one sequence: project straight into its cache row; several: project, then scatter rows */
        float *kd = B == 1 ? m->cache_k[l] + s0 * slot_floats + (int64_t)pos_host[0] * Dk : k;
        float *vd = B == 1 ? m->cache_v[l] + s0 * slot_floats + (int64_t)pos_host[0] * Dk : v;
        CHECK(BE->linear(BE, n, &L->k_w.w, L->k_b.w.data, NULL, kd, B, TG_ACT_NONE));
        CHECK(BE->linear(BE, n, &L->v_w.w, L->v_b.w.data, NULL, vd, B, TG_ACT_NONE));
        CHECK(BE->rope(BE, q, B, Dq, c->heads, (int)hd, (const int32_t *)pos_dev, c->rope_theta));
        CHECK(BE->rope(BE, kd, B, Dk, c->kv_heads, (int)hd, (const int32_t *)pos_dev, c->rope_theta));
        if (B > 1) { /* one scatter per cache instead of a copy per row */
            CHECK(BE->scatter_rows(BE, k, (const int32_t *)rows_dev, m->cache_k[l], B, Dk));
            CHECK(BE->scatter_rows(BE, v, (const int32_t *)rows_dev, m->cache_v[l], B, Dk));
        }
        tg_attention at = {0};
        at.q = q, at.k = m->cache_k[l] + s0 * slot_floats, at.v = m->cache_v[l] + s0 * slot_floats, at.out = a;
        at.q_stride = at.o_stride = Dq;
        at.q_bstride = at.o_bstride = Dq;
        at.k_stride = at.v_stride = Dk;
        at.k_bstride = at.v_bstride = slot_floats;
        at.B = B, at.Tq = 1, at.Tk = maxlen;
        at.n_heads = c->heads, at.n_kv_heads = c->kv_heads, at.head_dim = (int)hd;
        at.scale = 1.0f / sqrtf((float)hd);
        at.kv_len = (const int32_t *)len_dev;
        if (consecutive) {
            CHECK(BE->attention(BE, &at));
        } else {
            for (int b = 0; b < B; b++) { /* one row at a time, each against its own slot */
                tg_attention r = at;
                r.q = q + b * Dq, r.out = a + b * Dq;
                r.k = m->cache_k[l] + slots_host[b] * slot_floats, r.v = m->cache_v[l] + slots_host[b] * slot_floats;
                r.B = 1, r.Tk = lens[b];
                r.kv_len = (const int32_t *)len_dev + b;
                CHECK(BE->attention(BE, &r));
            }
        }
        CHECK(BE->linear(BE, a, &L->o_w.w, NULL, res, res, B, TG_ACT_NONE));
        if (llm_mlp(m, L, res, n, gu, f, B)) return -1;
    }
    CHECK(BE->rmsnorm(BE, res, m->norm.w.data, hidden_out, B, H, c->rms_eps));
    return 0;
}

int llm_head(tg_model *m, const float *hidden, int64_t rows, float *logits) {
    CHECK(BE->linear(BE, hidden, &m->lm_head.w, NULL, NULL, logits, rows, TG_ACT_NONE));
    return 0;
}
