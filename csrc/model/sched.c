/* sched.c -- the one generation loop: continuous batching over the slots of a KV cache.
 *
 * A tg_sched holds a KV cache (its own, or for tg_generate the model's one-call cache) of `slots` slots
 * of `ctx` positions and the host state of every running sequence: its id, position, generated
 * tokens, sampling settings, random state and the logits its next token will be sampled from.
 * tg_sched_admit() computes the visual tokens of n sequences and prefills them into free slots;
 * tg_sched_step() samples one token for every running sequence, ends those that hit a stop token or
 * their max_new_tokens, and advances the rest by one position in one batched forward;
 * tg_sched_cancel() ends one at once.  tg_generate (below) is a client of the same functions, so every
 * way of generating -- one call, generate_batch, generate_many, eval, serve -- runs this loop.
 *
 * Batch invariance.  llm_exact_rows() says how many rows one product may have and still give every
 * row its bits alone (CPU compact formats: any number; CPU float32 and CUDA: 16).  Decode chunks have
 * at most that many rows (decode_rows 0).  Prefills of several admissions share one product (rows
 * stacked, attention per sequence) only where any number of rows is exact, in groups of at most
 * PREFILL_ROWS rows; elsewhere each admission prefills alone.  Either way a sequence's tokens are
 * bitwise those of its own single run, whatever runs beside it.
 *
 * Running sequences always occupy slots 0..n-1: when one ends, the last one moves into its slot
 * (its cache rows are copied), so the decode step attends over consecutive slots in one call.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fail.h"
#include "model.h"

/* rows of one batched prefill: bounds its scratch (~230 KB a row for a 7B model) */
#define PREFILL_ROWS 2048

typedef struct sched_seq {
    int64_t id;
    int pos;          /* cache rows filled: the position the next fed token is written at */
    int n_out;        /* tokens generated so far (in tokens) */
    int32_t last;     /* the last generated token, fed by the next forward */
    int done;         /* ended during the current step: freed before the forward */
    tg_sampling sp;   /* this sequence's settings; sp.eos_ids points at eos */
    int32_t *eos;
    uint64_t rng;
    int32_t *tokens;  /* (ctx) */
    float *logits;    /* host (V): what the next token is sampled from */
} sched_seq;

struct tg_sched {
    tg_model *m;
    tg_kv_cache own, *kv;       /* kv: &own, or the model's one-call cache (tg_generate) */
    int slots, ctx, decode_rows, n_active;
    int64_t next_id;
    sched_seq *seq;             /* (slots); seq[0..n_active) are running */
    void *scratch;              /* sampling scratch */
    int32_t *pos_buf, *slot_buf, *tok_buf, *len_buf;
    float *host;                /* (slots, V) downloaded logits */
};

void tg_sched_free(tg_sched *s) {
    if (!s) return;
    kv_release(s->m, &s->own);
    for (int i = 0; s->seq && i < s->slots; i++) {
        free(s->seq[i].eos);
        free(s->seq[i].tokens);
        free(s->seq[i].logits);
    }
    free(s->seq);
    free(s->scratch);
    free(s->pos_buf);
    free(s->slot_buf);
    free(s->tok_buf);
    free(s->len_buf);
    free(s->host);
    free(s);
}

/* a scheduler over kv (NULL: a cache of its own) */
static int sched_open(tg_model *m, tg_kv_cache *kv, int slots, int ctx, int decode_rows, tg_sched **out) {
    *out = NULL;
    const tg_config *c = &m->c;
    if (slots < 1 || slots > TG_MAX_BATCH)
        return model_fail_code(m, TG_ERR_INPUT, "%d sequences: between 1 and %d are supported", slots, TG_MAX_BATCH);
    if (ctx <= 0) ctx = c->max_len;
    if (ctx < 2) return model_fail_code(m, TG_ERR_INPUT, "scheduler context %d: at least 2 positions per slot", ctx);
    if (decode_rows < 0) return model_fail_code(m, TG_ERR_INPUT, "decode_rows %d must be >= 0", decode_rows);
    if (decode_rows == 0) decode_rows = llm_exact_rows(m);
    if (decode_rows == 0 || decode_rows > slots) decode_rows = slots;
    tg_sched *s = calloc(1, sizeof *s);
    if (!s) return model_oom(m, "scheduler");
    s->m = m, s->slots = slots, s->ctx = ctx, s->decode_rows = decode_rows, s->next_id = 1;
    const int64_t V = c->vocab;
    s->seq = calloc((size_t)slots, sizeof(sched_seq));
    s->scratch = malloc(model_sample_scratch((int)V));
    s->pos_buf = calloc((size_t)slots, sizeof(int32_t));
    s->slot_buf = calloc((size_t)slots, sizeof(int32_t));
    s->tok_buf = calloc((size_t)slots, sizeof(int32_t));
    s->len_buf = calloc((size_t)slots, sizeof(int32_t));
    s->host = malloc((size_t)slots * (size_t)V * sizeof(float));
    int ok = s->seq && s->scratch && s->pos_buf && s->slot_buf && s->tok_buf && s->len_buf && s->host;
    for (int i = 0; ok && i < slots; i++) {
        s->seq[i].tokens = malloc((size_t)ctx * sizeof(int32_t));
        s->seq[i].logits = malloc((size_t)V * sizeof(float));
        ok = s->seq[i].tokens && s->seq[i].logits;
    }
    if (!ok) {
        tg_sched_free(s);
        return model_oom(m, "scheduler state");
    }
    s->kv = kv ? kv : &s->own;
    if (kv_reserve(m, s->kv, slots, ctx)) {
        tg_sched_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

int tg_sched_create(tg_model *m, int slots, int ctx, int decode_rows, tg_sched **out) {
    *out = NULL;
    tg_error_set(TG_ERR_NONE);
    if (!m->finished) return model_fail(m, "model weights are not loaded (call tg_model_finish first)");
    return sched_open(m, NULL, slots, ctx, decode_rows, out);
}

int tg_sched_slots(const tg_sched *s) { return s->slots; }
int tg_sched_context(const tg_sched *s) { return s->ctx; }
int tg_sched_active(const tg_sched *s) { return s->n_active; }

/* prefill sequences [i0, i1) of an admission (spliced embeddings emb, lengths n) into slots first + i in one
 * forward, and download the logits of each one's last position into its state */
static int prefill(tg_sched *s, int first, int i0, int i1, float **emb, const int32_t *n) {
    tg_model *m = s->m;
    const int64_t H = m->c.hidden, V = m->c.vocab;
    const int k = i1 - i0;
    int64_t T = 0;
    for (int i = i0; i < i1; i++) {
        s->slot_buf[i - i0] = first + i, s->pos_buf[i - i0] = 0, s->len_buf[i - i0] = n[i];
        s->tok_buf[i - i0] = (int32_t)(T + n[i] - 1); /* the row of its last position */
        T += n[i];
    }
    tg_arena_mark mark;
    tg_arena_save(&m->arena, &mark);
    float *x, *hid, *last, *lg, *idx;
    if (!(x = tg_arena_floats(&m->arena, (size_t)(T * H))) || !(hid = tg_arena_floats(&m->arena, (size_t)(T * H))) ||
        !(last = tg_arena_floats(&m->arena, (size_t)(k * H))) || !(lg = tg_arena_floats(&m->arena, (size_t)(k * V))) ||
        !(idx = tg_arena_floats(&m->arena, (size_t)k)))
        return be_fail(m, "arena");
    for (int i = i0, r = 0; i < i1; r += n[i], i++)
        if (m->be->copy(m->be, x + (int64_t)r * H, emb[i], (size_t)n[i] * (size_t)H * sizeof(float)))
            return be_fail(m, "prefill rows");
    if (m->be->to_device(m->be, idx, s->tok_buf, (size_t)k * 4)) return be_fail(m, "row index upload");
    if (llm_forward(m, s->kv, x, k, s->slot_buf, s->pos_buf, s->len_buf, hid, NULL)) return -1;
    if (m->be->gather_rows(m->be, hid, (const int32_t *)idx, last, k, H)) return be_fail(m, "last rows");
    if (llm_head(m, last, k, lg) || model_download(m, s->host, lg, k * V)) return -1;
    for (int i = i0; i < i1; i++) memcpy(s->seq[first + i].logits, s->host + (int64_t)(i - i0) * V, (size_t)V * sizeof(float));
    tg_arena_restore(&m->arena, &mark);
    return 0;
}

int tg_sched_admit(tg_sched *s, const tg_sequence *seqs, const tg_sampling *sps, int n, int64_t *ids) {
    tg_model *m = s->m;
    if (model_begin(m)) return -1;
    if (n < 1) return model_fail_code(m, TG_ERR_INPUT, "an admission of %d sequences", n);
    if (n > s->slots - s->n_active)
        return model_fail_code(m, TG_ERR_INPUT, "no free slot for %d sequences (%d of the %d slots are running)", n,
                               s->n_active, s->slots);
    int32_t *len = malloc((size_t)n * sizeof(int32_t));
    float **vis = calloc((size_t)n, sizeof(float *)), **emb = calloc((size_t)n, sizeof(float *));
    int32_t **eos = calloc((size_t)n, sizeof(int32_t *));
    int rc = -1;
    if (!len || !vis || !emb || !eos) {
        model_oom(m, "admission");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const tg_sampling *sp = &sps[i];
        if (model_check_sampling(m, sp) || model_check_ids(m, &seqs[i])) goto out;
        len[i] = tg_spliced_length(m, &seqs[i]);
        if (len[i] + sp->max_new_tokens > s->ctx) {
            model_fail_code(m, TG_ERR_INPUT,
                            "the prompt (%d positions with its visual tokens) and max_new_tokens %d do not fit in "
                            "the %d positions of a slot",
                            len[i], sp->max_new_tokens, s->ctx);
            goto out;
        }
        if (sp->n_eos > 0) {
            if (!(eos[i] = malloc((size_t)sp->n_eos * sizeof(int32_t)))) {
                model_oom(m, "stop tokens");
                goto out;
            }
            memcpy(eos[i], sp->eos_ids, (size_t)sp->n_eos * sizeof(int32_t));
        }
    }
    /* visual tokens: one tower batch where any number of rows is exact, else one sequence at a time */
    const int shared = llm_exact_rows(m) == 0;
    for (int i = 0; i < n; i += shared ? n : 1)
        if (model_visuals(m, seqs + i, shared ? n : 1, vis + i)) goto out;
    for (int i = 0; i < n; i++) {
        int got;
        if (model_splice(m, &seqs[i], vis[i], &emb[i], &got)) goto out;
    }
    const int first = s->n_active;
    for (int i0 = 0; i0 < n;) {
        int i1 = i0 + 1;
        for (int64_t rows = len[i0]; shared && i1 < n && rows + len[i1] <= PREFILL_ROWS; i1++) rows += len[i1];
        if (prefill(s, first, i0, i1, emb, len)) goto out;
        i0 = i1;
        if (i0 < n && sps[0].interrupt && sps[0].interrupt(sps[0].interrupt_user)) {
            model_fail_code(m, TG_ERR_INTERRUPTED, "generation interrupted");
            goto out;
        }
    }
    for (int i = 0; i < n; i++) {
        sched_seq *q = &s->seq[first + i];
        free(q->eos);
        q->eos = eos[i];
        eos[i] = NULL;
        q->sp = sps[i];
        q->sp.eos_ids = q->eos;
        q->sp.interrupt = NULL, q->sp.interrupt_user = NULL;
        q->id = s->next_id++;
        q->pos = len[i];
        q->n_out = 0;
        q->last = 0;
        q->done = 0;
        q->rng = sps[i].seed;
        ids[i] = q->id;
    }
    s->n_active += n;
    rc = 0;
out:
    for (int i = 0; eos && i < n; i++) free(eos[i]);
    free(eos);
    free(len);
    free(vis);
    free(emb);
    return rc;
}

/* move running sequence `from` into the free slot `to` (cache rows and host state) */
static int move_slot(tg_sched *s, int from, int to) {
    tg_model *m = s->m;
    tg_kv_cache *kv = s->kv;
    const int64_t Dk = (int64_t)m->c.kv_heads * m->c.head_dim, slot = (int64_t)kv->len * Dk;
    const size_t bytes = (size_t)s->seq[from].pos * (size_t)Dk * sizeof(float);
    for (int l = 0; bytes && l < m->c.layers; l++)
        if (m->be->copy(m->be, kv->k[l] + to * slot, kv->k[l] + from * slot, bytes) ||
            m->be->copy(m->be, kv->v[l] + to * slot, kv->v[l] + from * slot, bytes))
            return be_fail(m, "KV cache slot move");
    sched_seq t = s->seq[to]; /* swap, so each slot keeps owning one set of buffers */
    s->seq[to] = s->seq[from];
    s->seq[from] = t;
    return 0;
}

/* free the slots of sequences marked done; the running ones end up in slots 0..n-1.  A backend failure
 * while moving a cache ends every sequence (the slots' contents are no longer known to be whole). */
static int compact(tg_sched *s) {
    int n = s->n_active, i = 0;
    while (i < n) {
        if (!s->seq[i].done) {
            i++;
            continue;
        }
        const int last = n - 1;
        if (last > i && !s->seq[last].done && move_slot(s, last, i)) {
            s->n_active = 0;
            return -1;
        }
        n--; /* slot `last` leaves the running range: it was i, or it is done, or it moved into i */
    }
    s->n_active = n;
    return 0;
}

int tg_sched_cancel(tg_sched *s, int64_t id) {
    tg_model *m = s->m;
    tg_error_set(TG_ERR_NONE);
    m->err[0] = 0;
    for (int i = 0; i < s->n_active; i++)
        if (s->seq[i].id == id) {
            s->seq[i].done = 1;
            return compact(s) ? -1 : 1;
        }
    return 0;
}

int tg_sched_step(tg_sched *s, tg_sched_event *events, int *n_events) {
    tg_model *m = s->m;
    *n_events = 0;
    if (model_begin(m)) return -1;
    const int64_t H = m->c.hidden, V = m->c.vocab;
    int ne = 0;
    /* sample: one token (or the end) for every running sequence */
    for (int i = 0; i < s->n_active; i++) {
        sched_seq *q = &s->seq[i];
        tg_sched_event *e = &events[ne++];
        e->id = q->id, e->token = -1, e->finish = TG_FINISH_NONE;
        if (q->n_out >= q->sp.max_new_tokens) {
            e->finish = TG_FINISH_LENGTH;
            q->done = 1;
            continue;
        }
        int32_t t = model_sample(q->logits, (int)V, &q->sp, q->tokens, q->n_out, &q->rng, s->scratch);
        if (model_is_eos(&q->sp, t)) {
            e->finish = TG_FINISH_EOS;
            q->done = 1;
            continue;
        }
        q->tokens[q->n_out++] = t;
        q->last = t;
        e->token = t;
        if (q->n_out == q->sp.max_new_tokens) {
            e->finish = TG_FINISH_LENGTH;
            q->done = 1;
        }
    }
    *n_events = ne;
    if (compact(s)) return -1;
    /* forward: feed every running sequence its token, in chunks of decode_rows consecutive slots */
    tg_arena_mark mark;
    tg_arena_save(&m->arena, &mark);
    for (int c0 = 0; c0 < s->n_active; c0 += s->decode_rows) {
        const int B = s->n_active - c0 < s->decode_rows ? s->n_active - c0 : s->decode_rows;
        tg_arena_restore(&m->arena, &mark);
        for (int b = 0; b < B; b++) {
            s->slot_buf[b] = c0 + b;
            s->pos_buf[b] = s->seq[c0 + b].pos;
            s->len_buf[b] = 1;
            s->tok_buf[b] = s->seq[c0 + b].last;
        }
        float *x, *hid, *lg, *ids;
        if (!(x = tg_arena_floats(&m->arena, (size_t)(B * H))) || !(hid = tg_arena_floats(&m->arena, (size_t)(B * H))) ||
            !(lg = tg_arena_floats(&m->arena, (size_t)(B * V))) || !(ids = tg_arena_floats(&m->arena, (size_t)B)))
            return be_fail(m, "arena");
        if (m->be->to_device(m->be, ids, s->tok_buf, (size_t)B * 4)) return be_fail(m, "token upload");
        if (m->be->embedding(m->be, &m->embed.w, (const int32_t *)ids, x, B)) return be_fail(m, "embedding");
        if (llm_forward(m, s->kv, x, B, s->slot_buf, s->pos_buf, s->len_buf, hid, NULL) || llm_head(m, hid, B, lg) ||
            model_download(m, s->host, lg, B * V))
            return -1;
        for (int b = 0; b < B; b++) {
            memcpy(s->seq[c0 + b].logits, s->host + (int64_t)b * V, (size_t)V * sizeof(float));
            s->seq[c0 + b].pos++;
        }
    }
    return 0;
}

/* ---- tg_generate: B sequences admitted together, stepped until all end ---- */

int tg_generate(tg_model *m, const tg_sequence *seqs, int B, const tg_sampling *sp, tg_token_callback cb, void *user,
                int32_t *out_tokens, int *n_out, float *last_logits) {
    if (model_begin(m)) return -1;
    if (B <= 0 || B > TG_MAX_BATCH)
        return model_fail(m, "batch of %d sequences: between 1 and %d are supported", B, TG_MAX_BATCH);
    if (model_check_sampling(m, sp)) return -1;
    const int64_t V = m->c.vocab;
    const int maxnew = sp->max_new_tokens;
    int maxlen = 0;
    for (int b = 0; b < B; b++) {
        if (model_check_ids(m, &seqs[b])) return -1;
        const int n = tg_spliced_length(m, &seqs[b]);
        if (n > maxlen) maxlen = n;
        n_out[b] = 0;
    }
    tg_sched *s;
    tg_sampling *sps = malloc((size_t)B * sizeof *sps);
    int64_t *ids = malloc((size_t)B * sizeof *ids);
    tg_sched_event *events = malloc((size_t)B * sizeof *events);
    if (!sps || !ids || !events) {
        free(sps), free(ids), free(events);
        return model_oom(m, "generation state");
    }
    for (int b = 0; b < B; b++) sps[b] = *sp;
    int rc = -1;
    if (sched_open(m, &m->cache, B, maxlen + maxnew + 1, 0, &s)) goto out_free;
    if (tg_sched_admit(s, seqs, sps, B, ids)) goto out;
    const int64_t first = ids[0]; /* ids are consecutive: sequence b is first + b */
    while (s->n_active > 0) {
        for (int i = 0; last_logits && i < s->n_active; i++) {
            const sched_seq *q = &s->seq[i];
            if (q->n_out < q->sp.max_new_tokens) memcpy(last_logits + (q->id - first) * V, q->logits, (size_t)V * 4);
        }
        int ne;
        if (tg_sched_step(s, events, &ne)) goto out;
        for (int e = 0; e < ne; e++) {
            const int b = (int)(events[e].id - first);
            if (events[e].token < 0) continue;
            out_tokens[(int64_t)b * maxnew + n_out[b]++] = events[e].token;
            if (cb && cb(user, b, events[e].token) && !events[e].finish && tg_sched_cancel(s, events[e].id) < 0) goto out;
        }
        if (s->n_active > 0 && sp->interrupt && sp->interrupt(sp->interrupt_user)) { /* Ctrl-C between two steps */
            model_fail_code(m, TG_ERR_INTERRUPTED, "generation interrupted");
            goto out;
        }
    }
    rc = 0;
out:
    s->kv = &s->own; /* the model's cache stays with the model */
    tg_sched_free(s);
out_free:
    free(sps);
    free(ids);
    free(events);
    return rc;
}
