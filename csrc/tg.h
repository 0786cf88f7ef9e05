/* tg.h -- the public C API of the tgllava core.
 *
 * A tg_model is an opaque handle holding a TG-LLaVA (or plain LLaVA-1.5)
 * model on one backend.  Life cycle: tg_model_create(config) -> for every
 * name of tg_model_required(): tg_model_set_tensor() -> tg_model_finish()
 * -> stages / forward / generate -> tg_model_free().  Inputs and outputs of
 * the stage functions are host float32/int32 buffers, or backend memory for
 * the float buffers after tg_model_set_buffers; everything in between stays
 * on the backend.
 * Every function returns 0 on success or -1 with a message in
 * tg_model_error(); nothing here exits the process.
 */
#ifndef TG_H
#define TG_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "config_fields.h"

#ifdef __cplusplus
extern "C" {
#endif

enum tg_src_dtype { TG_SRC_F32 = 0, TG_SRC_F16 = 1, TG_SRC_BF16 = 2 };

/* The model config: one member per entry of TG_CONFIG_FIELDS (config_fields.h), which says what
 * each field means and when it must be given. */
typedef struct tg_config {
#define TG_CONFIG_MEMBER(type, name, need, meaning) type name;
    TG_CONFIG_FIELDS(TG_CONFIG_MEMBER)
#undef TG_CONFIG_MEMBER
} tg_config;

typedef struct tg_model tg_model;

/* What kind of failure a call reported (tg_error_code), so the binding can raise the right exception. */
enum tg_error_code {
    TG_ERR_NONE = 0,        /* the failing function did not classify it (the binding decides) */
    TG_ERR_INPUT = 1,       /* a bad argument: shape, id, sampling value */
    TG_ERR_MEMORY = 2,      /* out of host memory */
    TG_ERR_DEVICE = 3,      /* the backend failed */
    TG_ERR_INTERRUPTED = 4  /* tg_sampling.interrupt asked generation to stop */
};
/* The code of the last failure of a tg_* call made on the calling thread (like errno: each
 * model call resets it, so read it right after the call that returned -1). */
int tg_error_code(void);
/* Set the calling thread's code (TG_ERR_NONE clears it before a call whose result is classified). */
void tg_error_set(int code);

/* Temperatures below this sample greedily (x / T would overflow or pick the least likely tokens). */
#define TG_MIN_TEMPERATURE 1e-5f
/* The id that marks where a sequence's image goes in its LLM ids (LLaVA's IMAGE_TOKEN_INDEX). */
#define TG_IMAGE_TOKEN (-200)
/* The most sequences one tg_generate call or one scheduler (its slots) runs together. */
#define TG_MAX_BATCH 256
/* Polled once per decode step; nonzero stops generate with TG_ERR_INTERRUPTED (Ctrl-C). */
typedef int (*tg_interrupt_fn)(void *user);

/* Sampling parameters of one generate call (shared by all sequences).  Values must be finite;
 * max_new_tokens is at most the context length (tg_config.max_len). */
typedef struct tg_sampling {
    int max_new_tokens;
    float temperature;      /* 0 (or below TG_MIN_TEMPERATURE) = greedy */
    float top_p;            /* 1 = off */
    int top_k;              /* 0 = off */
    float repetition_penalty; /* 1 = off; applied to the tokens generated so far */
    uint64_t seed;
    const int32_t *eos_ids; /* stop tokens (not included in the output) */
    int n_eos;
    tg_interrupt_fn interrupt; /* NULL = never interrupted */
    void *interrupt_user;
} tg_sampling;

/* Called after each decode step with the new token of sequence `seq`;
 * return nonzero to stop that sequence. */
typedef int (*tg_token_callback)(void *user, int seq, int32_t token);

/* One sequence to run: its LLM ids (at most one TG_IMAGE_TOKEN image slot) and its
 * image, given either as pixels (3,S,S) plus an optional CLIP text guide, or
 * as precomputed visual tokens (n_visual, hidden).  use_fom/use_dp switch
 * the TG modules (ablations); n_latents <= 0 means all DP latents. */
typedef struct tg_sequence {
    const int32_t *ids;
    int n_ids;
    const float *pixels;     /* host (3,S,S) or NULL */
    const int32_t *text_ids; /* host (n_text) or NULL */
    int n_text;
    const float *visual;     /* host (n_visual, hidden) or NULL */
    int n_visual;
    const float *features;   /* host vision-tower output reused for this image: (1 or 5, Np, Dv) for
                                [main image, 4 tiles]; NULL computes it from pixels */
    int n_feature_images;
    int use_fom, use_dp, n_latents;
} tg_sequence;

int tg_model_create(const tg_config *cfg, tg_backend *be, tg_model **out, char *err, size_t errlen);
void tg_model_free(tg_model *m);
const char *tg_model_error(const tg_model *m);
const tg_config *tg_model_config(const tg_model *m);

/* Tensors the model needs: count, then name/shape of entry i (shape has ndim entries). */
int tg_model_required_count(const tg_model *m);
const char *tg_model_required(const tg_model *m, int i, int *ndim, const int64_t **shape, int *loaded);
/* Storage dtype of the param behind entry i (float32 for vectors) and, when bytes is not NULL, its stored
 * size (0 for the second part of a stacked param); -1 for a bad index. */
int tg_model_storage(const tg_model *m, int i, size_t *bytes);
/* the storage rule: cfg->dtype; f16 for a matrix of `cols` input features that int8/int4 cannot block;
 * int8 for the output head of an int4 model */
int tg_weight_storage(const tg_config *cfg, int64_t cols, int is_head);
int tg_model_set_tensor(tg_model *m, const char *name, const void *data, int src_dtype, int ndim, const int64_t *shape);
int tg_model_finish(tg_model *m);

/* Where the float buffers of the next calls live (both 0 when the model is created: host memory).
 * inputs_on_backend: the pixels, pooled, tile_feats and text_hidden arguments and a tg_sequence's pixels,
 * visual and features are backend memory, read with device-to-device copies; outputs_on_backend: the
 * results of the stages and tg_logits are written to backend memory and are complete when the call
 * returns.  Ids, text ids and lengths are host memory either way (the model reads them on the host);
 * generate's tokens and last_logits and the attention maps too. */
void tg_model_set_buffers(tg_model *m, int inputs_on_backend, int outputs_on_backend);

/* Stages (host buffers in and out). */
int tg_vision_features(tg_model *m, const float *pix, int B, float *out);                 /* (B,3,S,S) -> (B,Np,Dv) */
int tg_text_tower(tg_model *m, const int32_t *ids, int B, int T, float *hidden, float *pooled); /* (B,T) -> (B,T,Dt), (B,Dt) */
int tg_fom(tg_model *m, const float *pooled, int B, float *mask);                        /* (B,Dt) -> (B,Nq,Dv) */
int tg_dp(tg_model *m, const float *tile_feats, const float *text_hidden, const int32_t *text_len, int B, int T,
          float *out);                                                                     /* -> (B,latents,H) */
int tg_visual_tokens(tg_model *m, const float *pix, const int32_t *text_ids, const int32_t *text_len, int B, int T,
                     int use_fom, int use_dp, int n_latents, float *out);
int tg_visual_token_count(const tg_model *m, int use_dp, int n_latents);

/* Full forward of one sequence: logits (n_rows, V) for every position
 * (all_positions) or the last one.  n_rows is the spliced, cut length. */
int tg_logits(tg_model *m, const tg_sequence *seq, int all_positions, float *logits, int *n_rows);
int tg_spliced_length(const tg_model *m, const tg_sequence *seq);

/* Generate for B sequences together (a client of the scheduler below); out_tokens (B, max_new_tokens),
 * n_out (B); last_logits (B, V): the logits each sequence's last token was sampled from.  The callback
 * may stop a sequence; sp->interrupt is asked between prefill groups and between steps. */
int tg_generate(tg_model *m, const tg_sequence *seqs, int B, const tg_sampling *sp, tg_token_callback cb, void *user,
                int32_t *out_tokens, int *n_out, float *last_logits /* (B,V) or NULL */);

/* Continuous batching (sched.c), the one generation loop: a persistent generation state of `slots`
 * (<= TG_MAX_BATCH) KV-cache slots of `ctx` positions (0: the context length) with its own cache.
 * admit() computes n sequences' visual tokens and prefills them into free slots, each with its own
 * sampling settings (sps[0].interrupt is asked between prefill groups), and writes their ids; where the
 * backend's products are exact for any number of rows (CPU compact formats) their prefills share one
 * product.  step() gives every running sequence one event -- a new token and/or its end -- and advances
 * the running ones by one position in one batched forward, cut into chunks of at most decode_rows rows
 * (0: as many as the backend computes exactly, TG_CPU_EXACT_ROWS for CPU float32); so every sequence's
 * tokens are bitwise those of its own run.  A sequence ends at a stop token (not reported as a token)
 * or after max_new_tokens, and its slot is free at once.  cancel() ends a running sequence now
 * (returns 1, or 0 for an unknown id).  events must hold `slots` entries.  Calls on one model (and its
 * schedulers) must not overlap. */
typedef struct tg_sched tg_sched;
enum tg_finish { TG_FINISH_NONE = 0, TG_FINISH_EOS = 1, TG_FINISH_LENGTH = 2 };
typedef struct tg_sched_event {
    int64_t id;    /* the sequence (from tg_sched_admit) */
    int32_t token; /* its new token, -1 when it ended without one */
    int finish;    /* enum tg_finish: nonzero when the sequence ended with this event */
} tg_sched_event;
int tg_sched_create(tg_model *m, int slots, int ctx, int decode_rows, tg_sched **out);
void tg_sched_free(tg_sched *s);
int tg_sched_admit(tg_sched *s, const tg_sequence *seqs, const tg_sampling *sps, int n, int64_t *ids);
int tg_sched_step(tg_sched *s, tg_sched_event *events, int *n_events);
int tg_sched_cancel(tg_sched *s, int64_t id);
int tg_sched_active(const tg_sched *s);
int tg_sched_slots(const tg_sched *s);
int tg_sched_context(const tg_sched *s);

/* Attention map of the LLM: probabilities summed over heads and layers from
 * query rows [q0, q1) to key rows [k0, k1) of one spliced sequence -> (q1-q0, k1-k0). */
int tg_llm_attention(tg_model *m, const tg_sequence *seq, int q0, int q1, int k0, int k1, float *out);

/* DP attention map: latents over [4*Np tile patches, latents] of the image layer -> (latents, 4*Np + latents). */
int tg_dp_attention(tg_model *m, const float *pix, const int32_t *text_ids, int n_text, float *out);


#ifdef __cplusplus
}
#endif
#endif /* TG_H */
