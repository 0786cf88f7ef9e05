/* clip.c -- the CLIP towers: vision (patch tokens of a selected layer) and text.
 *
 * Both towers share one pre-LN encoder layer: LN1 -> multi-head attention
 * with q/k/v/out biases -> residual; LN2 -> fc1 -> activation -> fc2 ->
 * residual (HF CLIPEncoderLayer).  The vision tower runs only the layers up
 * to the selected hidden state (SPEC 2.1) and drops the class token; the
 * text tower applies a causal mask plus the `ids != 0` padding mask (SPEC 2.2
 * quirk) and pools the row at argmax(ids).  The layer is shared with the SigLIP
 * towers (siglip.c), whose layers are the same.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fail.h"
#include "model.h"

int layer_scratch_alloc(tg_model *m, layer_scratch *s, int64_t rows, int64_t D, int64_t F) {
    ALLOC(s->h, rows * D);
    ALLOC(s->q, rows * D);
    ALLOC(s->k, rows * D);
    ALLOC(s->v, rows * D);
    ALLOC(s->a, rows * D);
    ALLOC(s->f, rows * F);
    return 0;
}

/* x (B*T, D) in place through one CLIP encoder layer (SigLIP's is the same) */
int clip_layer_forward(tg_model *m, const clip_layer *L, float *x, int B, int T, int64_t D, int heads, float eps,
                       int act, int causal, const int32_t *key_mask, const layer_scratch *s) {
    const int64_t rows = (int64_t)B * T;
    CHECK(BE->layernorm(BE, x, L->ln1_w.w.data, L->ln1_b.w.data, s->h, rows, D, eps));
    CHECK(BE->linear(BE, s->h, &L->q_w.w, L->q_b.w.data, NULL, s->q, rows, TG_ACT_NONE));
    CHECK(BE->linear(BE, s->h, &L->k_w.w, L->k_b.w.data, NULL, s->k, rows, TG_ACT_NONE));
    CHECK(BE->linear(BE, s->h, &L->v_w.w, L->v_b.w.data, NULL, s->v, rows, TG_ACT_NONE));
    tg_attention at = {0};
    at.q = s->q, at.k = s->k, at.v = s->v, at.out = s->a;
    at.q_stride = at.k_stride = at.v_stride = at.o_stride = D;
    at.q_bstride = at.k_bstride = at.v_bstride = at.o_bstride = (int64_t)T * D;
    at.B = B, at.Tq = T, at.Tk = T, at.n_heads = heads, at.n_kv_heads = heads, at.head_dim = (int)(D / heads);
    at.scale = 1.0f / sqrtf((float)(D / heads));
    at.causal = causal;
    at.key_mask = key_mask;
    CHECK(BE->attention(BE, &at));
    CHECK(BE->linear(BE, s->a, &L->o_w.w, L->o_b.w.data, x, x, rows, TG_ACT_NONE));
    CHECK(BE->layernorm(BE, x, L->ln2_w.w.data, L->ln2_b.w.data, s->h, rows, D, eps));
    CHECK(BE->linear(BE, s->h, &L->fc1_w.w, L->fc1_b.w.data, NULL, s->f, rows, act));
    CHECK(BE->linear(BE, s->f, &L->fc2_w.w, L->fc2_b.w.data, x, x, rows, TG_ACT_NONE));
    return 0;
}

int clip_vision_forward(tg_model *m, const float *pix, int B, float *out) {
    const tg_config *c = &m->c;
    const int P = c->v_patch, G = c->v_image / P;
    const int64_t Np = (int64_t)G * G, T = Np + 1, D = c->v_hidden, rows = (int64_t)B * T;
    float *cols, *pe, *x;
    ALLOC(cols, (int64_t)B * Np * 3 * P * P);
    ALLOC(pe, (int64_t)B * Np * D);
    ALLOC(x, rows * D);
    CHECK(BE->im2col(BE, pix, cols, B, 3, c->v_image, P));
    CHECK(BE->linear(BE, cols, &m->v_patch.w, NULL, NULL, pe, (int64_t)B * Np, TG_ACT_NONE));
    for (int b = 0; b < B; b++) {
        CHECK(BE->copy(BE, x + b * T * D, m->v_cls.w.data, (size_t)D * sizeof(float)));
        CHECK(BE->copy(BE, x + (b * T + 1) * D, pe + b * Np * D, (size_t)(Np * D) * sizeof(float)));
    }
    CHECK(BE->add_bcast(BE, x, m->v_pos.w.data, B, T * D));
    CHECK(BE->layernorm(BE, x, m->v_pre_w.w.data, m->v_pre_b.w.data, x, rows, D, c->v_eps));
    layer_scratch s;
    if (layer_scratch_alloc(m, &s, rows, D, c->v_ffn)) return -1;
    for (int i = 0; i < c->v_select; i++)
        if (clip_layer_forward(m, &m->v_layers[i], x, B, (int)T, D, c->v_heads, c->v_eps, c->v_act, 0, NULL, &s)) return -1;
    for (int b = 0; b < B; b++)
        CHECK(BE->copy(BE, out + b * Np * D, x + (b * T + 1) * D, (size_t)(Np * D) * sizeof(float)));
    return 0;
}

int clip_text_forward(tg_model *m, const int32_t *ids, int B, int T, float *hidden, float *pooled) {
    const tg_config *c = &m->c;
    const int64_t D = c->t_hidden, rows = (int64_t)B * T;
    if (T > c->t_positions) return model_fail(m, "text guide has %d tokens, the text tower takes at most %d", T, c->t_positions);
    for (int64_t i = 0; i < rows; i++)
        if (ids[i] < 0 || ids[i] >= c->t_vocab)
            return model_fail(m, "text guide id %d at position %lld is outside the CLIP vocabulary [0, %d)", ids[i], (long long)i, c->t_vocab);
    /* host side: padding mask and pooled row indices */
    float *ids_dev, *mask_dev, *idx_dev;
    ALLOC(ids_dev, rows);
    ALLOC(mask_dev, rows);
    ALLOC(idx_dev, B);
    int32_t *mask = malloc((size_t)rows * sizeof(int32_t)), idx[1024];
    if (!mask) return model_oom(m, "an attention mask");
    int32_t *pidx = B <= 1024 ? idx : malloc((size_t)B * sizeof(int32_t));
    if (!pidx) {
        free(mask);
        return model_oom(m, "an attention mask");
    }
    for (int64_t i = 0; i < rows; i++) mask[i] = ids[i] != 0;
    for (int b = 0; b < B; b++) {
        int best = 0;
        for (int t = 1; t < T; t++)
            if (ids[(int64_t)b * T + t] > ids[(int64_t)b * T + best]) best = t;
        pidx[b] = b * T + best;
    }
    int rc = BE->to_device(BE, ids_dev, ids, (size_t)rows * 4) || BE->to_device(BE, mask_dev, mask, (size_t)rows * 4) ||
             BE->to_device(BE, idx_dev, pidx, (size_t)B * 4);
    free(mask);
    if (pidx != idx) free(pidx);
    if (rc) return be_fail(m, "text tower upload");

    CHECK(BE->embedding(BE, &m->t_tok.w, (const int32_t *)ids_dev, hidden, rows));
    CHECK(BE->add_bcast(BE, hidden, m->t_pos.w.data, B, (int64_t)T * D)); /* first T rows of the position table */
    layer_scratch s;
    if (layer_scratch_alloc(m, &s, rows, D, c->t_ffn)) return -1;
    for (int i = 0; i < c->t_layers; i++)
        if (clip_layer_forward(m, &m->t_layers[i], hidden, B, T, D, c->t_heads, c->t_eps, c->t_act, 1,
                               (const int32_t *)mask_dev, &s))
            return -1;
    CHECK(BE->layernorm(BE, hidden, m->t_fin_w.w.data, m->t_fin_b.w.data, hidden, rows, D, c->t_eps));
    if (pooled) CHECK(BE->gather_rows(BE, hidden, (const int32_t *)idx_dev, pooled, B, D));
    return 0;
}
