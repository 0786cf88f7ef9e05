/* sched.c -- the binding of the continuous-batching scheduler: tgllava._C.Scheduler.
 *
 * Scheduler(model, slots, context=0, decode_rows=0) wraps a tg_sched on a _C.Model (it keeps a
 * reference, so the model outlives it).  admit(sequence, max_new_tokens=..., temperature=...,
 * top_p=..., top_k=..., repetition_penalty=..., seed=..., eos_ids=...) prefills one sequence (the
 * dict Model.generate takes) and returns its id; admit_many([dict of admit's arguments, ...]) admits
 * several in one call (one batched prefill where the backend allows) and returns their ids; step() advances every running sequence by one
 * token and returns [(id, token or -1, finish)] with finish 0 (running), 1 (stop token) or 2
 * (max_new_tokens); cancel(id) ends one at once.  Every call takes the model's lock with the GIL
 * released, like the Model methods (so a scheduler and generate() on one model never overlap),
 * and failures raise the same tgllava exceptions.  close() frees the cache (also on dealloc).
 *
 * Threads: the tg_sched pointer is used and cleared only with the model's lock held, so a call that
 * was already waiting for the lock when close() freed the cache raises TgError ("closed") instead of
 * using it; each step() samples into its own events buffer, read after the lock is let go.
 */
#include "common.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *model;
    _Atomic(tg_sched *) s; /* NULL once closed: cleared (and tested by calls) with the model's lock held */
    int slots, context;    /* fixed at creation */
} SchedObject;

#define SCHED_CLOSED (-1000) /* rc of a call that found the scheduler closed once it had the lock */

static PyObject *sched_closed(void) {
    PyErr_SetString(TgErr_Base, "this tgllava._C.Scheduler is closed (or was never initialised)");
    return NULL;
}

/* rc = call with the GIL released and the model's lock held; -1 with an exception when it could not
 * start, SCHED_CLOSED with TgError when the call tests the scheduler and finds it closed */
#define SCHED_RUN(self, rc, call)                                                    \
    do {                                                                             \
        int entered_;                                                                \
        if (tg_py_model_enter((self)->model)) {                                      \
            rc = -1;                                                                 \
            break;                                                                   \
        }                                                                            \
        Py_BEGIN_ALLOW_THREADS                                                       \
        entered_ = tg_py_model_lock((self)->model) == 0;                             \
        if (entered_) {                                                              \
            tg_error_set(TG_ERR_NONE);                                               \
            rc = (call);                                                             \
            tg_py_model_unlock((self)->model, rc < 0 && rc != SCHED_CLOSED ? -1 : 0); \
        }                                                                            \
        Py_END_ALLOW_THREADS                                                         \
        if (!entered_) rc = -1;                                                      \
        if (rc == SCHED_CLOSED) sched_closed();                                      \
    } while (0)

/* a call on the scheduler `s` (the name the call uses), taken under the lock: SCHED_CLOSED when closed */
#define SCHED_CALL(self, rc, call) SCHED_RUN(self, rc, (s = atomic_load(&(self)->s)) ? (call) : SCHED_CLOSED)

/* with the GIL: a quick refusal of a closed scheduler (SCHED_CALL checks again under the lock) */
static int sched_ready(SchedObject *self) {
    if (!atomic_load(&self->s) || !self->model) {
        sched_closed();
        return -1;
    }
    return tg_py_model(self->model) ? 0 : -1;
}

/* with the model's lock held (or nothing else able to reach the scheduler): free it; 0 */
static int sched_free(SchedObject *self) {
    tg_sched_free(atomic_exchange(&self->s, NULL));
    return 0;
}

static int Sched_init(SchedObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"model", "slots", "context", "decode_rows", NULL};
    PyObject *model;
    int slots, ctx = 0, rows = 0, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|ii", kwlist, &model, &slots, &ctx, &rows)) return -1;
    if (self->model) {
        PyErr_SetString(TgErr_Base, "tgllava._C.Scheduler is already initialised");
        return -1;
    }
    tg_model *m = tg_py_model(model);
    if (!m) return -1;
    Py_INCREF(model);
    self->model = model;
    tg_sched *s = NULL;
    SCHED_RUN(self, rc, tg_sched_create(m, slots, ctx, rows, &s));
    if (rc) {
        tg_py_raise_failure(TgErr_Shape);
        Py_CLEAR(self->model);
        return -1;
    }
    self->slots = tg_sched_slots(s);
    self->context = tg_sched_context(s);
    atomic_store(&self->s, s);
    return 0;
}

static PyObject *Sched_close(SchedObject *self, PyObject *noargs) {
    int rc = 0;
    if (!atomic_load(&self->s) || !self->model) Py_RETURN_NONE;
    if (tg_py_model_owned(self->model)) /* from a callback of a call on the model: this thread holds its lock */
        sched_free(self);
    else
        SCHED_RUN(self, rc, sched_free(self));
    if (rc) return NULL; /* Ctrl-C while waiting for the lock: still open */
    Py_RETURN_NONE;
}

static void Sched_dealloc(SchedObject *self) {
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyObject *r = Sched_close(self, NULL);
    if (!r) { /* interrupted: free it anyway, no call can reach this scheduler any more */
        PyErr_Clear();
        sched_free(self);
    }
    Py_XDECREF(r);
    PyErr_Restore(t, v, tb);
    Py_CLEAR(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* one admission's arguments (admit's signature) parsed into q; refs and eos_ids are released by admission_free */
typedef struct {
    tg_sequence sq;
    tg_sampling sp;
    PyObject *refs[5];
    int32_t *eos_ids;
    int where; /* the sequence's float inputs: host (0) or device (1) arrays, -1 none */
} admission;

static void admission_free(admission *q) {
    for (int i = 0; i < 5; i++) Py_CLEAR(q->refs[i]);
    PyMem_Free(q->eos_ids);
    q->eos_ids = NULL;
}

static int admission_parse(SchedObject *self, PyObject *args, PyObject *kw, admission *q) {
    static char *kwlist[] = {"sequence", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                             "seed", "eos_ids", NULL};
    PyObject *d, *eos = Py_None;
    int maxnew = 256, top_k = 0, n_eos = 0;
    double temp = 0.0, top_p = 1.0, rep = 1.0;
    unsigned long long seed = 0;
    memset(q, 0, sizeof *q);
    q->where = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|iddidKO", kwlist, &d, &maxnew, &temp, &top_p, &top_k, &rep, &seed,
                                     &eos))
        return -1;
    if (tg_py_parse_sequence(self->model, d, &q->sq, q->refs, &q->where) || tg_py_eos_ids(eos, &q->eos_ids, &n_eos)) {
        admission_free(q);
        return -1;
    }
    /* below TG_MIN_TEMPERATURE sampling is greedy; the C core checks every value (NaN, inf, ranges) */
    tg_sampling sp = {maxnew, temp >= 0 && temp < TG_MIN_TEMPERATURE ? 0.0f : (float)temp, (float)top_p, top_k,
                      (float)rep, (uint64_t)seed, q->eos_ids, n_eos, NULL, NULL};
    q->sp = sp;
    return 0;
}

/* admit the n parsed admissions in one call; a list of their ids */
static PyObject *admit_parsed(SchedObject *self, admission *q, int n) {
    tg_sequence *seqs = PyMem_Calloc((size_t)n, sizeof *seqs);
    tg_sampling *sps = PyMem_Calloc((size_t)n, sizeof *sps);
    int64_t *ids = PyMem_Calloc((size_t)n, sizeof *ids);
    PyObject *result = NULL;
    int where = -1, rc;
    if (!seqs || !sps || !ids) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < n; i++) {
        seqs[i] = q[i].sq, sps[i] = q[i].sp;
        if (q[i].where < 0) continue;
        if (where >= 0 && q[i].where != where) {
            PyErr_SetString(TgErr_Shape, "admit_many: the sequences' arrays are all host arrays or all device arrays");
            goto done;
        }
        where = q[i].where;
    }
    tg_model *m = tg_py_model(self->model);
    tg_sched *s;
    SCHED_CALL(self, rc, (tg_model_set_buffers(m, where == 1, 0), tg_sched_admit(s, seqs, sps, n, ids)));
    if (rc) {
        tg_py_raise_failure(TgErr_Shape);
        goto done;
    }
    result = PyList_New(n);
    for (int i = 0; result && i < n; i++) {
        PyObject *id = PyLong_FromLongLong((long long)ids[i]);
        if (!id) Py_CLEAR(result);
        else PyList_SET_ITEM(result, i, id);
    }
done:
    PyMem_Free(seqs);
    PyMem_Free(sps);
    PyMem_Free(ids);
    return result;
}

static PyObject *Sched_admit(SchedObject *self, PyObject *args, PyObject *kw) {
    if (sched_ready(self)) return NULL;
    admission q;
    if (admission_parse(self, args, kw, &q)) return NULL;
    PyObject *ids = admit_parsed(self, &q, 1), *id = NULL;
    admission_free(&q);
    if (ids) id = Py_NewRef(PyList_GET_ITEM(ids, 0));
    Py_XDECREF(ids);
    return id;
}

static PyObject *Sched_admit_many(SchedObject *self, PyObject *arg) {
    if (sched_ready(self)) return NULL;
    PyObject *seq = PySequence_Fast(arg, "admit_many takes a list of dicts of admit's arguments");
    if (!seq) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > self->slots) {
        PyErr_Format(TgErr_Shape, "admit_many: %zd admissions; between 1 and the %d slots", n, self->slots);
        Py_DECREF(seq);
        return NULL;
    }
    admission *q = PyMem_Calloc((size_t)n, sizeof *q);
    PyObject *empty = PyTuple_New(0), *result = NULL;
    Py_ssize_t parsed = 0;
    if (!q || !empty) {
        PyErr_NoMemory();
        goto done;
    }
    for (; parsed < n; parsed++) {
        PyObject *kw = PySequence_Fast_GET_ITEM(seq, parsed);
        if (!PyDict_Check(kw)) {
            PyErr_Format(PyExc_TypeError, "admit_many: admission %zd is a %s, not a dict of admit's arguments", parsed,
                         Py_TYPE(kw)->tp_name);
            goto done;
        }
        if (admission_parse(self, empty, kw, &q[parsed])) goto done;
    }
    result = admit_parsed(self, q, (int)n);
done:
    for (Py_ssize_t i = 0; q && i < parsed; i++) admission_free(&q[i]);
    PyMem_Free(q);
    Py_XDECREF(empty);
    Py_DECREF(seq);
    return result;
}

static PyObject *Sched_step(SchedObject *self, PyObject *noargs) {
    if (sched_ready(self)) return NULL;
    tg_sched *s;
    int n = 0, rc;
    /* this call's own events: another thread's step may run as soon as the lock is let go */
    tg_sched_event *events = PyMem_Calloc((size_t)self->slots, sizeof *events);
    if (!events) return PyErr_NoMemory();
    SCHED_CALL(self, rc, tg_sched_step(s, events, &n));
    /* a failed step raises; the tokens it sampled are lost, so the caller cancels its sequences */
    PyObject *out = rc ? tg_py_raise_failure(TgErr_Device) : PyList_New(n);
    for (int i = 0; out && i < n; i++) {
        PyObject *t = Py_BuildValue("(Lii)", (long long)events[i].id, (int)events[i].token, events[i].finish);
        if (!t) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, t);
    }
    PyMem_Free(events);
    return out;
}

static PyObject *Sched_cancel(SchedObject *self, PyObject *args) {
    if (sched_ready(self)) return NULL;
    long long id;
    tg_sched *s;
    int rc;
    if (!PyArg_ParseTuple(args, "L", &id)) return NULL;
    SCHED_CALL(self, rc, tg_sched_cancel(s, (int64_t)id));
    if (rc < 0) return tg_py_raise_failure(TgErr_Device);
    return PyBool_FromLong(rc == 1);
}

static PyObject *Sched_get_active(SchedObject *self, void *closure) {
    if (sched_ready(self)) return NULL;
    tg_sched *s;
    int rc;
    SCHED_CALL(self, rc, tg_sched_active(s));
    if (rc < 0) return tg_py_raise_failure(TgErr_Device);
    return PyLong_FromLong(rc);
}

static PyObject *Sched_get_slots(SchedObject *self, void *closure) {
    if (sched_ready(self)) return NULL;
    return PyLong_FromLong(self->slots);
}

static PyObject *Sched_get_context(SchedObject *self, void *closure) {
    if (sched_ready(self)) return NULL;
    return PyLong_FromLong(self->context);
}

static PyMethodDef Sched_methods[] = {
    {"admit", (PyCFunction)(void (*)(void))Sched_admit, METH_VARARGS | METH_KEYWORDS,
     "admit(sequence, max_new_tokens=256, temperature=0, top_p=1, top_k=0, repetition_penalty=1, seed=0, "
     "eos_ids=None) -> id: prefill one sequence into a free slot"},
    {"admit_many", (PyCFunction)Sched_admit_many, METH_O,
     "admit_many([dict(sequence=..., max_new_tokens=..., ...), ...]) -> [id]: admit several sequences in one call "
     "(their prefills share one product where that keeps every row exact: CPU compact formats)"},
    {"step", (PyCFunction)Sched_step, METH_NOARGS,
     "step() -> [(id, token or -1, finish)]: one token for every running sequence (finish 0 running, 1 stop "
     "token, 2 max_new_tokens)"},
    {"cancel", (PyCFunction)Sched_cancel, METH_VARARGS, "cancel(id) -> bool: end a running sequence now"},
    {"close", (PyCFunction)Sched_close, METH_NOARGS, "close(): free the scheduler's KV cache"},
    {NULL}};

static PyGetSetDef Sched_getset[] = {
    {"active", (getter)Sched_get_active, NULL, "running sequences", NULL},
    {"slots", (getter)Sched_get_slots, NULL, "KV-cache slots (the most sequences running together)", NULL},
    {"context", (getter)Sched_get_context, NULL, "positions per slot (prompt + new tokens)", NULL},
    {NULL}};

static PyTypeObject SchedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tgllava._C.Scheduler",
    .tp_basicsize = sizeof(SchedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Continuous batching on a _C.Model: Scheduler(model, slots, context=0, decode_rows=0)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sched_init,
    .tp_dealloc = (destructor)Sched_dealloc,
    .tp_methods = Sched_methods,
    .tp_getset = Sched_getset,
};

int tg_py_sched_init(PyObject *module) {
    if (PyType_Ready(&SchedType) < 0) return -1;
    Py_INCREF(&SchedType);
    if (PyModule_AddObject(module, "Scheduler", (PyObject *)&SchedType) < 0) {
        Py_DECREF(&SchedType);
        return -1;
    }
    return 0;
}
