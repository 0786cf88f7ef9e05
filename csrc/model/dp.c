/* dp.c -- TG-DP: the perceiver that reads the text guide, then the 4 high-resolution tiles.
 *
 * SPEC 2.6: x = pre_mlp(tile features + position_embedding[:4*Np]);
 * t = resize_linear(text hidden states); latents pass 2 Idefics2-style
 * perceiver layers, layer 0 reading t and layer 1 reading x (text, then
 * image).  Each layer: RMSNorm the latents and the context, queries from the
 * latents, keys/values from concat[context, latents], grouped-query
 * attention, residual; RMSNorm, SwiGLU MLP, residual.  Then perceiver.norm
 * and proj (Linear -> GELU -> Linear) to the LLM width.
 * Batched texts of different lengths: a sample only attends its own text
 * positions, so every sample equals its batch-1 run (SPEC 3, last point).
 */
#include <math.h>
#include <stdlib.h>

#include "fail.h"
#include "model.h"

int dp_forward(tg_model *m, const float *tile_feats, const float *text_hidden, const int32_t *text_len, int B, int T,
               int n_lat, float *out, float *probs_accum) {
    const tg_config *c = &m->c;
    const int64_t D = c->v_hidden, Nt = 4 * (int64_t)(c->v_image / c->v_patch) * (c->v_image / c->v_patch);
    const int64_t L = n_lat, Dq = (int64_t)c->p_heads * c->p_head_dim, Dk = (int64_t)c->p_kv_heads * c->p_head_dim;
    const int64_t Tmax = Nt > T ? Nt : T;
    float *x, *h, *t, *lat, *ln, *cn, *kvin, *q, *k, *v, *a, *gu, *f, *mask_dev = NULL;
    ALLOC(x, B * Nt * D);
    ALLOC(h, B * Nt * D);
    ALLOC(t, (int64_t)B * T * D);
    ALLOC(lat, B * L * D);
    ALLOC(ln, B * L * D);
    ALLOC(cn, B * Tmax * D);
    ALLOC(kvin, B * (Tmax + L) * D);
    ALLOC(q, B * L * Dq);
    ALLOC(k, B * (Tmax + L) * Dk);
    ALLOC(v, B * (Tmax + L) * Dk);
    ALLOC(a, B * L * Dq);
    ALLOC(gu, B * L * 2 * c->p_ffn);
    ALLOC(f, B * L * c->p_ffn);

    /* image context */
    CHECK(BE->copy(BE, x, tile_feats, (size_t)(B * Nt * D) * sizeof(float)));
    CHECK(BE->add_bcast(BE, x, m->p_pos.w.data, B, Nt * D));
    CHECK(BE->linear(BE, x, &m->p_pre0_w.w, m->p_pre0_b.w.data, NULL, h, B * Nt, TG_ACT_GELU));
    CHECK(BE->linear(BE, h, &m->p_pre2_w.w, m->p_pre2_b.w.data, NULL, x, B * Nt, TG_ACT_NONE));
    /* text context */
    CHECK(BE->linear(BE, text_hidden, &m->p_resize_w.w, m->p_resize_b.w.data, NULL, t, (int64_t)B * T, TG_ACT_NONE));
    /* padding of batched texts: a sample sees its own text positions and all latents */
    int padded = 0;
    for (int b = 0; text_len && b < B; b++) padded |= text_len[b] != T;
    if (padded) {
        int64_t n = (int64_t)B * (T + L);
        int32_t *mk = malloc((size_t)n * sizeof(int32_t));
        if (!mk) return model_oom(m, "a DP mask");
        for (int b = 0; b < B; b++)
            for (int64_t j = 0; j < T + L; j++) mk[b * (T + L) + j] = j >= T || j < text_len[b];
        ALLOC(mask_dev, n);
        int rc = BE->to_device(BE, mask_dev, mk, (size_t)n * 4);
        free(mk);
        if (rc) return be_fail(m, "perceiver mask upload");
    }
    for (int b = 0; b < B; b++) CHECK(BE->copy(BE, lat + b * L * D, m->p_latents.w.data, (size_t)(L * D) * sizeof(float)));

    for (int i = 0; i < c->p_layers; i++) {
        const perceiver_layer *P = &m->p_layers[i];
        const int text_layer = i == 0;
        const float *ctx = text_layer ? t : x;
        const int64_t Tc = text_layer ? T : Nt, Tk = Tc + L;
        CHECK(BE->rmsnorm(BE, lat, P->lat_norm.w.data, ln, B * L, D, c->p_eps));
        CHECK(BE->rmsnorm(BE, ctx, P->ctx_norm.w.data, cn, B * Tc, D, c->p_eps));
        for (int b = 0; b < B; b++) {
            CHECK(BE->copy(BE, kvin + b * Tk * D, cn + b * Tc * D, (size_t)(Tc * D) * sizeof(float)));
            CHECK(BE->copy(BE, kvin + (b * Tk + Tc) * D, ln + b * L * D, (size_t)(L * D) * sizeof(float)));
        }
        CHECK(BE->linear(BE, ln, &P->q_w.w, NULL, NULL, q, B * L, TG_ACT_NONE));
        CHECK(BE->linear(BE, kvin, &P->k_w.w, NULL, NULL, k, B * Tk, TG_ACT_NONE));
        CHECK(BE->linear(BE, kvin, &P->v_w.w, NULL, NULL, v, B * Tk, TG_ACT_NONE));
        tg_attention at = {0};
        at.q = q, at.k = k, at.v = v, at.out = a;
        at.q_stride = at.o_stride = Dq;
        at.q_bstride = at.o_bstride = L * Dq;
        at.k_stride = at.v_stride = Dk;
        at.k_bstride = at.v_bstride = Tk * Dk;
        at.B = B, at.Tq = (int)L, at.Tk = (int)Tk;
        at.n_heads = c->p_heads, at.n_kv_heads = c->p_kv_heads, at.head_dim = c->p_head_dim;
        at.scale = 1.0f / sqrtf((float)c->p_head_dim);
        at.key_mask = text_layer ? (const int32_t *)mask_dev : NULL;
        at.probs_accum = text_layer ? NULL : probs_accum;
        CHECK(BE->attention(BE, &at));
        CHECK(BE->linear(BE, a, &P->o_w.w, NULL, lat, lat, B * L, TG_ACT_NONE));
        CHECK(BE->rmsnorm(BE, lat, P->post_norm.w.data, ln, B * L, D, c->p_eps));
        CHECK(BE->linear(BE, ln, &P->gate_up_w.w, NULL, NULL, gu, B * L, TG_ACT_NONE));
        CHECK(BE->silu_mul(BE, gu, f, B * L, c->p_ffn));
        CHECK(BE->linear(BE, f, &P->down_w.w, NULL, lat, lat, B * L, TG_ACT_NONE));
    }
    CHECK(BE->rmsnorm(BE, lat, m->p_norm.w.data, ln, B * L, D, c->p_eps));
    float *p0;
    ALLOC(p0, B * L * c->hidden);
    CHECK(BE->linear(BE, ln, &m->p_proj0_w.w, m->p_proj0_b.w.data, NULL, p0, B * L, TG_ACT_GELU));
    CHECK(BE->linear(BE, p0, &m->p_proj2_w.w, m->p_proj2_b.w.data, NULL, out, B * L, TG_ACT_NONE));
    return 0;
}
