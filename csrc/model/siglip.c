/* siglip.c -- the SigLIP towers (transformers' SiglipVisionModel / SiglipTextModel), and the dispatch
 * to the towers of the config's families.
 *
 * Their encoder layers are CLIP's (clip_layer_forward: LN1 -> attention with q/k/v/out biases ->
 * residual; LN2 -> fc1 -> gelu_tanh -> fc2 -> residual), with different ends:
 *   vision: patch conv with a bias (stride = patch; a side that is not a multiple of the patch leaves
 *     its last pixels unused, SO400M's 384/14), learned positions, no class token, no pre-LN; the
 *     features are the hidden state after layer v_select with every token (post_layernorm and the
 *     attention-pooling head are not part of LLaVA's features);
 *   text: token + position embeddings, bidirectional attention without a mask (the text is padded to
 *     max_length = t_positions as the model was trained; pad positions are attended), final_layer_norm
 *     gives the per-token states and the pooled output is head(final_layer_norm(h))[:, -1].
 */
#include <stdlib.h>

#include "fail.h"
#include "model.h"

int siglip_vision_forward(tg_model *m, const float *pix, int B, float *out) {
    const tg_config *c = &m->c;
    const int P = c->v_patch, G = c->v_image / P;
    const int64_t Np = (int64_t)G * G, D = c->v_hidden, rows = (int64_t)B * Np;
    float *cols;
    ALLOC(cols, rows * 3 * P * P);
    CHECK(BE->im2col(BE, pix, cols, B, 3, c->v_image, P));
    CHECK(BE->linear(BE, cols, &m->v_patch.w, m->v_patch_b.w.data, NULL, out, rows, TG_ACT_NONE));
    CHECK(BE->add_bcast(BE, out, m->v_pos.w.data, B, Np * D));
    layer_scratch s;
    if (layer_scratch_alloc(m, &s, rows, D, c->v_ffn)) return -1;
    for (int i = 0; i < c->v_select; i++)
        if (clip_layer_forward(m, &m->v_layers[i], out, B, (int)Np, D, c->v_heads, c->v_eps, c->v_act, 0, NULL, &s))
            return -1;
    return 0;
}

int siglip_text_forward(tg_model *m, const int32_t *ids, int B, int T, float *hidden, float *pooled) {
    const tg_config *c = &m->c;
    const int64_t D = c->t_hidden, rows = (int64_t)B * T;
    if (T != c->t_positions)
        return model_fail_code(m, TG_ERR_INPUT,
                               "a SigLIP text guide has exactly %d tokens (padded to max_length as the model was "
                               "trained), got %d",
                               c->t_positions, T);
    for (int64_t i = 0; i < rows; i++)
        if (ids[i] < 0 || ids[i] >= c->t_vocab)
            return model_fail_code(m, TG_ERR_INPUT,
                                   "text guide id %d at position %lld is outside the SigLIP vocabulary [0, %d)", ids[i],
                                   (long long)i, c->t_vocab);
    float *ids_dev, *last_dev;
    ALLOC(ids_dev, rows);
    ALLOC(last_dev, B);
    int32_t *last = malloc((size_t)B * sizeof(int32_t));
    if (!last) return model_oom(m, "the pooled rows");
    for (int b = 0; b < B; b++) last[b] = b * T + T - 1;
    int rc = BE->to_device(BE, ids_dev, ids, (size_t)rows * 4) || BE->to_device(BE, last_dev, last, (size_t)B * 4);
    free(last);
    if (rc) return be_fail(m, "text tower upload");

    CHECK(BE->embedding(BE, &m->t_tok.w, (const int32_t *)ids_dev, hidden, rows));
    CHECK(BE->add_bcast(BE, hidden, m->t_pos.w.data, B, (int64_t)T * D));
    layer_scratch s;
    if (layer_scratch_alloc(m, &s, rows, D, c->t_ffn)) return -1;
    for (int i = 0; i < c->t_layers; i++)
        if (clip_layer_forward(m, &m->t_layers[i], hidden, B, T, D, c->t_heads, c->t_eps, c->t_act, 0, NULL, &s))
            return -1;
    CHECK(BE->layernorm(BE, hidden, m->t_fin_w.w.data, m->t_fin_b.w.data, hidden, rows, D, c->t_eps));
    if (pooled) {
        float *rows_last;
        ALLOC(rows_last, (int64_t)B * D);
        CHECK(BE->gather_rows(BE, hidden, (const int32_t *)last_dev, rows_last, B, D));
        CHECK(BE->linear(BE, rows_last, &m->t_head_w.w, m->t_head_b.w.data, NULL, pooled, B, TG_ACT_NONE));
    }
    return 0;
}

int vision_tower_forward(tg_model *m, const float *pix, int B, float *out) {
    return m->c.v_family == TG_TOWER_SIGLIP ? siglip_vision_forward(m, pix, B, out) : clip_vision_forward(m, pix, B, out);
}

int text_tower_forward(tg_model *m, const int32_t *ids, int B, int T, float *hidden, float *pooled) {
    return m->c.t_family == TG_TOWER_SIGLIP ? siglip_text_forward(m, ids, B, T, hidden, pooled)
                                            : clip_text_forward(m, ids, B, T, hidden, pooled);
}
