/* sched.c -- the binding of the continuous-batching scheduler: tgllava._C.Scheduler.
 *
 * Scheduler(model, slots, context=0, decode_rows=0) wraps a tg_sched on a _C.Model (it keeps a
 * reference, so the model outlives it).  admit(sequence, max_new_tokens=..., temperature=...,
 * top_p=..., top_k=..., repetition_penalty=..., seed=..., eos_ids=...) prefills one sequence (the
 * dict Model.generate takes) and returns its id; step() advances every running sequence by one
 * token and returns [(id, token or -1, finish)] with finish 0 (running), 1 (stop token) or 2
 * (max_new_tokens); cancel(id) ends one at once.  Every call takes the model's lock with the GIL
 * released, like the Model methods (so a scheduler and generate() on one model never overlap),
 * and failures raise the same tgllava exceptions.  close() frees the cache (also on dealloc).
 */
#include "common.h"

#include <math.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *model;
    tg_sched *s;
    tg_sched_event *events;
} SchedObject;

/* rc = call with the GIL released and the model's lock held; -1 with an exception when it could not start */
#define SCHED_RUN(self, rc, call)                              \
    do {                                                       \
        int entered_;                                          \
        if (tg_py_model_enter((self)->model)) {                \
            rc = -1;                                           \
            break;                                             \
        }                                                      \
        Py_BEGIN_ALLOW_THREADS                                 \
        entered_ = tg_py_model_lock((self)->model) == 0;       \
        if (entered_) {                                        \
            tg_error_set(TG_ERR_NONE);                         \
            rc = (call);                                       \
            tg_py_model_unlock((self)->model, rc < 0 ? -1 : 0); \
        }                                                      \
        Py_END_ALLOW_THREADS                                   \
        if (!entered_) rc = -1;                                \
    } while (0)

static int sched_ready(SchedObject *self) {
    if (!self->s || !self->model) {
        PyErr_SetString(TgErr_Base, "this tgllava._C.Scheduler is closed (or was never initialised)");
        return -1;
    }
    return tg_py_model(self->model) ? 0 : -1;
}

static int Sched_init(SchedObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"model", "slots", "context", "decode_rows", NULL};
    PyObject *model;
    int slots, ctx = 0, rows = 0, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|ii", kwlist, &model, &slots, &ctx, &rows)) return -1;
    if (self->s) {
        PyErr_SetString(TgErr_Base, "tgllava._C.Scheduler is already initialised");
        return -1;
    }
    tg_model *m = tg_py_model(model);
    if (!m) return -1;
    self->events = PyMem_Calloc(slots > 0 ? (size_t)slots : 1, sizeof(tg_sched_event));
    if (!self->events) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(model);
    self->model = model;
    tg_sched *s = NULL;
    SCHED_RUN(self, rc, tg_sched_create(m, slots, ctx, rows, &s));
    if (rc) {
        tg_py_raise_failure(TgErr_Shape);
        return -1;
    }
    self->s = s;
    return 0;
}

static PyObject *Sched_close(SchedObject *self, PyObject *noargs) {
    if (self->s && self->model) {
        tg_sched *s = self->s;
        int rc;
        self->s = NULL;
        SCHED_RUN(self, rc, (tg_sched_free(s), 0));
        if (rc) { /* could not take the lock (Ctrl-C, re-entrant call): free anyway, nothing else can use it */
            PyErr_Clear();
            tg_sched_free(s);
        }
    }
    Py_RETURN_NONE;
}

static void Sched_dealloc(SchedObject *self) {
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyObject *r = Sched_close(self, NULL);
    Py_XDECREF(r);
    PyErr_Restore(t, v, tb);
    Py_CLEAR(self->model);
    PyMem_Free(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Sched_admit(SchedObject *self, PyObject *args, PyObject *kw) {
    if (sched_ready(self)) return NULL;
    static char *kwlist[] = {"sequence", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                             "seed", "eos_ids", NULL};
    PyObject *d, *eos = Py_None;
    int maxnew = 256, top_k = 0, rc;
    double temp = 0.0, top_p = 1.0, rep = 1.0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|iddidKO", kwlist, &d, &maxnew, &temp, &top_p, &top_k, &rep, &seed,
                                     &eos))
        return NULL;
    tg_sequence sq;
    PyObject *refs[5] = {NULL};
    int32_t *eos_ids = NULL;
    int n_eos = 0;
    int64_t id = 0;
    PyObject *result = NULL;
    int where = -1; /* the sequence's float inputs: host or device arrays */
    tg_model *m = tg_py_model(self->model);
    if (tg_py_parse_sequence(self->model, d, &sq, refs, &where)) goto done;
    if (eos != Py_None) {
        PyObject *fast = PySequence_Fast(eos, "eos_ids must be a sequence of ints");
        if (!fast) goto done;
        n_eos = (int)PySequence_Fast_GET_SIZE(fast);
        eos_ids = PyMem_Calloc((size_t)n_eos + 1, sizeof(int32_t));
        for (int i = 0; eos_ids && i < n_eos; i++) eos_ids[i] = (int32_t)PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        Py_DECREF(fast);
        if (!eos_ids) PyErr_NoMemory();
        if (PyErr_Occurred()) goto done;
    }
    /* below TG_MIN_TEMPERATURE sampling is greedy; the C core checks every value (NaN, inf, ranges) */
    tg_sampling sp = {maxnew, temp >= 0 && temp < TG_MIN_TEMPERATURE ? 0.0f : (float)temp, (float)top_p, top_k,
                      (float)rep, (uint64_t)seed, eos_ids, n_eos, NULL, NULL};
    SCHED_RUN(self, rc, (tg_model_set_buffers(m, where == 1, 0), tg_sched_admit(self->s, &sq, &sp, &id)));
    if (rc) {
        tg_py_raise_failure(TgErr_Shape);
        goto done;
    }
    result = PyLong_FromLongLong((long long)id);
done:
    for (int i = 0; i < 5; i++) Py_XDECREF(refs[i]);
    PyMem_Free(eos_ids);
    return result;
}

static PyObject *Sched_step(SchedObject *self, PyObject *noargs) {
    if (sched_ready(self)) return NULL;
    int n = 0, rc;
    SCHED_RUN(self, rc, tg_sched_step(self->s, self->events, &n));
    /* a failed step raises; the tokens it sampled are lost, so the caller cancels its sequences */
    if (rc) return tg_py_raise_failure(TgErr_Device);
    PyObject *out = PyList_New(n);
    for (int i = 0; out && i < n; i++) {
        const tg_sched_event *e = &self->events[i];
        PyObject *t = Py_BuildValue("(Lii)", (long long)e->id, (int)e->token, e->finish);
        if (!t) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *Sched_cancel(SchedObject *self, PyObject *args) {
    if (sched_ready(self)) return NULL;
    long long id;
    int rc;
    if (!PyArg_ParseTuple(args, "L", &id)) return NULL;
    SCHED_RUN(self, rc, tg_sched_cancel(self->s, (int64_t)id));
    if (rc < 0) return tg_py_raise_failure(TgErr_Device);
    return PyBool_FromLong(rc == 1);
}

static PyObject *Sched_get_active(SchedObject *self, void *closure) {
    if (sched_ready(self)) return NULL;
    return PyLong_FromLong(tg_sched_active(self->s));
}

static PyObject *Sched_get_slots(SchedObject *self, void *closure) {
    if (sched_ready(self)) return NULL;
    return PyLong_FromLong(tg_sched_slots(self->s));
}

static PyObject *Sched_get_context(SchedObject *self, void *closure) {
    if (sched_ready(self)) return NULL;
    return PyLong_FromLong(tg_sched_context(self->s));
}

static PyMethodDef Sched_methods[] = {
    {"admit", (PyCFunction)(void (*)(void))Sched_admit, METH_VARARGS | METH_KEYWORDS,
     "admit(sequence, max_new_tokens=256, temperature=0, top_p=1, top_k=0, repetition_penalty=1, seed=0, "
     "eos_ids=None) -> id: prefill one sequence into a free slot"},
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
