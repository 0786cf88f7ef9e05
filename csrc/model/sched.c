/* sched.c -- continuous batching: a persistent generation state with KV-cache slots.
 *
 * A tg_sched owns its own KV cache of `slots` slots of `ctx` positions each (separate from the
 * cache tg_generate/tg_logits use, so both can be used on one model between calls) and the host
 * state of every running sequence: its id, position, generated tokens, sampling settings, random
 * state and the logits its next token will be sampled from.  tg_sched_admit() computes a
 * sequence's visual tokens and prefills its prompt into the first free slot (exactly as
 * tg_generate does for one sequence); tg_sched_step() samples one token for every running
 * sequence, ends those that hit a stop token or their max_new_tokens, and advances the rest by one
 * position in one batched forward (llm_decode_step); tg_sched_cancel() ends one at once.
 *
 * Running sequences always occupy slots 0..n-1: when one ends, the last one moves into its slot
 * (its cache rows are copied), so the decode step attends over consecutive slots in one call.
 * The batched forward is cut into chunks of at most `decode_rows` rows (0 = no limit): on the CPU
 * a product of at most TG_CPU_EXACT_ROWS (16) rows computes each row exactly as a single-row one, so
 * with that every sequence's tokens are bitwise those of its own tg_generate call, whatever else runs
 * beside it.
 * While a call runs, the scheduler's cache is installed in the model (m->cache_*) and the
 * model's own cache is put back when it returns.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fail.h"
#include "model.h"

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
    int slots, ctx, decode_rows, n_active;
    int64_t next_id;
    float **cache_k, **cache_v; /* per layer (slots, ctx, kv_heads*head_dim) */
    sched_seq *seq;             /* (slots); seq[0..n_active) are running */
    void *scratch;              /* sampling scratch */
    int32_t *pos_buf, *slot_buf, *tok_buf;
    float *host;                /* (decode rows, V) downloaded logits */
    /* the model's own cache while ours is installed */
    float **saved_k, **saved_v;
    int saved_slots, saved_len;
};

static void install(tg_sched *s) {
    tg_model *m = s->m;
    s->saved_k = m->cache_k, s->saved_v = m->cache_v;
    s->saved_slots = m->cache_slots, s->saved_len = m->cache_len;
    m->cache_k = s->cache_k, m->cache_v = s->cache_v;
    m->cache_slots = s->slots, m->cache_len = s->ctx;
}

static void uninstall(tg_sched *s) {
    tg_model *m = s->m;
    m->cache_k = s->saved_k, m->cache_v = s->saved_v;
    m->cache_slots = s->saved_slots, m->cache_len = s->saved_len;
}

void tg_sched_free(tg_sched *s) {
    if (!s) return;
    tg_backend *be = s->m->be;
    for (int l = 0; s->cache_k && l < s->m->c.layers; l++) {
        if (s->cache_k[l]) be->release(be, s->cache_k[l]);
        if (s->cache_v[l]) be->release(be, s->cache_v[l]);
    }
    for (int i = 0; s->seq && i < s->slots; i++) {
        free(s->seq[i].eos);
        free(s->seq[i].tokens);
        free(s->seq[i].logits);
    }
    free(s->cache_k);
    free(s->cache_v);
    free(s->seq);
    free(s->scratch);
    free(s->pos_buf);
    free(s->slot_buf);
    free(s->tok_buf);
    free(s->host);
    free(s);
}

int tg_sched_create(tg_model *m, int slots, int ctx, int decode_rows, tg_sched **out) {
    *out = NULL;
    tg_error_set(TG_ERR_NONE);
    if (!m->finished) return model_fail(m, "model weights are not loaded (call tg_model_finish first)");
    const tg_config *c = &m->c;
    if (slots < 1 || slots > 256) return model_fail_code(m, TG_ERR_INPUT, "scheduler slots %d: between 1 and 256", slots);
    if (ctx <= 0) ctx = c->max_len;
    if (ctx < 2) return model_fail_code(m, TG_ERR_INPUT, "scheduler context %d: at least 2 positions per slot", ctx);
    if (decode_rows < 0) return model_fail_code(m, TG_ERR_INPUT, "decode_rows %d must be >= 0", decode_rows);
    if (decode_rows == 0 || decode_rows > slots) decode_rows = slots;
    tg_sched *s = calloc(1, sizeof *s);
    if (!s) return model_oom(m, "scheduler");
    s->m = m, s->slots = slots, s->ctx = ctx, s->decode_rows = decode_rows, s->next_id = 1;
    const int64_t V = c->vocab;
    s->cache_k = calloc((size_t)c->layers + 1, sizeof(float *));
    s->cache_v = calloc((size_t)c->layers + 1, sizeof(float *));
    s->seq = calloc((size_t)slots, sizeof(sched_seq));
    s->scratch = malloc(model_sample_scratch((int)V));
    s->pos_buf = calloc((size_t)slots, sizeof(int32_t));
    s->slot_buf = calloc((size_t)slots, sizeof(int32_t));
    s->tok_buf = calloc((size_t)slots, sizeof(int32_t));
    s->host = malloc((size_t)decode_rows * (size_t)V * sizeof(float));
    int ok = s->cache_k && s->cache_v && s->seq && s->scratch && s->pos_buf && s->slot_buf && s->tok_buf && s->host;
    for (int i = 0; ok && i < slots; i++) {
        s->seq[i].tokens = malloc((size_t)ctx * sizeof(int32_t));
        s->seq[i].logits = malloc((size_t)V * sizeof(float));
        ok = s->seq[i].tokens && s->seq[i].logits;
    }
    if (!ok) {
        tg_sched_free(s);
        return model_oom(m, "scheduler state");
    }
    const size_t bytes = (size_t)slots * (size_t)ctx * (size_t)c->kv_heads * (size_t)c->head_dim * sizeof(float);
    for (int l = 0; l < c->layers; l++) {
        s->cache_k[l] = m->be->alloc(m->be, bytes);
        s->cache_v[l] = s->cache_k[l] ? m->be->alloc(m->be, bytes) : NULL;
        if (!s->cache_v[l]) {
            be_fail(m, "scheduler KV cache allocation");
            tg_sched_free(s);
            return -1;
        }
    }
    *out = s;
    return 0;
}

int tg_sched_slots(const tg_sched *s) { return s->slots; }
int tg_sched_context(const tg_sched *s) { return s->ctx; }
int tg_sched_active(const tg_sched *s) { return s->n_active; }

int tg_sched_admit(tg_sched *s, const tg_sequence *seq, const tg_sampling *sp, int64_t *id) {
    tg_model *m = s->m;
    if (model_begin(m)) return -1;
    if (model_check_sampling(m, sp)) return -1;
    if (s->n_active == s->slots) return model_fail_code(m, TG_ERR_INPUT, "no free slot (all %d are running)", s->slots);
    if (model_check_ids(m, seq)) return -1;
    const int n_prompt = tg_spliced_length(m, seq);
    if (n_prompt + sp->max_new_tokens > s->ctx)
        return model_fail_code(m, TG_ERR_INPUT,
                               "the prompt (%d positions with its visual tokens) and max_new_tokens %d do not fit in "
                               "the %d positions of a slot",
                               n_prompt, sp->max_new_tokens, s->ctx);
    sched_seq *q = &s->seq[s->n_active];
    int32_t *eos = NULL;
    if (sp->n_eos > 0) {
        eos = malloc((size_t)sp->n_eos * sizeof(int32_t));
        if (!eos) return model_oom(m, "stop tokens");
        memcpy(eos, sp->eos_ids, (size_t)sp->n_eos * sizeof(int32_t));
    }
    const int64_t H = m->c.hidden, V = m->c.vocab;
    float *vis, *emb, *hid, *lg;
    int n, rc = -1;
    install(s);
    if (model_visuals(m, seq, &vis) || model_splice(m, seq, vis, &emb, &n)) goto out;
    if (!(hid = tg_arena_floats(&m->arena, (size_t)(n * H))) || !(lg = tg_arena_floats(&m->arena, (size_t)V))) {
        be_fail(m, "arena");
        goto out;
    }
    if (llm_forward(m, emb, n, s->n_active, 0, hid, NULL) || llm_head(m, hid + (int64_t)(n - 1) * H, 1, lg) ||
        model_download(m, q->logits, lg, V))
        goto out;
    rc = 0;
out:
    uninstall(s);
    if (rc) {
        free(eos);
        return -1;
    }
    free(q->eos);
    q->eos = eos;
    q->sp = *sp;
    q->sp.eos_ids = eos;
    q->sp.interrupt = NULL, q->sp.interrupt_user = NULL;
    q->id = s->next_id++;
    q->pos = n;
    q->n_out = 0;
    q->last = 0;
    q->done = 0;
    q->rng = sp->seed;
    s->n_active++;
    *id = q->id;
    return 0;
}

/* move running sequence `from` into the free slot `to` (cache rows and host state) */
static int move_slot(tg_sched *s, int from, int to) {
    tg_model *m = s->m;
    const int64_t Dk = (int64_t)m->c.kv_heads * m->c.head_dim, slot = (int64_t)s->ctx * Dk;
    const size_t bytes = (size_t)s->seq[from].pos * (size_t)Dk * sizeof(float);
    for (int l = 0; bytes && l < m->c.layers; l++)
        if (m->be->copy(m->be, s->cache_k[l] + to * slot, s->cache_k[l] + from * slot, bytes) ||
            m->be->copy(m->be, s->cache_v[l] + to * slot, s->cache_v[l] + from * slot, bytes))
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
    int rc = -1;
    install(s);
    tg_arena_mark mark;
    tg_arena_save(&m->arena, &mark);
    for (int c0 = 0; c0 < s->n_active; c0 += s->decode_rows) {
        const int B = s->n_active - c0 < s->decode_rows ? s->n_active - c0 : s->decode_rows;
        tg_arena_restore(&m->arena, &mark);
        for (int b = 0; b < B; b++) {
            s->slot_buf[b] = c0 + b;
            s->pos_buf[b] = s->seq[c0 + b].pos;
            s->tok_buf[b] = s->seq[c0 + b].last;
        }
        float *x, *hid, *lg, *ids;
        if (!(x = tg_arena_floats(&m->arena, (size_t)(B * H))) || !(hid = tg_arena_floats(&m->arena, (size_t)(B * H))) ||
            !(lg = tg_arena_floats(&m->arena, (size_t)(B * V))) || !(ids = tg_arena_floats(&m->arena, (size_t)B))) {
            be_fail(m, "arena");
            goto out;
        }
        if (m->be->to_device(m->be, ids, s->tok_buf, (size_t)B * 4)) {
            be_fail(m, "token upload");
            goto out;
        }
        if (m->be->embedding(m->be, &m->embed.w, (const int32_t *)ids, x, B)) {
            be_fail(m, "embedding");
            goto out;
        }
        if (llm_decode_step(m, x, B, s->slot_buf, s->pos_buf, hid) || llm_head(m, hid, B, lg) ||
            model_download(m, s->host, lg, B * V))
            goto out;
        for (int b = 0; b < B; b++) {
            memcpy(s->seq[c0 + b].logits, s->host + (int64_t)b * V, (size_t)V * sizeof(float));
            s->seq[c0 + b].pos++;
        }
    }
    rc = 0;
out:
    uninstall(s);
    return rc;
}
