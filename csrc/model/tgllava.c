/* tgllava.c -- the assembled model: stage entry points, visual tokens, splice, logits, generation.
 *
 * Public functions take host buffers (or backend memory: tg_model_set_buffers),
 * upload them once, run everything on the backend and download the result.  Visual tokens (SPEC 2.7) are
 * concat[projector(F + FOM mask), DP tokens]; with DP on, the main images
 * and their 4 tiles go through the vision tower as one batch of 5B images.
 * The splice (SPEC 3) replaces the -200 id by the visual tokens and cuts the
 * sequence at max_len.  Generation (tg_generate and the scheduler) lives in
 * sched.c; the sampler here (repetition penalty, temperature, top-k, top-p,
 * seeded) runs on the host from the downloaded logits.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fail.h"
#include "model.h"


/* ---- error codes (fail.h): per calling thread, like errno ---- */

static _Thread_local int last_error_code;

int tg_error_code(void) { return last_error_code; }

void tg_error_set(int code) { last_error_code = code; }

int model_fail_code(tg_model *m, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->err, sizeof m->err, fmt, ap);
    va_end(ap);
    last_error_code = code;
    return -1;
}

int model_oom(tg_model *m, const char *what) { return model_fail_code(m, TG_ERR_MEMORY, "out of memory (%s)", what); }

static int ready(tg_model *m) {
    last_error_code = TG_ERR_NONE;
    if (!m->finished) return model_fail(m, "model weights are not loaded (call tg_model_finish first)");
    m->err[0] = 0;
    m->be->err[0] = 0;
    tg_arena_reset(&m->arena);
    return 0;
}

void tg_model_set_buffers(tg_model *m, int inputs_on_backend, int outputs_on_backend) {
    m->inputs_on_backend = inputs_on_backend != 0;
    m->outputs_on_backend = outputs_on_backend != 0;
}

/* an input float buffer (host, or backend memory with inputs_on_backend) into backend memory dst */
static int take(tg_model *m, void *dst, const void *src, size_t bytes, const char *what) {
    if (m->inputs_on_backend ? BE->copy(BE, dst, src, bytes) : BE->to_device(BE, dst, src, bytes)) return be_fail(m, what);
    return 0;
}

static int upload(tg_model *m, float **dst, const void *src, int64_t n) {
    ALLOC(*dst, n);
    return take(m, *dst, src, (size_t)n * 4, "upload");
}

static int download(tg_model *m, void *dst, const float *src, int64_t n) {
    if (BE->to_host(BE, dst, src, (size_t)n * 4)) return be_fail(m, "download");
    return 0;
}

/* a stage's result into the caller's buffer: host, or backend memory with outputs_on_backend (complete on return) */
static int result(tg_model *m, void *dst, const float *src, int64_t n) {
    if (!m->outputs_on_backend) return download(m, dst, src, n);
    if (BE->copy(BE, dst, src, (size_t)n * 4) || BE->sync(BE)) return be_fail(m, "result copy");
    return 0;
}

static int64_t n_patches(const tg_model *m) {
    int g = m->c.v_image / m->c.v_patch;
    return (int64_t)g * g;
}

int projector_forward(tg_model *m, const float *x, int64_t rows, float *out) {
    if (!m->c.proj_mlp) {
        CHECK(BE->linear(BE, x, &m->pj0_w.w, m->pj0_b.w.data, NULL, out, rows, TG_ACT_NONE));
        return 0;
    }
    float *h;
    ALLOC(h, rows * m->c.hidden);
    CHECK(BE->linear(BE, x, &m->pj0_w.w, m->pj0_b.w.data, NULL, h, rows, TG_ACT_GELU));
    CHECK(BE->linear(BE, h, &m->pj2_w.w, m->pj2_b.w.data, NULL, out, rows, TG_ACT_NONE));
    return 0;
}

/* ---- stages ---- */

int tg_vision_features(tg_model *m, const float *pix, int B, float *out) {
    if (ready(m)) return -1;
    const int64_t S = m->c.v_image, n = n_patches(m) * m->c.v_hidden;
    float *pd, *od;
    if (upload(m, &pd, pix, B * 3 * S * S)) return -1;
    ALLOC(od, B * n);
    if (vision_tower_forward(m, pd, B, od)) return -1;
    return result(m, out, od, B * n);
}

static int need_text(tg_model *m) {
    if (!m->c.has_fom && !m->c.has_dp) return model_fail(m, "this checkpoint has no TG modules, so it has no text tower");
    return 0;
}

int tg_text_tower(tg_model *m, const int32_t *ids, int B, int T, float *hidden, float *pooled) {
    if (ready(m) || need_text(m)) return -1;
    const int64_t D = m->c.t_hidden;
    float *hd, *pd;
    ALLOC(hd, (int64_t)B * T * D);
    ALLOC(pd, (int64_t)B * D);
    if (text_tower_forward(m, ids, B, T, hd, pd)) return -1;
    if (result(m, hidden, hd, (int64_t)B * T * D)) return -1;
    return result(m, pooled, pd, (int64_t)B * D);
}

int tg_fom(tg_model *m, const float *pooled, int B, float *mask) {
    if (ready(m)) return -1;
    if (!m->c.has_fom) return model_fail(m, "this checkpoint has no TG-FOM module (model.mm_cross_attn)");
    const int64_t n = m->c.q_queries * (int64_t)m->c.v_hidden;
    float *pd, *md;
    if (upload(m, &pd, pooled, (int64_t)B * m->c.t_hidden)) return -1;
    ALLOC(md, B * n);
    if (fom_forward(m, pd, B, md)) return -1;
    return result(m, mask, md, B * n);
}

int tg_dp(tg_model *m, const float *tile_feats, const float *text_hidden, const int32_t *text_len, int B, int T, float *out) {
    if (ready(m)) return -1;
    if (!m->c.has_dp) return model_fail(m, "this checkpoint has no TG-DP module (model.mm_patch_encoder)");
    const int64_t D = m->c.v_hidden, L = m->c.p_latents;
    float *fd, *td, *od;
    if (upload(m, &fd, tile_feats, (int64_t)B * 4 * n_patches(m) * D)) return -1;
    if (upload(m, &td, text_hidden, (int64_t)B * T * m->c.t_hidden)) return -1;
    ALLOC(od, B * L * m->c.hidden);
    if (dp_forward(m, fd, td, text_len, B, T, (int)L, od, NULL)) return -1;
    return result(m, out, od, B * L * m->c.hidden);
}

int tg_visual_token_count(const tg_model *m, int use_dp, int n_latents) {
    int nl = n_latents > 0 && n_latents < m->c.p_latents ? n_latents : m->c.p_latents;
    return (int)n_patches(m) + (use_dp && m->c.has_dp ? nl : 0);
}

/* Visual tokens of B images on the backend: pix (B,3,S,S) backend; text ids host (B,T) padded with 0.
 * out (B, count, H) backend.  dp_probs: optional (B, L, 4Np+L) accumulator of the DP image attention. */
static int visual_tokens_dev(tg_model *m, const float *pix, const float *feats_pre, const int32_t *text_ids,
                             const int32_t *text_len, int B, int T, int use_fom, int use_dp, int n_lat, float *out,
                             float *dp_probs, float *fom_mask_out) {
    const tg_config *c = &m->c;
    const int64_t S = c->v_image, Np = n_patches(m), Dv = c->v_hidden, H = c->hidden, img = 3 * S * S;
    use_fom = use_fom && c->has_fom;
    use_dp = use_dp && c->has_dp;
    if ((use_fom || use_dp) && (!text_ids || T <= 0))
        return model_fail(m, "the TG modules need the text guide ids (text_ids) of every image");
    const int nl = n_lat > 0 && n_lat < c->p_latents ? n_lat : c->p_latents;
    const int count = (int)Np + (use_dp ? nl : 0);
    const int nimg = use_dp ? 5 * B : B;
    float *all, *feats, *proj;
    ALLOC(feats, (int64_t)nimg * Np * Dv);
    if (feats_pre) { /* vision tower output given (cached by the caller); it is modified below, so copy */
        CHECK(BE->copy(BE, feats, feats_pre, (size_t)(nimg * Np * Dv) * sizeof(float)));
    } else {
        ALLOC(all, (int64_t)nimg * img);
        CHECK(BE->copy(BE, all, pix, (size_t)(B * img) * sizeof(float)));
        if (use_dp) CHECK(BE->upscale_tiles(BE, pix, all + B * img, B, 3, (int)S));
        if (vision_tower_forward(m, all, nimg, feats)) return -1;
    }
    float *hidden = NULL, *pooled = NULL;
    if (use_fom || use_dp) {
        ALLOC(hidden, (int64_t)B * T * c->t_hidden);
        ALLOC(pooled, (int64_t)B * c->t_hidden);
        if (text_tower_forward(m, text_ids, B, T, hidden, pooled)) return -1;
    }
    if (use_fom) {
        float *mask;
        ALLOC(mask, B * Np * Dv);
        if (fom_forward(m, pooled, B, mask)) return -1;
        if (fom_mask_out) CHECK(BE->copy(BE, fom_mask_out, mask, (size_t)(B * Np * Dv) * sizeof(float)));
        CHECK(BE->add_bcast(BE, feats, mask, 1, B * Np * Dv));
    }
    ALLOC(proj, B * Np * H);
    if (projector_forward(m, feats, B * Np, proj)) return -1;
    float *dp = NULL;
    if (use_dp) {
        ALLOC(dp, (int64_t)B * nl * H);
        if (dp_forward(m, feats + B * Np * Dv, hidden, text_len, B, T, nl, dp, dp_probs)) return -1;
    }
    for (int b = 0; b < B; b++) {
        CHECK(BE->copy(BE, out + (int64_t)b * count * H, proj + b * Np * H, (size_t)(Np * H) * sizeof(float)));
        if (use_dp) CHECK(BE->copy(BE, out + ((int64_t)b * count + Np) * H, dp + (int64_t)b * nl * H, (size_t)(nl * H) * sizeof(float)));
    }
    return 0;
}

int tg_visual_tokens(tg_model *m, const float *pix, const int32_t *text_ids, const int32_t *text_len, int B, int T,
                     int use_fom, int use_dp, int n_latents, float *out) {
    if (ready(m)) return -1;
    const int64_t S = m->c.v_image, count = tg_visual_token_count(m, use_dp, n_latents), H = m->c.hidden;
    float *pd, *od;
    if (upload(m, &pd, pix, B * 3 * S * S)) return -1;
    ALLOC(od, B * count * H);
    if (visual_tokens_dev(m, pd, NULL, text_ids, text_len, B, T, use_fom, use_dp, n_latents, od, NULL, NULL)) return -1;
    return result(m, out, od, B * count * H);
}

/* ---- splice ---- */

static int seq_visual_count(const tg_model *m, const tg_sequence *s) {
    if (s->pixels) return tg_visual_token_count(m, s->use_dp, s->n_latents);
    return s->visual ? s->n_visual : 0;
}

/* position of the -200 id, -1 if none; fails on several or on bad ids */
static int check_ids(tg_model *m, const tg_sequence *s, int *img_pos) {
    *img_pos = -1;
    if (s->n_ids <= 0) return model_fail(m, "input_ids is empty");
    for (int i = 0; i < s->n_ids; i++) {
        int32_t id = s->ids[i];
        if (id == TG_IMAGE_TOKEN) {
            if (*img_pos >= 0) return model_fail(m, "input_ids holds more than one image token (-200) at positions %d and %d", *img_pos, i);
            *img_pos = i;
        } else if (id < 0 || id >= m->c.vocab) {
            return model_fail(m, "input id %d at position %d is outside the vocabulary [0, %d)", id, i, m->c.vocab);
        }
    }
    const int has_image = s->pixels || s->visual;
    if (has_image && *img_pos < 0) return model_fail(m, "an image was given but input_ids has no image token (-200)");
    if (!has_image && *img_pos >= 0) return model_fail(m, "input_ids has an image token (-200) but no image was given");
    if (s->visual && !s->pixels && s->n_visual <= 0) return model_fail(m, "visual tokens are empty");
    return 0;
}

int tg_spliced_length(const tg_model *m, const tg_sequence *s) {
    int n = s->n_ids;
    for (int i = 0; i < s->n_ids; i++)
        if (s->ids[i] == TG_IMAGE_TOKEN) n += seq_visual_count(m, s) - 1;
    return n < m->c.max_len ? n : m->c.max_len;
}

/* embeddings (n, H) of one sequence on the backend; visual tokens taken from `vis` (backend) if not NULL */
static int splice(tg_model *m, const tg_sequence *s, const float *vis, float **emb, int *n_out) {
    const int64_t H = m->c.hidden;
    int img;
    if (check_ids(m, s, &img)) return -1;
    const int nv = seq_visual_count(m, s);
    const int full = s->n_ids + (img >= 0 ? nv - 1 : 0);
    const int n = full < m->c.max_len ? full : m->c.max_len;
    float *e, *idsd;
    ALLOC(e, (int64_t)(full > 0 ? full : 1) * H);
    ALLOC(idsd, s->n_ids);
    if (BE->to_device(BE, idsd, s->ids, (size_t)s->n_ids * 4)) return be_fail(m, "ids upload");
    const int32_t *ids = (const int32_t *)idsd;
    if (img < 0) {
        CHECK(BE->embedding(BE, &m->embed.w, ids, e, s->n_ids));
    } else {
        if (img > 0) CHECK(BE->embedding(BE, &m->embed.w, ids, e, img));
        if (vis) CHECK(BE->copy(BE, e + (int64_t)img * H, vis, (size_t)(nv * H) * sizeof(float)));
        else if (take(m, e + (int64_t)img * H, s->visual, (size_t)(nv * H) * sizeof(float), "visual upload")) return -1;
        if (s->n_ids - img - 1 > 0)
            CHECK(BE->embedding(BE, &m->embed.w, ids + img + 1, e + (int64_t)(img + nv) * H, s->n_ids - img - 1));
    }
    *emb = e;
    *n_out = n;
    return 0;
}

/* visual tokens on the backend for every sequence that has pixels; vis[b] NULL otherwise */
static int batch_visuals(tg_model *m, const tg_sequence *seqs, int B, float **vis) {
    const int64_t S = m->c.v_image, img = 3 * S * S, H = m->c.hidden;
    for (int b = 0; b < B; b++) vis[b] = NULL;
    /* group sequences with pixels, identical switches and text guides of one length (a padded guide would shift
     * the DP perceiver's keys, and its attention sums would round differently); one batch per group */
    for (int b = 0; b < B; b++) {
        if (!seqs[b].pixels || vis[b]) continue;
        const tg_sequence *s0 = &seqs[b];
        int members[512], nm = 0, T = 1;
        for (int j = b; j < B && nm < 512; j++) {
            const tg_sequence *s = &seqs[j];
            if (!s->pixels || vis[j] || s->use_fom != s0->use_fom || s->use_dp != s0->use_dp || s->n_latents != s0->n_latents ||
                (s->features != NULL) != (s0->features != NULL) || (s->text_ids ? s->n_text : 0) != (s0->text_ids ? s0->n_text : 0))
                continue;
            members[nm++] = j;
            if (s->n_text > T) T = s->n_text;
        }
        int32_t *tids = calloc((size_t)nm * T, sizeof(int32_t)), *tlen = calloc((size_t)nm, sizeof(int32_t));
        if (!tids || !tlen) {
            free(tids);
            free(tlen);
            return model_oom(m, "text guide batch");
        }
        int have_text = 1;
        for (int i = 0; i < nm; i++) {
            const tg_sequence *s = &seqs[members[i]];
            if (!s->text_ids || s->n_text <= 0) have_text = 0;
            else memcpy(tids + (int64_t)i * T, s->text_ids, (size_t)s->n_text * 4);
            tlen[i] = s->n_text;
        }
        float *pix = NULL, *out = NULL, *feats = NULL;
        const int count = tg_visual_token_count(m, s0->use_dp, s0->n_latents);
        const int with_dp = s0->use_dp && m->c.has_dp, per = with_dp ? 5 : 1;
        const int64_t fsz = n_patches(m) * m->c.v_hidden;
        int rc = 0;
        pix = tg_arena_floats(&m->arena, (size_t)(nm * img));
        out = tg_arena_floats(&m->arena, (size_t)(nm * count * H));
        if (!pix || !out) rc = be_fail(m, "arena");
        for (int i = 0; !rc && i < nm; i++)
            rc = take(m, pix + i * img, seqs[members[i]].pixels, (size_t)img * 4, "pixels upload");
        if (!rc && s0->features) { /* layout (nm mains, then 4 tiles per image) from each image's (per, Np, Dv) */
            feats = tg_arena_floats(&m->arena, (size_t)(nm * per * fsz));
            if (!feats) rc = be_fail(m, "arena");
            for (int i = 0; !rc && i < nm; i++) {
                const tg_sequence *s = &seqs[members[i]];
                if (s->n_feature_images < per) {
                    rc = model_fail(m, "cached vision features hold %d images, %d needed", s->n_feature_images, per);
                    break;
                }
                rc = take(m, feats + i * fsz, s->features, (size_t)fsz * 4, "features upload") ||
                     (with_dp && take(m, feats + (nm + 4 * i) * fsz, s->features + fsz, (size_t)(4 * fsz) * 4, "features upload"));
            }
        }
        if (!rc) rc = visual_tokens_dev(m, pix, feats, have_text ? tids : NULL, tlen, nm, have_text ? T : 0, s0->use_fom,
                                        s0->use_dp, s0->n_latents, out, NULL, NULL);
        free(tids);
        free(tlen);
        if (rc) return -1;
        for (int i = 0; i < nm; i++) vis[members[i]] = out + (int64_t)i * count * H;
    }
    return 0;
}

/* ---- logits ---- */

/* one sequence of n rows through the LLM, in slot 0 of the model's one-call cache */
static int one_forward(tg_model *m, const float *emb, int n, float *hid, float *probs) {
    const int32_t slot = 0, pos0 = 0, len = n;
    if (kv_reserve(m, &m->cache, 1, n)) return -1;
    return llm_forward(m, &m->cache, emb, 1, &slot, &pos0, &len, hid, probs);
}

int tg_logits(tg_model *m, const tg_sequence *seq, int all_positions, float *logits, int *n_rows) {
    if (ready(m)) return -1;
    const int64_t H = m->c.hidden, V = m->c.vocab;
    float *vis, *emb, *hid, *lg;
    int n;
    if (batch_visuals(m, seq, 1, &vis)) return -1;
    if (splice(m, seq, vis, &emb, &n)) return -1;
    ALLOC(hid, (int64_t)n * H);
    if (one_forward(m, emb, n, hid, NULL)) return -1;
    const int64_t rows = all_positions ? n : 1;
    ALLOC(lg, rows * V);
    if (llm_head(m, hid + (n - rows) * H, rows, lg)) return -1;
    *n_rows = (int)rows;
    return result(m, logits, lg, rows * V);
}

int tg_llm_attention(tg_model *m, const tg_sequence *seq, int q0, int q1, int k0, int k1, float *out) {
    if (ready(m)) return -1;
    const int64_t H = m->c.hidden;
    float *vis, *emb, *hid, *probs;
    int n;
    if (batch_visuals(m, seq, 1, &vis)) return -1;
    if (splice(m, seq, vis, &emb, &n)) return -1;
    if (q0 < 0 || q1 > n || q0 >= q1 || k0 < 0 || k1 > n || k0 >= k1) return model_fail(m, "attention map ranges outside the sequence of %d tokens", n);
    ALLOC(hid, (int64_t)n * H);
    ALLOC(probs, (int64_t)n * n);
    float *zeros = calloc((size_t)n * n, sizeof(float));
    if (!zeros) return model_oom(m, "attention map");
    int rc = BE->to_device(BE, probs, zeros, (size_t)n * n * 4);
    if (rc) {
        free(zeros);
        return be_fail(m, "upload");
    }
    rc = one_forward(m, emb, n, hid, probs) || download(m, zeros, probs, (int64_t)n * n);
    if (!rc)
        for (int i = q0; i < q1; i++) memcpy(out + (int64_t)(i - q0) * (k1 - k0), zeros + (int64_t)i * n + k0, (size_t)(k1 - k0) * 4);
    free(zeros);
    return rc ? -1 : 0;
}

/* DP perceiver attention of its latents over [tiles' patches, latents] in the image layer:
 * out (n_latents, 4*Np + n_latents), summed over heads. */
int tg_dp_attention(tg_model *m, const float *pix, const int32_t *text_ids, int n_text, float *out) {
    if (ready(m)) return -1;
    if (!m->c.has_dp) return model_fail(m, "this checkpoint has no TG-DP module");
    const int64_t S = m->c.v_image, L = m->c.p_latents, Tk = 4 * n_patches(m) + L;
    float *pd, *vis, *probs;
    if (upload(m, &pd, pix, 3 * S * S)) return -1;
    ALLOC(vis, (int64_t)tg_visual_token_count(m, 1, 0) * m->c.hidden);
    ALLOC(probs, L * Tk);
    float *zeros = calloc((size_t)(L * Tk), sizeof(float));
    if (!zeros) return model_oom(m, "DP attention map");
    int rc = BE->to_device(BE, probs, zeros, (size_t)(L * Tk) * 4);
    free(zeros);
    if (rc) return be_fail(m, "upload");
    int32_t len = n_text;
    if (visual_tokens_dev(m, pd, NULL, text_ids, &len, 1, n_text, 1, 1, 0, vis, probs, NULL)) return -1;
    return download(m, out, probs, L * Tk);
}

/* ---- sampling ---- */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    float v;
    int32_t i;
} scored;

static int by_value_desc(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return x->i - y->i;
}

/* pick the next token from logits (V) in place; order: repetition penalty, temperature, top-k, top-p.
 * A temperature below TG_MIN_TEMPERATURE is greedy; NaN logits never win. */
static int32_t sample(float *x, int V, const tg_sampling *sp, const int32_t *prev, int n_prev, uint64_t *rng, scored *order) {
    for (int i = 0; i < V; i++)
        if (isnan(x[i])) x[i] = -INFINITY;
    if (sp->repetition_penalty > 0 && sp->repetition_penalty != 1.0f)
        for (int i = 0; i < n_prev; i++) {
            float *v = &x[prev[i]];
            /* apply once per distinct token */
            int seen = 0;
            for (int j = 0; j < i && !seen; j++) seen = prev[j] == prev[i];
            if (!seen) *v = *v < 0 ? *v * sp->repetition_penalty : *v / sp->repetition_penalty;
        }
    if (!(sp->temperature >= TG_MIN_TEMPERATURE)) {
        int best = 0;
        for (int i = 1; i < V; i++)
            if (x[i] > x[best]) best = i;
        return best;
    }
    for (int i = 0; i < V; i++) {
        order[i].v = (float)((double)x[i] / sp->temperature); /* |x| / 1e-5 stays far below FLT_MAX */
        order[i].i = i;
    }
    qsort(order, (size_t)V, sizeof(scored), by_value_desc);
    int keep = (sp->top_k > 0 && sp->top_k < V) ? sp->top_k : V;
    if (order[0].v == -INFINITY) return order[0].i; /* every logit is -inf (or NaN): nothing to sample */
    double mx = order[0].v, sum = 0.0;
    for (int i = 0; i < keep; i++) sum += exp((double)order[i].v - mx);
    if (sp->top_p > 0.0f && sp->top_p < 1.0f) { /* smallest prefix whose probability reaches top_p */
        double cum = 0.0;
        int k = 0;
        while (k < keep) {
            cum += exp((double)order[k].v - mx) / sum;
            k++;
            if (cum >= sp->top_p) break;
        }
        keep = k;
        sum = 0.0;
        for (int i = 0; i < keep; i++) sum += exp((double)order[i].v - mx);
    }
    double u = (double)(splitmix(rng) >> 11) * (1.0 / 9007199254740992.0) * sum, acc = 0.0;
    for (int i = 0; i < keep; i++) {
        acc += exp((double)order[i].v - mx);
        if (u < acc) return order[i].i;
    }
    return order[keep - 1].i;
}

static int is_eos(const tg_sampling *sp, int32_t t) {
    for (int i = 0; i < sp->n_eos; i++)
        if (sp->eos_ids[i] == t) return 1;
    return 0;
}

/* ---- shared with the generation loop (sched.c) ---- */

int model_begin(tg_model *m) { return ready(m); }

int model_download(tg_model *m, void *dst, const float *src, int64_t n) { return download(m, dst, src, n); }

int model_check_ids(tg_model *m, const tg_sequence *s) {
    int img;
    return check_ids(m, s, &img);
}

int model_visuals(tg_model *m, const tg_sequence *seqs, int n, float **vis) { return batch_visuals(m, seqs, n, vis); }

int model_splice(tg_model *m, const tg_sequence *s, const float *vis, float **emb, int *n) {
    return splice(m, s, vis, emb, n);
}

int model_check_sampling(tg_model *m, const tg_sampling *sp) {
    if (sp->max_new_tokens < 0 || sp->max_new_tokens > m->c.max_len)
        return model_fail_code(m, TG_ERR_INPUT, "max_new_tokens %d is outside [0, %d] (the context length)",
                               sp->max_new_tokens, m->c.max_len);
    if (!isfinite(sp->temperature) || sp->temperature < 0 || !isfinite(sp->top_p) || !(sp->top_p > 0) || sp->top_p > 1 ||
        sp->top_k < 0 || !isfinite(sp->repetition_penalty) || !(sp->repetition_penalty > 0))
        return model_fail_code(m, TG_ERR_INPUT,
                               "invalid sampling parameters (temperature %g, top_p %g, top_k %d, repetition_penalty %g): "
                               "need finite values, temperature >= 0, 0 < top_p <= 1, top_k >= 0, repetition_penalty > 0",
                               sp->temperature, sp->top_p, sp->top_k, sp->repetition_penalty);
    return 0;
}

size_t model_sample_scratch(int V) { return (size_t)V * sizeof(scored); }

int32_t model_sample(float *logits, int V, const tg_sampling *sp, const int32_t *prev, int n_prev, uint64_t *rng,
                     void *scratch) {
    return sample(logits, V, sp, prev, n_prev, rng, (scored *)scratch);
}

int model_is_eos(const tg_sampling *sp, int32_t token) { return is_eos(sp, token); }
