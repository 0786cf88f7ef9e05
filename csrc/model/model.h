/* model.h -- the model's internal structures, shared by the files of csrc/model/.
 *
 * A `param` is one backend buffer filled from one or more checkpoint tensors
 * (gate_proj and up_proj are stacked into one (2F, D) matrix so SwiGLU is a
 * single product).  Matrices used by linear/embedding are tg_weight in the
 * model dtype; vectors (biases, norm weights, embeddings added to activations)
 * stay float32.  Every param is registered with its checkpoint name(s) and
 * expected shape in model_register() (params.c), so the loader, the
 * required-tensor list and shape checking all come from one table.
 */
#ifndef TG_MODEL_H
#define TG_MODEL_H

#include <stdint.h>

#include "tensor.h"
#include "tg.h"

#define TG_MAX_PARTS 2

typedef struct param {
    tg_weight w;        /* w.data == NULL until uploaded */
    int64_t rows, cols; /* logical 2-D shape of the whole buffer */
    int is_matrix;      /* stored in the model dtype (else float32) */
    int is_head;        /* the output head (lm_head, or the tied embedding): int4 models keep it int8 */
    int nparts, got;    /* checkpoint tensors stacked by rows, and how many arrived */
    float *stash;       /* host staging while parts arrive */
} param;

typedef struct clip_layer {
    param ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
} clip_layer;

typedef struct qformer_layer {
    param sq_w, sq_b, sk_w, sk_b, sv_w, sv_b, so_w, so_b, sln_w, sln_b;  /* self attention, post-LN */
    param cq_w, cq_b, ck_w, ck_b, cv_w, cv_b, co_w, co_b, cln_w, cln_b;  /* cross attention (even layers) */
    param f1_w, f1_b, f2_w, f2_b, fln_w, fln_b;                          /* query FFN */
} qformer_layer;

typedef struct perceiver_layer {
    param lat_norm, ctx_norm, q_w, k_w, v_w, o_w, post_norm, gate_up_w, down_w;
} perceiver_layer;

typedef struct llm_layer {
    param in_norm, q_w, q_b, k_w, k_b, v_w, v_b, o_w, post_norm, gate_up_w, down_w;
} llm_layer;

/* A KV cache: run state apart from the weights, owned by its caller (the model's one-call entry points or a
 * scheduler) and passed into the LLM.  Per layer, keys and values of (slots, len, kv_heads*head_dim) floats
 * in backend memory; a sequence lives in one slot, its position p in row p of that slot. */
typedef struct tg_kv_cache {
    float **k, **v; /* (layers) */
    int slots, len;
} tg_kv_cache;

typedef struct registry_entry {
    char name[256];
    param *p;
    int part;          /* which stacked part of p */
    int ndim;
    int64_t shape[4];  /* expected checkpoint shape */
    int loaded;
} registry_entry;

/* Params and layer arrays carry the prefix of their module in tg_config (v_ vision tower, t_ text tower,
 * q_ TG-FOM Q-former, p_ TG-DP perceiver, l_ LLM layers): m->q_layers is the array of the m->c.q_layers
 * Q-former layers, m->p_latents the latents table of m->c.p_latents rows. */
struct tg_model {
    tg_config c;
    tg_backend *be;
    tg_arena arena;
    char err[768];
    int finished;
    int inputs_on_backend, outputs_on_backend; /* tg_model_set_buffers */

    /* vision tower (CLIP: class token and pre-LN; SigLIP: patch bias) */
    param v_cls, v_patch, v_patch_b, v_pos, v_pre_w, v_pre_b;
    clip_layer *v_layers;
    /* text tower (SigLIP: the head that pools) */
    param t_tok, t_pos, t_fin_w, t_fin_b, t_head_w, t_head_b;
    clip_layer *t_layers;
    /* TG-FOM Q-former */
    param q_resize_w, q_resize_b, q_zero_w, q_zero_b, q_queries, q_ln_w, q_ln_b;
    qformer_layer *q_layers;
    /* TG-DP perceiver */
    param p_pos, p_pre0_w, p_pre0_b, p_pre2_w, p_pre2_b, p_resize_w, p_resize_b, p_latents, p_norm;
    param p_proj0_w, p_proj0_b, p_proj2_w, p_proj2_b;
    perceiver_layer *p_layers;
    /* projector */
    param pj0_w, pj0_b, pj2_w, pj2_b;
    /* LLM */
    param embed, norm, lm_head;
    llm_layer *l_layers;

    registry_entry *reg;
    int n_reg, cap_reg;

    tg_kv_cache cache; /* the run state of the one-call entry points (tg_logits, tg_generate, attention maps) */
};

/* params.c */
int model_register(tg_model *m);
void model_release_params(tg_model *m);
int model_fail(tg_model *m, const char *fmt, ...);
int be_fail(tg_model *m, const char *what); /* copies the backend's message */

/* clip.c: the pre-LN encoder layer both families share (x (B*T, D) in place; key_mask backend (B, T) or NULL),
 * with its scratch buffers, and the CLIP towers */
typedef struct layer_scratch {
    float *h, *q, *k, *v, *a, *f; /* (rows, D) x5 and (rows, F) */
} layer_scratch;
int layer_scratch_alloc(tg_model *m, layer_scratch *s, int64_t rows, int64_t D, int64_t F);
int clip_layer_forward(tg_model *m, const clip_layer *L, float *x, int B, int T, int64_t D, int heads, float eps,
                       int act, int causal, const int32_t *key_mask, const layer_scratch *s);
int clip_vision_forward(tg_model *m, const float *pix, int B, float *out); /* backend (B,3,S,S) -> (B,Np,Dv) */
int clip_text_forward(tg_model *m, const int32_t *ids_host, int B, int T, float *hidden, float *pooled);
/* siglip.c: the SigLIP towers, and the towers of the config's families (what the rest of the model calls) */
int siglip_vision_forward(tg_model *m, const float *pix, int B, float *out);
int siglip_text_forward(tg_model *m, const int32_t *ids_host, int B, int T, float *hidden, float *pooled);
int vision_tower_forward(tg_model *m, const float *pix, int B, float *out); /* backend (B,3,S,S) -> (B,Np,Dv) */
int text_tower_forward(tg_model *m, const int32_t *ids_host, int B, int T, float *hidden, float *pooled);
/* fom.c */
int fom_forward(tg_model *m, const float *pooled, int B, float *mask); /* backend (B,Dt) -> (B,Nq,Dv) */
/* dp.c */
int dp_forward(tg_model *m, const float *tile_feats, const float *text_hidden, const int32_t *text_len_host, int B,
               int T, int n_latents, float *out, float *probs_accum);
/* projector (in tgllava.c) */
int projector_forward(tg_model *m, const float *x, int64_t rows, float *out);
/* llm.c */
/* make kv hold at least slots x len positions (it grows, keeping neither size smaller; contents are lost
 * when it grows); kv_release frees it */
int kv_reserve(tg_model *m, tg_kv_cache *kv, int slots, int len);
void kv_release(tg_model *m, tg_kv_cache *kv);
/* rows of one product that give every row its bits alone for this model's storage (0: any number) */
int llm_exact_rows(tg_model *m);
/* One forward of the LLM over n_seg segments stacked by rows in x (sum of len rows, H): segment s holds
 * positions [pos0[s], pos0[s] + len[s]) of the sequence in cache slot slot[s], whose earlier positions are
 * in kv.  Its keys and values are written to kv and every row attends causally over its own slot, so a
 * prefill is one segment of the prompt and a decode step B segments of one row.  The products run over
 * all rows together; attention runs per segment (one batched call for consecutive one-row segments).
 * hidden_out (rows, H) is after the final norm.  probs_accum (rows, pos0+len) is for one segment only.
 * slot, pos0 and len are host arrays; slots are distinct. */
int llm_forward(tg_model *m, tg_kv_cache *kv, const float *x, int n_seg, const int32_t *slot, const int32_t *pos0,
                const int32_t *len, float *hidden_out, float *probs_accum);
int llm_head(tg_model *m, const float *hidden, int64_t rows, float *logits);
/* tgllava.c helpers shared with sched.c: begin a call (weights loaded, arena reset), download, id checks,
 * visual tokens of one sequence (vis NULL without pixels), splice, sampling checks and one sampled token
 * (scratch of model_sample_scratch(V) bytes), stop tokens */
int model_begin(tg_model *m);
int model_download(tg_model *m, void *dst, const float *src, int64_t n);
int model_check_ids(tg_model *m, const tg_sequence *s);
int model_visuals(tg_model *m, const tg_sequence *seqs, int n, float **vis); /* vis (n) */
int model_splice(tg_model *m, const tg_sequence *s, const float *vis, float **emb, int *n);
int model_check_sampling(tg_model *m, const tg_sampling *sp);
size_t model_sample_scratch(int V);
int32_t model_sample(float *logits, int V, const tg_sampling *sp, const int32_t *prev, int n_prev, uint64_t *rng,
                     void *scratch);
int model_is_eos(const tg_sampling *sp, int32_t token);

/* shortcuts */
#define BE (m->be)
#define CHECK(call)                                 \
    do {                                            \
        if ((call) != 0) return be_fail(m, #call);  \
    } while (0)
#define ALLOC(ptr, n)                                                        \
    do {                                                                     \
        (ptr) = tg_arena_floats(&m->arena, (size_t)(n));                     \
        if (!(ptr)) return be_fail(m, "arena allocation of " #ptr);          \
    } while (0)

#endif
