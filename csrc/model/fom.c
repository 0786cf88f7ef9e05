/* fom.c -- TG-FOM: the Q-former that turns the text guide into a mask on the image features.
 *
 * SPEC 2.3: t = resize_linear(pooled CLIP-text embedding) is the single
 * cross-attention token; x = LayerNorm(query_tokens) (one query per patch);
 * each BERT layer is post-LN self-attention, cross-attention to t on layers
 * i % cross_freq == 0, then the *query* FFN (GELU); the mask is
 * zero_layer(x).  Everything is batched over B text guides.
 */
#include <math.h>

#include "model.h"

/* x = LayerNorm(linear(a, o) + x): the BERT self/cross output block */
static int post_ln_out(tg_model *m, const float *a, const param *o_w, const param *o_b, const param *ln_w,
                       const param *ln_b, float *x, int64_t rows, int64_t D) {
    CHECK(BE->linear(BE, a, &o_w->w, o_b->w.data, x, x, rows, TG_ACT_NONE));
    CHECK(BE->layernorm(BE, x, ln_w->w.data, ln_b->w.data, x, rows, D, m->c.q_eps));
    return 0;
}

int fom_forward(tg_model *m, const float *pooled, int B, float *mask) {
    const tg_config *c = &m->c;
    const int64_t D = c->v_hidden, Nq = c->q_queries, rows = (int64_t)B * Nq;
    const int heads = c->q_heads, hd = (int)(D / heads);
    float *t, *x, *q, *k, *v, *a, *f, *tk, *tv;
    ALLOC(t, (int64_t)B * D);
    ALLOC(x, rows * D);
    ALLOC(q, rows * D);
    ALLOC(k, rows * D);
    ALLOC(v, rows * D);
    ALLOC(a, rows * D);
    ALLOC(f, rows * c->q_ffn);
    ALLOC(tk, (int64_t)B * D);
    ALLOC(tv, (int64_t)B * D);
    CHECK(BE->linear(BE, pooled, &m->q_resize_w.w, m->q_resize_b.w.data, NULL, t, B, TG_ACT_NONE));
    for (int b = 0; b < B; b++)
        CHECK(BE->layernorm(BE, m->q_queries.w.data, m->q_ln_w.w.data, m->q_ln_b.w.data, x + b * Nq * D, Nq, D, c->q_eps));

    tg_attention at = {0};
    at.q = q, at.out = a;
    at.q_stride = at.o_stride = D;
    at.q_bstride = at.o_bstride = Nq * D;
    at.B = B, at.Tq = (int)Nq, at.n_heads = heads, at.n_kv_heads = heads, at.head_dim = hd;
    at.scale = 1.0f / sqrtf((float)hd);
    for (int i = 0; i < c->q_layers; i++) {
        const qformer_layer *L = &m->q_layers[i];
        /* self attention over the queries */
        CHECK(BE->linear(BE, x, &L->sq_w.w, L->sq_b.w.data, NULL, q, rows, TG_ACT_NONE));
        CHECK(BE->linear(BE, x, &L->sk_w.w, L->sk_b.w.data, NULL, k, rows, TG_ACT_NONE));
        CHECK(BE->linear(BE, x, &L->sv_w.w, L->sv_b.w.data, NULL, v, rows, TG_ACT_NONE));
        at.k = k, at.v = v, at.Tk = (int)Nq;
        at.k_stride = at.v_stride = D;
        at.k_bstride = at.v_bstride = Nq * D;
        CHECK(BE->attention(BE, &at));
        if (post_ln_out(m, a, &L->so_w, &L->so_b, &L->sln_w, &L->sln_b, x, rows, D)) return -1;
        /* cross attention to the one text token */
        if (i % c->q_cross_freq == 0) {
            CHECK(BE->linear(BE, x, &L->cq_w.w, L->cq_b.w.data, NULL, q, rows, TG_ACT_NONE));
            CHECK(BE->linear(BE, t, &L->ck_w.w, L->ck_b.w.data, NULL, tk, B, TG_ACT_NONE));
            CHECK(BE->linear(BE, t, &L->cv_w.w, L->cv_b.w.data, NULL, tv, B, TG_ACT_NONE));
            at.k = tk, at.v = tv, at.Tk = 1;
            at.k_stride = at.v_stride = D;
            at.k_bstride = at.v_bstride = D;
            CHECK(BE->attention(BE, &at));
            if (post_ln_out(m, a, &L->co_w, &L->co_b, &L->cln_w, &L->cln_b, x, rows, D)) return -1;
        }
        /* query feed-forward */
        CHECK(BE->linear(BE, x, &L->f1_w.w, L->f1_b.w.data, NULL, f, rows, TG_ACT_GELU));
        if (post_ln_out(m, f, &L->f2_w, &L->f2_b, &L->fln_w, &L->fln_b, x, rows, D)) return -1;
    }
    CHECK(BE->linear(BE, x, &m->q_zero_w.w, m->q_zero_b.w.data, NULL, mask, rows, TG_ACT_NONE));
    return 0;
}
