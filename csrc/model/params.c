/* params.c -- model creation, the table of checkpoint tensors, loading and release.
 *
 * model_register() walks the architecture described by tg_config and records,
 * for every checkpoint tensor the model uses, its name, its expected shape and
 * the param it fills.  Tensors a checkpoint has but the model does not use
 * (Q-former word/position embeddings and text FFN, cls.*, CLIP projections,
 * post_layernorm, vision layers past the selected one) are simply never asked
 * for (a SigLIP tower registers its own ends: patch bias, no class token or
 * pre-LN, the text head).  tg_model_set_tensor() streams a checkpoint tensor (float32, float16 or
 * bfloat16 bytes) into its param: matrices are converted a slice of rows at a
 * time (a few MiB of float32, checked for NaN/Inf) straight into their storage
 * format on the backend, so the host never holds the model in float32; the
 * small float32 params (norms, biases, position tables) are staged whole.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "fail.h"
#include "model.h"

int model_fail(tg_model *m, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->err, sizeof m->err, fmt, ap);
    va_end(ap);
    return -1;
}

int be_fail(tg_model *m, const char *what) {
    /* host memory the CPU backend could not get is an out-of-memory error, not a device failure */
    const int oom = strcmp(m->be->name, "cpu") == 0 && strstr(m->be->err, "out of memory") != NULL;
    return model_fail_code(m, oom ? TG_ERR_MEMORY : TG_ERR_DEVICE, "%s (in %s)",
                           m->be->err[0] ? m->be->err : "backend failure", what);
}

static void pinit(param *p, int64_t rows, int64_t cols, int is_matrix, int nparts) {
    memset(p, 0, sizeof *p);
    p->rows = rows;
    p->cols = cols;
    p->is_matrix = is_matrix;
    p->nparts = nparts;
}

/* register checkpoint tensor `name` (shape given as ndim dims) as part `part` of p */
static int reg(tg_model *m, param *p, int part, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    if (m->n_reg == m->cap_reg) {
        int cap = m->cap_reg ? 2 * m->cap_reg : 256;
        registry_entry *r = realloc(m->reg, (size_t)cap * sizeof *r);
        if (!r) return model_oom(m, "building the tensor table");
        m->reg = r;
        m->cap_reg = cap;
    }
    registry_entry *e = &m->reg[m->n_reg++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->p = p;
    e->part = part;
    e->ndim = ndim;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->shape[2] = d2;
    e->shape[3] = d3;
    return 0;
}

/* a whole matrix (rows, cols) or vector (n) under one name */
static int mat(tg_model *m, param *p, const char *name, int64_t rows, int64_t cols) {
    pinit(p, rows, cols, 1, 1);
    return reg(m, p, 0, name, 2, rows, cols, 0, 0);
}
static int vec(tg_model *m, param *p, const char *name, int64_t n) {
    pinit(p, 1, n, 0, 1);
    return reg(m, p, 0, name, 1, n, 0, 0, 0);
}
/* a float32 table (rows, cols) added to activations, not multiplied */
static int table(tg_model *m, param *p, const char *name, int64_t rows, int64_t cols) {
    pinit(p, rows, cols, 0, 1);
    return reg(m, p, 0, name, 2, rows, cols, 0, 0);
}

#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
#define R(x)              \
    do {                  \
        if ((x) != 0) return -1; \
    } while (0)

static int reg_clip_layer(tg_model *m, clip_layer *L, const char *prefix, int i, int64_t D, int64_t F) {
    char nm[192];
    const char *pr[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    param *w[4] = {&L->q_w, &L->k_w, &L->v_w, &L->o_w}, *b[4] = {&L->q_b, &L->k_b, &L->v_b, &L->o_b};
    for (int j = 0; j < 4; j++) {
        R(mat(m, w[j], NAME("%s.encoder.layers.%d.self_attn.%s.weight", prefix, i, pr[j]), D, D));
        R(vec(m, b[j], NAME("%s.encoder.layers.%d.self_attn.%s.bias", prefix, i, pr[j]), D));
    }
    R(vec(m, &L->ln1_w, NAME("%s.encoder.layers.%d.layer_norm1.weight", prefix, i), D));
    R(vec(m, &L->ln1_b, NAME("%s.encoder.layers.%d.layer_norm1.bias", prefix, i), D));
    R(vec(m, &L->ln2_w, NAME("%s.encoder.layers.%d.layer_norm2.weight", prefix, i), D));
    R(vec(m, &L->ln2_b, NAME("%s.encoder.layers.%d.layer_norm2.bias", prefix, i), D));
    R(mat(m, &L->fc1_w, NAME("%s.encoder.layers.%d.mlp.fc1.weight", prefix, i), F, D));
    R(vec(m, &L->fc1_b, NAME("%s.encoder.layers.%d.mlp.fc1.bias", prefix, i), F));
    R(mat(m, &L->fc2_w, NAME("%s.encoder.layers.%d.mlp.fc2.weight", prefix, i), D, F));
    R(vec(m, &L->fc2_b, NAME("%s.encoder.layers.%d.mlp.fc2.bias", prefix, i), D));
    return 0;
}

/* BERT-style block: {query,key,value} + output.dense + output.LayerNorm under `base` */
static int reg_bert_attn(tg_model *m, const char *base, param *q_w, param *q_b, param *k_w, param *k_b, param *v_w,
                         param *v_b, param *o_w, param *o_b, param *ln_w, param *ln_b, int64_t D, int64_t Dkv) {
    char nm[256 + 64];
    R(mat(m, q_w, NAME("%s.self.query.weight", base), D, D));
    R(vec(m, q_b, NAME("%s.self.query.bias", base), D));
    R(mat(m, k_w, NAME("%s.self.key.weight", base), D, Dkv));
    R(vec(m, k_b, NAME("%s.self.key.bias", base), D));
    R(mat(m, v_w, NAME("%s.self.value.weight", base), D, Dkv));
    R(vec(m, v_b, NAME("%s.self.value.bias", base), D));
    R(mat(m, o_w, NAME("%s.output.dense.weight", base), D, D));
    R(vec(m, o_b, NAME("%s.output.dense.bias", base), D));
    R(vec(m, ln_w, NAME("%s.output.LayerNorm.weight", base), D));
    R(vec(m, ln_b, NAME("%s.output.LayerNorm.bias", base), D));
    return 0;
}

int model_register(tg_model *m) {
    const tg_config *c = &m->c;
    char nm[256];
    const int64_t Dv = c->v_hidden, Dt = c->t_hidden, H = c->hidden, P = c->v_patch;
    const int64_t Np = (int64_t)(c->v_image / P) * (c->v_image / P);

    /* vision tower: only the layers up to the selected hidden state */
    const int siglip_vision = c->v_family == TG_TOWER_SIGLIP; /* no class token or pre-LN; a patch bias */
    pinit(&m->v_patch, Dv, 3 * P * P, 1, 1);
    R(reg(m, &m->v_patch, 0, "vision_model.embeddings.patch_embedding.weight", 4, Dv, 3, P, P));
    R(table(m, &m->v_pos, "vision_model.embeddings.position_embedding.weight", Np + !siglip_vision, Dv));
    if (siglip_vision) {
        R(vec(m, &m->v_patch_b, "vision_model.embeddings.patch_embedding.bias", Dv));
    } else {
        R(vec(m, &m->v_cls, "vision_model.embeddings.class_embedding", Dv));
        R(vec(m, &m->v_pre_w, "vision_model.pre_layrnorm.weight", Dv));
        R(vec(m, &m->v_pre_b, "vision_model.pre_layrnorm.bias", Dv));
    }
    m->v_layers = calloc((size_t)(c->v_select > 0 ? c->v_select : 1), sizeof(clip_layer));
    if (!m->v_layers) return model_oom(m, "the layer tables");
    for (int i = 0; i < c->v_select; i++) R(reg_clip_layer(m, &m->v_layers[i], "vision_model", i, Dv, c->v_ffn));

    if (c->has_fom || c->has_dp) { /* text tower */
        R(mat(m, &m->t_tok, "text_model.embeddings.token_embedding.weight", c->t_vocab, Dt));
        R(table(m, &m->t_pos, "text_model.embeddings.position_embedding.weight", c->t_positions, Dt));
        R(vec(m, &m->t_fin_w, "text_model.final_layer_norm.weight", Dt));
        R(vec(m, &m->t_fin_b, "text_model.final_layer_norm.bias", Dt));
        if (c->t_family == TG_TOWER_SIGLIP) { /* the pooled output is the head's (projection_size = hidden) */
            R(mat(m, &m->t_head_w, "text_model.head.weight", Dt, Dt));
            R(vec(m, &m->t_head_b, "text_model.head.bias", Dt));
        }
        m->t_layers = calloc((size_t)c->t_layers, sizeof(clip_layer));
        if (!m->t_layers) return model_oom(m, "the layer tables");
        for (int i = 0; i < c->t_layers; i++) R(reg_clip_layer(m, &m->t_layers[i], "text_model", i, Dt, c->t_ffn));
    }

    if (c->has_fom) {
        const char *pf = "model.mm_cross_attn";
        R(mat(m, &m->q_resize_w, NAME("%s.resize_linear.weight", pf), Dv, Dt));
        R(vec(m, &m->q_resize_b, NAME("%s.resize_linear.bias", pf), Dv));
        R(mat(m, &m->q_zero_w, NAME("%s.zero_layer.weight", pf), Dv, Dv));
        R(vec(m, &m->q_zero_b, NAME("%s.zero_layer.bias", pf), Dv));
        pinit(&m->q_queries, c->q_queries, Dv, 0, 1);
        R(reg(m, &m->q_queries, 0, NAME("%s.query_tokens", pf), 3, 1, c->q_queries, Dv, 0));
        R(vec(m, &m->q_ln_w, NAME("%s.Qformer.bert.embeddings.LayerNorm.weight", pf), Dv));
        R(vec(m, &m->q_ln_b, NAME("%s.Qformer.bert.embeddings.LayerNorm.bias", pf), Dv));
        m->q_layers = calloc((size_t)c->q_layers, sizeof(qformer_layer));
        if (!m->q_layers) return model_oom(m, "the layer tables");
        for (int i = 0; i < c->q_layers; i++) {
            qformer_layer *L = &m->q_layers[i];
            char base[200];
            snprintf(base, sizeof base, "%s.Qformer.bert.encoder.layer.%d.attention", pf, i);
            R(reg_bert_attn(m, base, &L->sq_w, &L->sq_b, &L->sk_w, &L->sk_b, &L->sv_w, &L->sv_b, &L->so_w, &L->so_b,
                            &L->sln_w, &L->sln_b, Dv, Dv));
            if (i % c->q_cross_freq == 0) {
                snprintf(base, sizeof base, "%s.Qformer.bert.encoder.layer.%d.crossattention", pf, i);
                R(reg_bert_attn(m, base, &L->cq_w, &L->cq_b, &L->ck_w, &L->ck_b, &L->cv_w, &L->cv_b, &L->co_w,
                                &L->co_b, &L->cln_w, &L->cln_b, Dv, Dv));
            }
            snprintf(base, sizeof base, "%s.Qformer.bert.encoder.layer.%d", pf, i);
            R(mat(m, &L->f1_w, NAME("%s.intermediate_query.dense.weight", base), c->q_ffn, Dv));
            R(vec(m, &L->f1_b, NAME("%s.intermediate_query.dense.bias", base), c->q_ffn));
            R(mat(m, &L->f2_w, NAME("%s.output_query.dense.weight", base), Dv, c->q_ffn));
            R(vec(m, &L->f2_b, NAME("%s.output_query.dense.bias", base), Dv));
            R(vec(m, &L->fln_w, NAME("%s.output_query.LayerNorm.weight", base), Dv));
            R(vec(m, &L->fln_b, NAME("%s.output_query.LayerNorm.bias", base), Dv));
        }
    }

    if (c->has_dp) {
        const char *pf = "model.mm_patch_encoder";
        const int64_t Dq = (int64_t)c->p_heads * c->p_head_dim, Dk = (int64_t)c->p_kv_heads * c->p_head_dim;
        R(table(m, &m->p_pos, NAME("%s.position_embedding.weight", pf), c->p_positions, Dv));
        R(mat(m, &m->p_pre0_w, NAME("%s.pre_mlp.0.weight", pf), Dv, Dv));
        R(vec(m, &m->p_pre0_b, NAME("%s.pre_mlp.0.bias", pf), Dv));
        R(mat(m, &m->p_pre2_w, NAME("%s.pre_mlp.2.weight", pf), Dv, Dv));
        R(vec(m, &m->p_pre2_b, NAME("%s.pre_mlp.2.bias", pf), Dv));
        R(mat(m, &m->p_proj0_w, NAME("%s.proj.0.weight", pf), H, Dv));
        R(vec(m, &m->p_proj0_b, NAME("%s.proj.0.bias", pf), H));
        R(mat(m, &m->p_proj2_w, NAME("%s.proj.2.weight", pf), H, H));
        R(vec(m, &m->p_proj2_b, NAME("%s.proj.2.bias", pf), H));
        R(mat(m, &m->p_resize_w, NAME("%s.resize_linear.weight", pf), Dv, Dt));
        R(vec(m, &m->p_resize_b, NAME("%s.resize_linear.bias", pf), Dv));
        R(table(m, &m->p_latents, NAME("%s.perceiver.latents", pf), c->p_latents, Dv));
        R(vec(m, &m->p_norm, NAME("%s.perceiver.norm.weight", pf), Dv));
        m->p_layers = calloc((size_t)c->p_layers, sizeof(perceiver_layer));
        if (!m->p_layers) return model_oom(m, "the layer tables");
        for (int i = 0; i < c->p_layers; i++) {
            perceiver_layer *L = &m->p_layers[i];
            char base[160];
            snprintf(base, sizeof base, "%s.perceiver.layers.%d", pf, i);
            R(vec(m, &L->lat_norm, NAME("%s.input_latents_norm.weight", base), Dv));
            R(vec(m, &L->ctx_norm, NAME("%s.input_context_norm.weight", base), Dv));
            R(mat(m, &L->q_w, NAME("%s.self_attn.q_proj.weight", base), Dq, Dv));
            R(mat(m, &L->k_w, NAME("%s.self_attn.k_proj.weight", base), Dk, Dv));
            R(mat(m, &L->v_w, NAME("%s.self_attn.v_proj.weight", base), Dk, Dv));
            R(mat(m, &L->o_w, NAME("%s.self_attn.o_proj.weight", base), Dv, Dq));
            R(vec(m, &L->post_norm, NAME("%s.post_attention_layernorm.weight", base), Dv));
            pinit(&L->gate_up_w, 2 * (int64_t)c->p_ffn, Dv, 1, 2);
            R(reg(m, &L->gate_up_w, 0, NAME("%s.mlp.gate_proj.weight", base), 2, c->p_ffn, Dv, 0, 0));
            R(reg(m, &L->gate_up_w, 1, NAME("%s.mlp.up_proj.weight", base), 2, c->p_ffn, Dv, 0, 0));
            R(mat(m, &L->down_w, NAME("%s.mlp.down_proj.weight", base), Dv, c->p_ffn));
        }
    }

    if (c->proj_mlp) {
        R(mat(m, &m->pj0_w, "model.mm_projector.0.weight", H, Dv));
        R(vec(m, &m->pj0_b, "model.mm_projector.0.bias", H));
        R(mat(m, &m->pj2_w, "model.mm_projector.2.weight", H, H));
        R(vec(m, &m->pj2_b, "model.mm_projector.2.bias", H));
    } else {
        R(mat(m, &m->pj0_w, "model.mm_projector.weight", H, Dv));
        R(vec(m, &m->pj0_b, "model.mm_projector.bias", H));
    }

    /* LLM */
    const int64_t Dq = (int64_t)c->heads * c->head_dim, Dk = (int64_t)c->kv_heads * c->head_dim;
    R(mat(m, &m->embed, "model.embed_tokens.weight", c->vocab, H));
    R(vec(m, &m->norm, "model.norm.weight", H));
    if (!c->tie_embeddings) R(mat(m, &m->lm_head, "lm_head.weight", c->vocab, H));
    (c->tie_embeddings ? &m->embed : &m->lm_head)->is_head = 1;
    m->l_layers = calloc((size_t)c->layers, sizeof(llm_layer));
    if (!m->l_layers) return model_oom(m, "the layer tables");
    for (int i = 0; i < c->layers; i++) {
        llm_layer *L = &m->l_layers[i];
        char base[64];
        snprintf(base, sizeof base, "model.layers.%d", i);
        R(vec(m, &L->in_norm, NAME("%s.input_layernorm.weight", base), H));
        R(vec(m, &L->post_norm, NAME("%s.post_attention_layernorm.weight", base), H));
        R(mat(m, &L->q_w, NAME("%s.self_attn.q_proj.weight", base), Dq, H));
        R(mat(m, &L->k_w, NAME("%s.self_attn.k_proj.weight", base), Dk, H));
        R(mat(m, &L->v_w, NAME("%s.self_attn.v_proj.weight", base), Dk, H));
        if (c->qkv_bias) {
            R(vec(m, &L->q_b, NAME("%s.self_attn.q_proj.bias", base), Dq));
            R(vec(m, &L->k_b, NAME("%s.self_attn.k_proj.bias", base), Dk));
            R(vec(m, &L->v_b, NAME("%s.self_attn.v_proj.bias", base), Dk));
        }
        R(mat(m, &L->o_w, NAME("%s.self_attn.o_proj.weight", base), H, Dq));
        pinit(&L->gate_up_w, 2 * (int64_t)c->ffn, H, 1, 2);
        R(reg(m, &L->gate_up_w, 0, NAME("%s.mlp.gate_proj.weight", base), 2, c->ffn, H, 0, 0));
        R(reg(m, &L->gate_up_w, 1, NAME("%s.mlp.up_proj.weight", base), 2, c->ffn, H, 0, 0));
        R(mat(m, &L->down_w, NAME("%s.mlp.down_proj.weight", base), H, c->ffn));
    }
    return 0;
}

/* ---- creation ---- */

static int check_config(const tg_config *c, char *err, size_t errlen) {
#define NEED(cond, msg)                                          \
    if (!(cond)) {                                               \
        snprintf(err, errlen, "invalid model config: %s", msg); \
        return -1;                                               \
    }
    NEED(c->v_family >= 0 && c->v_family < TG_TOWER_FAMILY_COUNT, "unknown vision tower family");
    NEED(c->v_hidden > 0 && c->v_heads > 0 && c->v_hidden % c->v_heads == 0, "vision hidden size must be a positive multiple of its heads");
    NEED(c->v_patch > 0 && c->v_image >= c->v_patch && (c->v_image % c->v_patch == 0 || c->v_family == TG_TOWER_SIGLIP),
         "vision image size must be a multiple of the patch size (SigLIP: at least one patch)");
    NEED(c->v_select >= 0 && c->v_select <= c->v_layers, "mm_vision_select_layer out of range");
    NEED(c->v_ffn > 0, "vision intermediate size must be positive");
    NEED(c->hidden > 0 && c->heads > 0 && c->kv_heads > 0 && c->heads % c->kv_heads == 0, "LLM heads must be a multiple of key/value heads");
    NEED(c->head_dim > 0 && c->head_dim % 2 == 0, "LLM head_dim must be positive and even");
    NEED(c->layers >= 0 && c->ffn > 0 && c->vocab > 0, "LLM layers/intermediate/vocab must be positive");
    NEED(c->max_len > 0, "max length must be positive");
    if (c->has_fom || c->has_dp) {
        NEED(c->t_family >= 0 && c->t_family < TG_TOWER_FAMILY_COUNT, "unknown text tower family");
        NEED(c->t_hidden > 0 && c->t_heads > 0 && c->t_hidden % c->t_heads == 0, "text hidden size must be a multiple of its heads");
        NEED(c->t_positions > 0 && c->t_vocab > 0 && c->t_ffn > 0, "text tower sizes must be positive");
    }
    if (c->has_fom) {
        NEED(c->q_heads > 0 && c->v_hidden % c->q_heads == 0 && c->q_layers > 0 && c->q_cross_freq > 0, "Q-former sizes invalid");
        int np = (c->v_image / c->v_patch) * (c->v_image / c->v_patch);
        NEED(c->q_queries == np, "Q-former query count must equal the number of patches");
    }
    if (c->has_dp) {
        NEED(c->p_heads > 0 && c->p_kv_heads > 0 && c->p_heads % c->p_kv_heads == 0 && c->p_head_dim > 0, "perceiver heads invalid");
        NEED(c->p_latents > 0 && c->p_layers > 0 && c->p_ffn > 0, "perceiver sizes invalid");
        int np = (c->v_image / c->v_patch) * (c->v_image / c->v_patch);
        NEED(c->p_positions >= 4 * np, "perceiver positions must cover 4 tiles of patches");
    }
    NEED(c->dtype >= 0 && c->dtype < TG_DTYPE_COUNT, "unknown dtype");
#undef NEED
    return 0;
}

int tg_model_create(const tg_config *cfg, tg_backend *be, tg_model **out, char *err, size_t errlen) {
    *out = NULL;
    if (check_config(cfg, err, errlen)) return -1;
    tg_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->c = *cfg;
    m->be = be;
    tg_arena_init(&m->arena, be);
    if (model_register(m)) {
        snprintf(err, errlen, "%s", m->err);
        tg_model_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

static void param_release(tg_model *m, param *p) {
    if (p->w.data) {
        if (p->is_matrix) m->be->weight_release(m->be, &p->w);
        else m->be->release(m->be, p->w.data);
    }
    p->w.data = NULL;
    free(p->stash);
    p->stash = NULL;
}

void model_release_params(tg_model *m) {
    /* every param is reachable from the registry; parts share a param, release once */
    for (int i = 0; i < m->n_reg; i++)
        if (m->reg[i].part == 0) param_release(m, m->reg[i].p);
}

void tg_model_free(tg_model *m) {
    if (!m) return;
    model_release_params(m);
    kv_release(m, &m->cache);
    tg_arena_free(&m->arena);
    free(m->v_layers);
    free(m->t_layers);
    free(m->q_layers);
    free(m->p_layers);
    free(m->l_layers);
    free(m->reg);
    free(m);
}

const char *tg_model_error(const tg_model *m) { return m->err; }
const tg_config *tg_model_config(const tg_model *m) { return &m->c; }
int tg_model_required_count(const tg_model *m) { return m->n_reg; }

const char *tg_model_required(const tg_model *m, int i, int *ndim, const int64_t **shape, int *loaded) {
    if (i < 0 || i >= m->n_reg) return NULL;
    *ndim = m->reg[i].ndim;
    *shape = m->reg[i].shape;
    *loaded = m->reg[i].loaded;
    return m->reg[i].name;
}

/* ---- loading ---- */

/* dst (n) float32 = src (n) in the checkpoint dtype; returns the index of the first non-finite value or -1.
 * Runs on all threads and checks the exponent bits, so it keeps up with the quantisation that follows. */
static int64_t convert(float *dst, const void *src, int src_dtype, int64_t n) {
    uint32_t *out = (uint32_t *)dst, all_ones = 0;
    const uint32_t EXP = 0x7f800000u;
    if (src_dtype == TG_SRC_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
#pragma omp parallel for schedule(static) reduction(| : all_ones) if (n > (1 << 16))
        for (int64_t i = 0; i < n; i++) all_ones |= (out[i] & EXP) == EXP;
    } else if (src_dtype == TG_SRC_BF16) {
        const uint16_t *s = src;
#pragma omp parallel for schedule(static) reduction(| : all_ones) if (n > (1 << 16))
        for (int64_t i = 0; i < n; i++) {
            out[i] = (uint32_t)s[i] << 16;
            all_ones |= (out[i] & EXP) == EXP;
        }
    } else {
        const uint16_t *s = src;
#pragma omp parallel for schedule(static) reduction(| : all_ones) if (n > (1 << 16))
        for (int64_t i = 0; i < n; i++) {
            dst[i] = tg_half_to_float(s[i]);
            all_ones |= (s[i] & 0x7c00u) == 0x7c00u;
        }
    }
    if (!all_ones) return -1;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(dst[i])) return i;
    return -1;
}

static size_t src_size(int src_dtype) { return src_dtype == TG_SRC_F32 ? 4 : 2; }

int tg_weight_storage(const tg_config *c, int64_t cols, int is_head) {
    if ((c->dtype == TG_Q8 || c->dtype == TG_Q4) && cols % TG_QBLOCK) return TG_F16; /* cannot be blocked */
    /* 4-bit logits carry ~10% noise straight into the answer (golden sets: logits cosine 0.987 with an int4
     * head, 0.99x with an int8 one), so the head stays int8, as llama.cpp keeps its 4-bit models' output at 6 bits */
    if (c->dtype == TG_Q4 && is_head) return TG_Q8;
    return c->dtype;
}

int tg_model_storage(const tg_model *m, int i, size_t *bytes) {
    if (i < 0 || i >= m->n_reg) return -1;
    const param *p = m->reg[i].p;
    const int dt = p->is_matrix ? tg_weight_storage(&m->c, p->cols, p->is_head) : TG_F32;
    if (bytes) {
        size_t rb = m->be->row_bytes(m->be, dt, p->cols);
        *bytes = m->reg[i].part == 0 ? rb * (size_t)p->rows : 0; /* a stacked param counts once */
    }
    return dt;
}

static void shape_str(char *buf, size_t len, int ndim, const int64_t *shape) {
    size_t o = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < ndim && o < len; i++) o += (size_t)snprintf(buf + o, len - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < len) snprintf(buf + o, len - o, ndim == 1 ? ",)" : ")");
}

#define SLICE_FLOATS (1 << 18) /* float32 staging of a matrix load: 1 MiB, so it stays in cache for the quantiser */

/* rows [part * part_rows, (part + 1) * part_rows) of a matrix param from checkpoint bytes, a slice at a time */
static int load_matrix_part(tg_model *m, registry_entry *e, const void *data, int src_dtype, int64_t part_rows) {
    param *p = e->p;
    if (!p->w.data && m->be->weight_alloc(m->be, &p->w, p->rows, p->cols, tg_weight_storage(&m->c, p->cols, p->is_head)))
        return be_fail(m, e->name);
    int64_t slice = SLICE_FLOATS / p->cols;
    if (slice < 1) slice = 1;
    if (slice > part_rows) slice = part_rows;
    float *buf = malloc((size_t)(slice * p->cols) * sizeof(float));
    if (!buf) return model_oom(m, e->name);
    for (int64_t r = 0; r < part_rows; r += slice) {
        const int64_t rows = part_rows - r < slice ? part_rows - r : slice;
        const char *src = (const char *)data + (size_t)(r * p->cols) * src_size(src_dtype);
        int64_t bad = convert(buf, src, src_dtype, rows * p->cols);
        if (bad >= 0) {
            free(buf);
            return model_fail(m, "tensor %s holds a non-finite value (NaN or Inf) at flat index %lld", e->name,
                              (long long)(r * p->cols + bad));
        }
        if (m->be->weight_write(m->be, &p->w, (int64_t)e->part * part_rows + r, rows, buf)) {
            free(buf);
            return be_fail(m, e->name);
        }
    }
    free(buf);
    return 0;
}

/* a float32 param (norm, bias, position table): staged on the host until all its parts arrived */
static int load_small(tg_model *m, registry_entry *e, const void *data, int src_dtype) {
    param *p = e->p;
    const int64_t part_n = p->rows * p->cols / p->nparts;
    if (!p->stash) {
        p->stash = malloc((size_t)(p->rows * p->cols) * sizeof(float));
        if (!p->stash) return model_oom(m, e->name);
    }
    int64_t bad = convert(p->stash + (int64_t)e->part * part_n, data, src_dtype, part_n);
    if (bad >= 0) return model_fail(m, "tensor %s holds a non-finite value (NaN or Inf) at flat index %lld", e->name, (long long)bad);
    return 0;
}

int tg_model_set_tensor(tg_model *m, const char *name, const void *data, int src_dtype, int ndim, const int64_t *shape) {
    registry_entry *e = NULL;
    for (int i = 0; i < m->n_reg; i++)
        if (strcmp(m->reg[i].name, name) == 0) {
            e = &m->reg[i];
            break;
        }
    if (!e) return model_fail(m, "tensor %s is not used by this model", name);
    if (e->loaded) return model_fail(m, "tensor %s was given twice", name);
    if (src_dtype < TG_SRC_F32 || src_dtype > TG_SRC_BF16) return model_fail(m, "tensor %s: unsupported dtype", name);
    int same = ndim == e->ndim;
    for (int i = 0; same && i < ndim; i++) same = shape[i] == e->shape[i];
    if (!same) {
        char got[96], want[96];
        shape_str(got, sizeof got, ndim, shape);
        shape_str(want, sizeof want, e->ndim, e->shape);
        return model_fail(m, "tensor %s has shape %s, expected %s", name, got, want);
    }
    param *p = e->p;
    const int64_t n = p->rows * p->cols, part_rows = p->rows / p->nparts;
    int rc = p->is_matrix ? load_matrix_part(m, e, data, src_dtype, part_rows) : load_small(m, e, data, src_dtype);
    if (rc) return rc;
    e->loaded = 1;
    if (++p->got < p->nparts || p->is_matrix) return 0;
    p->w.rows = p->rows;
    p->w.cols = p->cols;
    p->w.dtype = TG_F32;
    p->w.data = m->be->alloc(m->be, (size_t)n * sizeof(float));
    rc = p->w.data ? m->be->to_device(m->be, p->w.data, p->stash, (size_t)n * sizeof(float)) : -1;
    free(p->stash);
    p->stash = NULL;
    if (rc) return be_fail(m, name);
    return 0;
}

int tg_model_finish(tg_model *m) {
    for (int i = 0; i < m->n_reg; i++)
        if (!m->reg[i].loaded) return model_fail(m, "missing tensor %s", m->reg[i].name);
    if (m->c.tie_embeddings) m->lm_head = m->embed; /* shares the buffer; released once via embed */
    CHECK(m->be->sync(m->be));
    m->finished = 1;
    return 0;
}
