/* module.c -- the CPython extension tgllava._C: module init, argument helpers, and the Model type.
 *
 * _C.Model wraps a tg_model.  Every method follows one path: parse and check
 * the NumPy arguments (dtype, rank, sizes, C-contiguity; byte-swapped or
 * misaligned arrays are copied to native ones; integers are range-checked,
 * never cut to 32 bits; the Python layer in tgllava/model.py converts
 * friendlier inputs before calling), allocate the
 * output array, release the GIL and take the model's lock while C computes,
 * then turn a failure into the right tgllava exception from the error code
 * the C core reports (tg_error_code: ShapeError for bad inputs, MemoryError
 * -- tgllava.errors.OutOfMemoryError -- for host memory, DeviceError for
 * backend failures, KeyboardInterrupt for Ctrl-C; CheckpointError while
 * loading).  Waiting for the lock and decoding both poll for signals, so
 * Ctrl-C works during a long generate() (the model stays usable); a call
 * into the same model from inside one of its own calls (a generate callback)
 * raises TgError instead of deadlocking; a Model whose __init__ never ran
 * raises TgError instead of touching a NULL model.
 * Float inputs may also be _C.DeviceArray objects on the model's device
 * (devbuf.c; all float inputs of one call in the same memory), and the
 * stages and logits take out_device=True to return a DeviceArray: the call
 * then sets tg_model_set_buffers under the lock (reset on unlock).
 * Arrays passed in are never modified.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define PY_ARRAY_UNIQUE_SYMBOL tgllava_ARRAY_API
#include <numpy/arrayobject.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pythread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#include "common.h"

PyObject *TgErr_Base, *TgErr_Checkpoint, *TgErr_Shape, *TgErr_Device, *TgErr_Memory;

PyArrayObject *tg_py_array(PyObject *obj, int typenum, int ndim, const char *what) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(TgErr_Shape, "%s must be a NumPy array, got %s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum) {
        PyArray_Descr *want = PyArray_DescrFromType(typenum);
        PyErr_Format(TgErr_Shape, "%s must have dtype %s, got %s", what, want->typeobj->tp_name,
                     PyArray_DESCR(a)->typeobj->tp_name);
        Py_DECREF(want);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(TgErr_Shape, "%s must have %d dimensions, got %d", what, ndim, PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(TgErr_Shape, "%s must be C-contiguous", what);
        return NULL;
    }
    /* byte-swapped ('>f4' on this little-endian machine) or misaligned data: a native, aligned copy, as
     * NumPy's PyArray_FROM_OTF(obj, typenum, NPY_ARRAY_IN_ARRAY) makes (the C core reads native values) */
    if (!PyArray_ISNOTSWAPPED(a) || !PyArray_ISALIGNED(a))
        return (PyArrayObject *)PyArray_FromArray(a, PyArray_DescrFromType(typenum), NPY_ARRAY_IN_ARRAY);
    Py_INCREF(a);
    return a;
}

int tg_py_int(PyObject *obj, long long lo, long long hi, const char *what, int *out) {
    PyObject *i = PyNumber_Index(obj);
    if (!i) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be an integer, got %s", what, Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < lo || v > hi) {
        PyErr_Format(TgErr_Shape, "%s = %R is outside [%lld, %lld]", what, obj, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int tg_py_eos_ids(PyObject *eos, int32_t **ids, int *n) {
    *ids = NULL;
    *n = 0;
    if (eos == Py_None) return 0;
    PyObject *fast = PySequence_Fast(eos, "eos_ids must be a sequence of ints");
    if (!fast) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast), i = 0;
    int32_t *v = len < INT_MAX ? PyMem_Calloc((size_t)len + 1, sizeof *v) : NULL;
    if (!v) PyErr_NoMemory();
    for (; v && i < len; i++) {
        int x;
        if (tg_py_int(PySequence_Fast_GET_ITEM(fast, i), INT32_MIN, INT32_MAX, "eos id", &x)) break;
        v[i] = x;
    }
    Py_DECREF(fast);
    if (!v || i < len) {
        PyMem_Free(v);
        return -1;
    }
    *ids = v;
    *n = (int)len;
    return 0;
}

int tg_py_check_dims(PyArrayObject *a, const npy_intp *want, int ndim, const char *what) {
    for (int i = 0; i < ndim; i++)
        if (want[i] >= 0 && PyArray_DIM(a, i) != want[i]) {
            PyErr_Format(TgErr_Shape, "%s: dimension %d is %zd, expected %zd", what, i, (Py_ssize_t)PyArray_DIM(a, i),
                         (Py_ssize_t)want[i]);
            return -1;
        }
    for (int i = 0; i < ndim; i++)
        if (PyArray_DIM(a, i) == 0) {
            PyErr_Format(TgErr_Shape, "%s: dimension %d is empty", what, i);
            return -1;
        }
    return 0;
}

tg_backend *tg_py_backend(const char *device) {
    char err[512] = {0};
    tg_backend *be = NULL;
    if (strcmp(device, "cpu") == 0) {
        be = tg_cpu_backend_create(err, sizeof err);
    } else if (strncmp(device, "cuda", 4) == 0) {
#ifdef TG_WITH_CUDA
        int ordinal = 0;
        if (device[4] == ':') ordinal = atoi(device + 5);
        else if (device[4] != 0) {
            PyErr_Format(TgErr_Shape, "unknown device '%s' (use 'cpu', 'cuda' or 'cuda:N')", device);
            return NULL;
        }
        be = tg_cuda_backend_create(ordinal, err, sizeof err);
#else
        PyErr_SetString(TgErr_Device, "tgllava was built without CUDA (rebuild with nvcc on PATH or TGLLAVA_CUDA=1)");
        return NULL;
#endif
    } else {
        PyErr_Format(TgErr_Shape, "unknown device '%s' (use 'cpu', 'cuda' or 'cuda:N')", device);
        return NULL;
    }
    if (!be) PyErr_SetString(TgErr_Device, err);
    return be;
}

/* ------------------------------------------------------------------ Model */

typedef struct {
    PyObject_HEAD
    tg_model *m;
    tg_backend *be;
    PyThread_type_lock lock;
    atomic_ulong owner; /* thread ident of the call holding the lock, 0 when free */
} ModelObject;

/* The failure of the last model call on this thread, captured while the lock was still held
 * (another thread's call cannot overwrite it before it is raised). */
static _Thread_local struct {
    char msg[768];
    int code;       /* enum tg_error_code */
    int backend;    /* the backend left a message */
} last_failure;

static int model_ready(ModelObject *self) {
    if (!self->m || !self->be || !self->lock) {
        PyErr_SetString(TgErr_Base, "tgllava._C.Model is not initialised (create it with tgllava.load or Model(config))");
        return -1;
    }
    return 0;
}

/* With the GIL: may this thread start a call on the model? */
static int model_enter(ModelObject *self) {
    if (model_ready(self)) return -1;
    if (atomic_load(&self->owner) == PyThread_get_thread_ident()) {
        PyErr_SetString(TgErr_Base,
                        "re-entrant call: this model is already running a call on this thread (a generate callback "
                        "may not call the same model; collect the tokens and call it after generate returns)");
        return -1;
    }
    return 0;
}

/* Without the GIL: take the model's lock, checking for signals (Ctrl-C) while another thread holds it.
 * -1 with the signal's exception set when interrupted. */
static int model_lock(ModelObject *self) {
    while (PyThread_acquire_lock_timed(self->lock, 50000, 0) != PY_LOCK_ACQUIRED) {
        PyGILState_STATE g = PyGILState_Ensure();
        int interrupted = PyErr_CheckSignals();
        PyGILState_Release(g);
        if (interrupted) return -1;
    }
    atomic_store(&self->owner, PyThread_get_thread_ident());
    return 0;
}

static void model_unlock(ModelObject *self, int rc) {
    if (rc) {
        const char *msg = tg_model_error(self->m);
        snprintf(last_failure.msg, sizeof last_failure.msg, "%s", msg && msg[0] ? msg : "unknown failure");
        last_failure.code = tg_error_code();
        last_failure.backend = self->be->err[0] != 0;
        self->be->err[0] = 0;
    }
    tg_model_set_buffers(self->m, 0, 0);
    atomic_store(&self->owner, 0);
    PyThread_release_lock(self->lock);
}

/* Run `call` (an int expression, 0 = success) on the model with the GIL released and the lock held.
 * rc = -1 with a Python exception already set when the call could not start. */
#define RUN(self, rc, call)                        \
    do {                                           \
        int entered_;                              \
        if (model_enter(self)) {                   \
            rc = -1;                               \
            break;                                 \
        }                                          \
        Py_BEGIN_ALLOW_THREADS                     \
        entered_ = model_lock(self) == 0;          \
        if (entered_) {                            \
            tg_error_set(TG_ERR_NONE);             \
            rc = (call);                           \
            model_unlock(self, rc);                \
        }                                          \
        Py_END_ALLOW_THREADS                       \
        if (!entered_) rc = -1;                    \
    } while (0)

/* The exception for the captured failure; `fallback` is the class when the C core gave no code
 * and the backend left no message (ShapeError for stages, CheckpointError while loading). */
static PyObject *raise_failure(PyObject *fallback) {
    if (PyErr_Occurred()) return NULL; /* not started (re-entrant, Ctrl-C while waiting) or a callback's error */
    PyObject *cls;
    switch (last_failure.code) {
    case TG_ERR_INPUT: cls = TgErr_Shape; break;
    case TG_ERR_MEMORY: cls = TgErr_Memory; break;
    case TG_ERR_DEVICE: cls = TgErr_Device; break;
    case TG_ERR_INTERRUPTED: cls = PyExc_KeyboardInterrupt; break;
    default: cls = last_failure.backend ? TgErr_Device : fallback;
    }
    PyErr_SetString(cls, last_failure.msg[0] ? last_failure.msg : "unknown failure");
    return NULL;
}

static PyObject *model_error(ModelObject *self) {
    (void)self;
    return raise_failure(TgErr_Shape);
}

/* the tail of every single-output method: the array, or the model's error as an exception */
static PyObject *result_or_error(ModelObject *self, int rc, PyObject *out) {
    if (rc) {
        Py_DECREF(out);
        return model_error(self);
    }
    return out;
}

/* ------------------------------------------------------------------ the config (config_fields.h) */

/* One row per TG_CONFIG_FIELDS entry: where the field sits in tg_config and how it is read. */
typedef struct config_field {
    const char *name, *type, *meaning;
    int is_float, need;
    size_t offset;
} config_field;

#define TG_FIELD_IS_FLOAT_int 0
#define TG_FIELD_IS_FLOAT_float 1
#define TG_CONFIG_ROW(type, name, need, meaning) \
    {#name, #type, meaning, TG_FIELD_IS_FLOAT_##type, TG_NEED_##need, offsetof(tg_config, name)},
static const config_field CONFIG_FIELDS[] = {TG_CONFIG_FIELDS(TG_CONFIG_ROW)};
#undef TG_CONFIG_ROW
#define N_CONFIG_FIELDS ((int)(sizeof CONFIG_FIELDS / sizeof CONFIG_FIELDS[0]))

static const char *const NEED_TEXT[] = {"always", "has_fom or has_dp", "has_fom", "has_dp"};

/* whether field f must be given for a config with these module flags */
static int config_needs(const config_field *f, const tg_config *c) {
    switch (f->need) {
    case TG_NEED_TEXT: return c->has_fom || c->has_dp;
    case TG_NEED_FOM: return c->has_fom;
    case TG_NEED_DP: return c->has_dp;
    default: return 1;
    }
}

static int config_field_index(const char *name) {
    for (int i = 0; i < N_CONFIG_FIELDS; i++)
        if (strcmp(CONFIG_FIELDS[i].name, name) == 0) return i;
    return -1;
}

/* dict value v into field f of c (a number; ints in the range of a C int) */
static int config_read(const config_field *f, PyObject *v, tg_config *c) {
    char *at = (char *)c + f->offset;
    if (f->is_float) {
        double x = PyFloat_AsDouble(v);
        if (x == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(TgErr_Shape, "config field %s must be a number", f->name);
            return -1;
        }
        *(float *)at = (float)x;
        return 0;
    }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(TgErr_Shape, "config field %s must be an integer", f->name);
        return -1;
    }
    if (x < INT_MIN || x > INT_MAX) {
        PyErr_Format(TgErr_Shape, "config field %s = %ld is outside the range of a C int", f->name, x);
        return -1;
    }
    *(int *)at = (int)x;
    return 0;
}

/* The config dict -> c.  Every key must be a field of the schema; a field that is not needed for
 * the config's modules (config_fields.h) may be left out and is then 0, a needed one may not. */
static int parse_config(PyObject *d, tg_config *c) {
    memset(c, 0, sizeof *c);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(d, &pos, &key, &value)) {
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        if (!name) {
            PyErr_Clear();
            PyErr_Format(TgErr_Shape, "config keys must be field names (strings), got %R", key);
            return -1;
        }
        int i = config_field_index(name);
        if (i < 0) {
            PyErr_Format(TgErr_Shape, "config has an unknown field %R (the fields are tgllava._C.config_fields())", key);
            return -1;
        }
        if (config_read(&CONFIG_FIELDS[i], value, c)) return -1;
    }
    for (int i = 0; i < N_CONFIG_FIELDS; i++) {
        const config_field *f = &CONFIG_FIELDS[i];
        if (config_needs(f, c) && !PyDict_GetItemString(d, f->name)) {
            PyErr_Format(TgErr_Shape, "config is missing field %s (%s; needed %s%s)", f->name, f->meaning,
                         f->need == TG_NEED_ALWAYS ? "" : "when ", NEED_TEXT[f->need]);
            return -1;
        }
    }
    return 0;
}

/* c -> a dict with every field of the schema */
static PyObject *config_export(const tg_config *c) {
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < N_CONFIG_FIELDS; i++) {
        const config_field *f = &CONFIG_FIELDS[i];
        const char *at = (const char *)c + f->offset;
        PyObject *v = f->is_float ? PyFloat_FromDouble(*(const float *)at) : PyLong_FromLong(*(const int *)at);
        if (!v || PyDict_SetItemString(d, f->name, v)) {
            Py_XDECREF(v);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(v);
    }
    return d;
}

static int Model_init(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"config", "device", NULL};
    PyObject *cfgd;
    const char *device = "cpu";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|s", kwlist, &PyDict_Type, &cfgd, &device)) return -1;
    if (self->m || self->be || self->lock) {
        PyErr_SetString(TgErr_Base, "tgllava._C.Model is already initialised");
        return -1;
    }
    tg_config c;
    if (parse_config(cfgd, &c)) return -1;
    self->be = tg_py_backend(device);
    if (!self->be) return -1;
    char err[512];
    if (tg_model_create(&c, self->be, &self->m, err, sizeof err)) {
        PyErr_SetString(TgErr_Checkpoint, err);
        return -1;
    }
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* The storage dtype names, by enum tg_dtype code (exported as _C.DTYPES). */
static const char *const DTYPE_NAMES[TG_DTYPE_COUNT] = {"float32", "float16", "bfloat16", "int8", "int4"};

/* The sampling rule of every generate call (exported as _C.check_sampling, which tgllava.model's
 * check_sampling applies): finite values, 0 <= max_new_tokens <= max_len (when max_len >= 0),
 * temperature >= 0, 0 < top_p <= 1, top_k >= 0 and 0 < repetition_penalty <= FLT_MAX (the C core
 * keeps it as a float).  0, or -1 with ShapeError naming the first bad value. */
static int check_sampling(long long max_new, double temp, double top_p, long long top_k, double rep, long long max_len) {
    if (max_new < 0 || (max_len >= 0 && max_new > max_len)) {
        if (max_len >= 0)
            PyErr_Format(TgErr_Shape, "max_new_tokens %lld is outside [0, %lld] (the model's context length)", max_new,
                         max_len);
        else
            PyErr_Format(TgErr_Shape, "max_new_tokens must be >= 0, got %lld", max_new);
        return -1;
    }
    char msg[160];
    msg[0] = 0;
    if (!isfinite(temp) || !isfinite(top_p) || !isfinite(rep))
        snprintf(msg, sizeof msg, "%s must be finite, got %g",
                 !isfinite(temp) ? "temperature" : !isfinite(top_p) ? "top_p" : "repetition_penalty",
                 !isfinite(temp) ? temp : !isfinite(top_p) ? top_p : rep);
    else if (temp < 0)
        snprintf(msg, sizeof msg, "temperature must be >= 0, got %g", temp);
    else if (!(top_p > 0) || top_p > 1)
        snprintf(msg, sizeof msg, "top_p must be in (0, 1], got %g", top_p);
    else if (top_k < 0)
        snprintf(msg, sizeof msg, "top_k must be >= 0, got %lld", top_k);
    else if (!(rep > 0) || rep > FLT_MAX)
        snprintf(msg, sizeof msg, "repetition_penalty must be in (0, %g], got %g", (double)FLT_MAX, rep);
    if (msg[0]) {
        PyErr_SetString(TgErr_Shape, msg);
        return -1;
    }
    return 0;
}

static void Model_dealloc(ModelObject *self) {
    if (self->m) tg_model_free(self->m);
    if (self->be) self->be->destroy(self->be);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Model_required(ModelObject *self, PyObject *noargs) {
    if (model_ready(self)) return NULL;
    int n = tg_model_required_count(self->m);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        int ndim, loaded;
        const int64_t *shape;
        const char *name = tg_model_required(self->m, i, &ndim, &shape, &loaded);
        PyObject *sh = PyTuple_New(ndim);
        for (int j = 0; sh && j < ndim; j++) PyTuple_SET_ITEM(sh, j, PyLong_FromLongLong(shape[j]));
        PyObject *item = sh ? Py_BuildValue("(sNO)", name, sh, loaded ? Py_True : Py_False) : NULL;
        if (!item) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

/* storage() -> [(name, dtype name, stored bytes)]: how each checkpoint tensor is (or will be) stored;
 * a stacked tensor's second part shows 0 bytes */
static PyObject *Model_storage(ModelObject *self, PyObject *noargs) {
    if (model_ready(self)) return NULL;
    int n = tg_model_required_count(self->m);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        int ndim, loaded;
        const int64_t *shape;
        size_t bytes = 0;
        const char *name = tg_model_required(self->m, i, &ndim, &shape, &loaded);
        int dt = tg_model_storage(self->m, i, &bytes);
        PyObject *item = Py_BuildValue("(ssK)", name, dt >= 0 && dt < TG_DTYPE_COUNT ? DTYPE_NAMES[dt] : "?",
                                       (unsigned long long)bytes);
        if (!item) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

/* set_tensor(name, array, src_dtype): array float32, float16, or uint16 holding bfloat16 bits (src_dtype 2) */
static PyObject *Model_set_tensor(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    const char *name;
    PyObject *obj;
    int src;
    if (!PyArg_ParseTuple(args, "sOi", &name, &obj, &src)) return NULL;
    int typenum = src == TG_SRC_F32 ? NPY_FLOAT32 : src == TG_SRC_F16 ? NPY_FLOAT16 : NPY_UINT16;
    PyArrayObject *a = tg_py_array(obj, typenum, -1, name);
    if (!a) return NULL;
    int ndim = PyArray_NDIM(a), rc;
    int64_t shape[8];
    if (ndim > 8) {
        Py_DECREF(a);
        PyErr_Format(TgErr_Checkpoint, "tensor %s has too many dimensions", name);
        return NULL;
    }
    for (int i = 0; i < ndim; i++) shape[i] = PyArray_DIM(a, i);
    RUN(self, rc, tg_model_set_tensor(self->m, name, PyArray_DATA(a), src, ndim, shape));
    Py_DECREF(a);
    if (rc) return raise_failure(TgErr_Checkpoint);
    Py_RETURN_NONE;
}

static PyObject *Model_finish(ModelObject *self, PyObject *noargs) {
    if (model_ready(self)) return NULL;
    int rc;
    RUN(self, rc, tg_model_finish(self->m));
    if (rc) return raise_failure(TgErr_Checkpoint);
    Py_RETURN_NONE;
}

static PyArrayObject *new_f32(int nd, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_SimpleNew(nd, (npy_intp *)dims, NPY_FLOAT32);
}

/* a stage call: its inputs' memory (-1: no float input) and out_device set for the call, under the lock */
#define RUN_STAGE(self, rc, in_backend, out_backend, call) \
    RUN(self, rc, (tg_model_set_buffers((self)->m, (in_backend) == 1, out_backend), (call)))

static PyObject *Model_vision_features(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    PyObject *o;
    int out_dev = 0;
    if (!PyArg_ParseTuple(args, "O|p", &o, &out_dev)) return NULL;
    const tg_config *c = tg_model_config(self->m);
    tg_py_buf pix;
    npy_intp want[4] = {-1, 3, c->v_image, c->v_image};
    if (tg_py_input((PyObject *)self, o, NPY_FLOAT32, 4, want, "pixels", &pix)) return NULL;
    int B = (int)pix.dims[0], g = c->v_image / c->v_patch, rc;
    npy_intp od[3] = {B, (npy_intp)g * g, c->v_hidden};
    void *od_data;
    PyObject *out = tg_py_output((PyObject *)self, out_dev, 3, od, &od_data);
    if (!out) {
        Py_DECREF(pix.ref);
        return NULL;
    }
    RUN_STAGE(self, rc, pix.on_backend, out_dev, tg_vision_features(self->m, pix.data, B, od_data));
    Py_DECREF(pix.ref);
    return result_or_error(self, rc, (PyObject *)out);
}

static PyObject *Model_text_tower(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    PyObject *o;
    int out_dev = 0;
    if (!PyArg_ParseTuple(args, "O|p", &o, &out_dev)) return NULL;
    const tg_config *c = tg_model_config(self->m);
    PyArrayObject *ids = tg_py_array(o, NPY_INT32, 2, "ids");
    npy_intp want[2] = {-1, -1};
    if (!ids || tg_py_check_dims(ids, want, 2, "ids")) {
        Py_XDECREF(ids);
        return NULL;
    }
    int B = (int)PyArray_DIM(ids, 0), T = (int)PyArray_DIM(ids, 1), rc;
    npy_intp hd[3] = {B, T, c->t_hidden}, pd[2] = {B, c->t_hidden};
    void *h_data = NULL, *p_data = NULL;
    PyObject *h = tg_py_output((PyObject *)self, out_dev, 3, hd, &h_data);
    PyObject *p = h ? tg_py_output((PyObject *)self, out_dev, 2, pd, &p_data) : NULL;
    if (!h || !p) {
        Py_DECREF(ids);
        Py_XDECREF(h);
        Py_XDECREF(p);
        return NULL;
    }
    RUN_STAGE(self, rc, -1, out_dev, tg_text_tower(self->m, PyArray_DATA(ids), B, T, h_data, p_data));
    Py_DECREF(ids);
    if (rc) {
        Py_DECREF(h);
        Py_DECREF(p);
        return model_error(self);
    }
    return Py_BuildValue("(NN)", h, p);
}

static PyObject *Model_fom(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    PyObject *o;
    int out_dev = 0;
    if (!PyArg_ParseTuple(args, "O|p", &o, &out_dev)) return NULL;
    const tg_config *c = tg_model_config(self->m);
    tg_py_buf p;
    npy_intp want[2] = {-1, c->t_hidden};
    if (tg_py_input((PyObject *)self, o, NPY_FLOAT32, 2, want, "pooled", &p)) return NULL;
    int B = (int)p.dims[0], rc;
    npy_intp od[3] = {B, c->q_queries, c->v_hidden};
    void *od_data;
    PyObject *out = tg_py_output((PyObject *)self, out_dev, 3, od, &od_data);
    if (!out) {
        Py_DECREF(p.ref);
        return NULL;
    }
    RUN_STAGE(self, rc, p.on_backend, out_dev, tg_fom(self->m, p.data, B, od_data));
    Py_DECREF(p.ref);
    return result_or_error(self, rc, (PyObject *)out);
}

/* optional int32 (B) lengths: None -> NULL */
static int opt_lengths(PyObject *o, int B, int T, PyArrayObject **out) {
    *out = NULL;
    if (o == Py_None) return 0;
    PyArrayObject *a = tg_py_array(o, NPY_INT32, 1, "text_len");
    npy_intp want[1] = {B};
    if (!a || tg_py_check_dims(a, want, 1, "text_len")) {
        Py_XDECREF(a);
        return -1;
    }
    const int32_t *l = PyArray_DATA(a);
    for (int b = 0; b < B; b++)
        if (l[b] < 1 || l[b] > T) {
            PyErr_Format(TgErr_Shape, "text_len[%d] = %d is outside [1, %d]", b, l[b], T);
            Py_DECREF(a);
            return -1;
        }
    *out = a;
    return 0;
}

static PyObject *Model_dp(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    PyObject *fo, *to, *lo = Py_None;
    int out_dev = 0, where = -1;
    if (!PyArg_ParseTuple(args, "OO|Op", &fo, &to, &lo, &out_dev)) return NULL;
    const tg_config *c = tg_model_config(self->m);
    int g = c->v_image / c->v_patch;
    tg_py_buf f = {0}, t = {0};
    PyArrayObject *len = NULL;
    npy_intp wf[3] = {-1, 4 * (npy_intp)g * g, c->v_hidden};
    if (tg_py_input((PyObject *)self, fo, NPY_FLOAT32, 3, wf, "tile_features", &f)) goto fail;
    int B = (int)f.dims[0];
    npy_intp wt[3] = {B, -1, c->t_hidden};
    if (tg_py_input((PyObject *)self, to, NPY_FLOAT32, 3, wt, "text_hidden", &t)) goto fail;
    if (tg_py_same_memory(&f, &where) || tg_py_same_memory(&t, &where)) goto fail;
    int T = (int)t.dims[1], rc;
    if (opt_lengths(lo, B, T, &len)) goto fail;
    npy_intp od[3] = {B, c->p_latents, c->hidden};
    void *od_data;
    PyObject *out = tg_py_output((PyObject *)self, out_dev, 3, od, &od_data);
    if (!out) goto fail;
    RUN_STAGE(self, rc, where, out_dev, tg_dp(self->m, f.data, t.data, len ? PyArray_DATA(len) : NULL, B, T, od_data));
    Py_DECREF(f.ref);
    Py_DECREF(t.ref);
    Py_XDECREF(len);
    return result_or_error(self, rc, (PyObject *)out);
fail:
    Py_XDECREF(f.ref);
    Py_XDECREF(t.ref);
    Py_XDECREF(len);
    return NULL;
}

static PyObject *Model_visual_tokens(ModelObject *self, PyObject *args, PyObject *kw) {
    if (model_ready(self)) return NULL;
    static char *kwlist[] = {"pixels", "text_ids", "text_len", "use_fom", "use_dp", "n_latents", "out_device", NULL};
    PyObject *po, *io = Py_None, *lo = Py_None, *nlo = NULL;
    int use_fom = 1, use_dp = 1, nlat = 0, out_dev = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOppOp", kwlist, &po, &io, &lo, &use_fom, &use_dp, &nlo, &out_dev) ||
        (nlo && tg_py_int(nlo, INT_MIN, INT_MAX, "n_latents", &nlat)))
        return NULL;
    const tg_config *c = tg_model_config(self->m);
    tg_py_buf pix;
    PyArrayObject *ids = NULL, *len = NULL;
    npy_intp wp[4] = {-1, 3, c->v_image, c->v_image};
    if (tg_py_input((PyObject *)self, po, NPY_FLOAT32, 4, wp, "pixels", &pix)) return NULL;
    int B = (int)pix.dims[0], T = 0, rc;
    if (io != Py_None) {
        ids = tg_py_array(io, NPY_INT32, 2, "text_ids");
        npy_intp wi[2] = {B, -1};
        if (!ids || tg_py_check_dims(ids, wi, 2, "text_ids")) goto fail;
        T = (int)PyArray_DIM(ids, 1);
        if (opt_lengths(lo, B, T, &len)) goto fail;
    }
    int count = tg_visual_token_count(self->m, use_dp, nlat);
    npy_intp od[3] = {B, count, c->hidden};
    void *od_data;
    PyObject *out = tg_py_output((PyObject *)self, out_dev, 3, od, &od_data);
    if (!out) goto fail;
    RUN_STAGE(self, rc, pix.on_backend, out_dev,
              tg_visual_tokens(self->m, pix.data, ids ? PyArray_DATA(ids) : NULL, len ? PyArray_DATA(len) : NULL, B, T,
                               use_fom, use_dp, nlat, od_data));
    Py_DECREF(pix.ref);
    Py_XDECREF(ids);
    Py_XDECREF(len);
    return result_or_error(self, rc, (PyObject *)out);
fail:
    Py_XDECREF(pix.ref);
    Py_XDECREF(ids);
    Py_XDECREF(len);
    return NULL;
}

/* A sequence is a dict: ids (int32 1-D), and optionally pixels (float32 (3,S,S)), text_ids (int32 1-D),
 * visual (float32 (n,H)), features, use_fom, use_dp, n_latents.  Keeps references in refs[0..4]; the float
 * inputs (NumPy or DeviceArray) must agree with *where (tg_py_same_memory). */
static int parse_sequence(ModelObject *self, PyObject *d, tg_sequence *s, PyObject **refs, int *where) {
    const tg_config *c = tg_model_config(self->m);
    memset(s, 0, sizeof *s);
    refs[0] = refs[1] = refs[2] = refs[3] = refs[4] = NULL;
    if (!PyDict_Check(d)) {
        PyErr_SetString(TgErr_Shape, "each sequence must be a dict with at least 'ids'");
        return -1;
    }
    PyObject *o = PyDict_GetItemString(d, "ids");
    if (!o) {
        PyErr_SetString(TgErr_Shape, "sequence has no 'ids'");
        return -1;
    }
    PyArrayObject *ids = tg_py_array(o, NPY_INT32, 1, "input_ids");
    if (!(refs[0] = (PyObject *)ids)) return -1;
    s->ids = PyArray_DATA(ids);
    s->n_ids = (int)PyArray_DIM(ids, 0);
    tg_py_buf b;
    if ((o = PyDict_GetItemString(d, "pixels")) && o != Py_None) {
        npy_intp w[3] = {3, c->v_image, c->v_image};
        if (tg_py_input((PyObject *)self, o, NPY_FLOAT32, 3, w, "pixels", &b)) return -1;
        refs[1] = b.ref;
        if (tg_py_same_memory(&b, where)) return -1;
        s->pixels = b.data;
    }
    if ((o = PyDict_GetItemString(d, "text_ids")) && o != Py_None) {
        npy_intp w[1] = {-1};
        PyArrayObject *t = tg_py_array(o, NPY_INT32, 1, "text_ids");
        if (!(refs[2] = (PyObject *)t) || tg_py_check_dims(t, w, 1, "text_ids")) return -1;
        s->text_ids = PyArray_DATA(t);
        s->n_text = (int)PyArray_DIM(t, 0);
    }
    if ((o = PyDict_GetItemString(d, "visual")) && o != Py_None) {
        npy_intp w[2] = {-1, c->hidden};
        if (tg_py_input((PyObject *)self, o, NPY_FLOAT32, 2, w, "visual", &b)) return -1;
        refs[3] = b.ref;
        if (tg_py_same_memory(&b, where)) return -1;
        s->visual = b.data;
        s->n_visual = (int)b.dims[0];
    }
    if ((o = PyDict_GetItemString(d, "features")) && o != Py_None) {
        int g = c->v_image / c->v_patch;
        npy_intp w[3] = {-1, (npy_intp)g * g, c->v_hidden};
        if (tg_py_input((PyObject *)self, o, NPY_FLOAT32, 3, w, "features", &b)) return -1;
        refs[4] = b.ref;
        if (tg_py_same_memory(&b, where)) return -1;
        s->features = b.data;
        s->n_feature_images = (int)b.dims[0];
    }
    s->use_fom = s->use_dp = 1;
    if ((o = PyDict_GetItemString(d, "use_fom"))) s->use_fom = PyObject_IsTrue(o);
    if ((o = PyDict_GetItemString(d, "use_dp"))) s->use_dp = PyObject_IsTrue(o);
    if ((o = PyDict_GetItemString(d, "n_latents")) && o != Py_None &&
        tg_py_int(o, INT_MIN, INT_MAX, "n_latents", &s->n_latents))
        return -1;
    if (PyErr_Occurred()) return -1;
    return 0;
}

static void drop_refs(PyObject **refs, int n) {
    for (int i = 0; i < n; i++) Py_XDECREF(refs[i]);
}

static PyObject *Model_logits(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    PyObject *d;
    int all = 1, rc, n_rows = 0, out_dev = 0, where = -1;
    if (!PyArg_ParseTuple(args, "O|pp", &d, &all, &out_dev)) return NULL;
    tg_sequence s;
    PyObject *refs[5];
    if (parse_sequence(self, d, &s, refs, &where)) {
        drop_refs(refs, 5);
        return NULL;
    }
    const tg_config *c = tg_model_config(self->m);
    int n = tg_spliced_length(self->m, &s);
    npy_intp od[2] = {all ? (n > 0 ? n : 1) : 1, c->vocab};
    void *od_data;
    PyObject *out = tg_py_output((PyObject *)self, out_dev, 2, od, &od_data);
    if (!out) {
        drop_refs(refs, 5);
        return NULL;
    }
    RUN_STAGE(self, rc, where, out_dev, tg_logits(self->m, &s, all, od_data, &n_rows));
    drop_refs(refs, 5);
    return result_or_error(self, rc, (PyObject *)out);
}

static PyObject *Model_spliced_length(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    PyObject *d;
    if (!PyArg_ParseTuple(args, "O", &d)) return NULL;
    tg_sequence s;
    PyObject *refs[5];
    int where = -1, rc = parse_sequence(self, d, &s, refs, &where);
    int n = rc ? 0 : tg_spliced_length(self->m, &s);
    drop_refs(refs, 5);
    if (rc) return NULL;
    return PyLong_FromLong(n);
}

static PyObject *Model_visual_token_count(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    PyObject *nlo = NULL;
    int use_dp = 1, nl = 0;
    if (!PyArg_ParseTuple(args, "|pO", &use_dp, &nlo) || (nlo && tg_py_int(nlo, INT_MIN, INT_MAX, "n_latents", &nl)))
        return NULL;
    return PyLong_FromLong(tg_visual_token_count(self->m, use_dp, nl));
}

static PyObject *Model_llm_attention(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    PyObject *d;
    int q0, q1, k0, k1, rc;
    if (!PyArg_ParseTuple(args, "Oiiii", &d, &q0, &q1, &k0, &k1)) return NULL;
    tg_sequence s;
    PyObject *refs[5];
    int where = -1;
    if (parse_sequence(self, d, &s, refs, &where)) {
        drop_refs(refs, 5);
        return NULL;
    }
    if (q1 <= q0 || k1 <= k0) {
        drop_refs(refs, 5);
        PyErr_SetString(TgErr_Shape, "attention map ranges are empty");
        return NULL;
    }
    npy_intp od[2] = {q1 - q0, k1 - k0};
    PyArrayObject *out = new_f32(2, od);
    if (!out) {
        drop_refs(refs, 5);
        return NULL;
    }
    RUN_STAGE(self, rc, where, 0, tg_llm_attention(self->m, &s, q0, q1, k0, k1, PyArray_DATA(out)));
    drop_refs(refs, 5);
    return result_or_error(self, rc, (PyObject *)out);
}

static PyObject *Model_dp_attention(ModelObject *self, PyObject *args) {
    if (model_ready(self)) return NULL;
    PyObject *d;
    int rc;
    if (!PyArg_ParseTuple(args, "O", &d)) return NULL;
    tg_sequence s;
    PyObject *refs[5];
    int where = -1;
    if (parse_sequence(self, d, &s, refs, &where)) {
        drop_refs(refs, 5);
        return NULL;
    }
    const tg_config *c = tg_model_config(self->m);
    if (where == 1) {
        drop_refs(refs, 5);
        PyErr_SetString(TgErr_Shape, "dp_attention takes host arrays only");
        return NULL;
    }
    if (!s.pixels || !s.text_ids) {
        drop_refs(refs, 5);
        PyErr_SetString(TgErr_Shape, "dp_attention needs pixels and text_ids");
        return NULL;
    }
    int g = c->v_image / c->v_patch;
    npy_intp od[2] = {c->p_latents, 4 * (npy_intp)g * g + c->p_latents};
    PyArrayObject *out = new_f32(2, od);
    if (!out) {
        drop_refs(refs, 5);
        return NULL;
    }
    RUN(self, rc, tg_dp_attention(self->m, s.pixels, s.text_ids, s.n_text, PyArray_DATA(out)));
    drop_refs(refs, 5);
    return result_or_error(self, rc, (PyObject *)out);
}

/* streaming: the C loop calls back into Python with the GIL re-acquired */
typedef struct {
    PyObject *fn;
    int failed;
} callback_state;

/* Ctrl-C during generate: the decode loop polls this every step; at most every 20 ms it takes the GIL
 * and runs pending signal handlers (SIGINT raises KeyboardInterrupt, which stops generation). */
typedef struct {
    double next;
} poll_state;

static double monotonic_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int poll_signals(void *user) {
    poll_state *ps = user;
    double now = monotonic_seconds();
    if (now < ps->next) return 0;
    ps->next = now + 0.02;
    PyGILState_STATE g = PyGILState_Ensure();
    int interrupted = PyErr_CheckSignals() != 0; /* the handler's exception stays set for generate to raise */
    PyGILState_Release(g);
    return interrupted;
}

static int call_python(void *user, int seq, int32_t token) {
    callback_state *st = user;
    if (st->failed) return 1;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(st->fn, "ii", seq, (int)token);
    int stop = 0;
    if (!r) {
        st->failed = 1;
        stop = 1;
        /* leave the exception set; it is raised when generate returns */
    } else {
        stop = r != Py_None && PyObject_IsTrue(r) == 1;
        Py_DECREF(r);
    }
    PyGILState_Release(g);
    return stop;
}

static PyObject *Model_generate(ModelObject *self, PyObject *args, PyObject *kw) {
    if (model_ready(self)) return NULL;
    static char *kwlist[] = {"sequences", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed",
                             "eos_ids", "callback", "last_logits", NULL};
    PyObject *seqs, *eos = Py_None, *cb = Py_None;
    long long maxnew_ll = 256, top_k_ll = 0;
    int want_last = 0;
    double temp_d = 0.0, top_p_d = 1.0, rep_d = 1.0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|LddLdKOOp", kwlist, &seqs, &maxnew_ll, &temp_d, &top_p_d, &top_k_ll,
                                     &rep_d, &seed, &eos, &cb, &want_last)) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) { /* 2**63 and beyond: a bad value, not a crash */
            PyErr_Clear();
            PyErr_SetString(TgErr_Shape, "max_new_tokens and top_k must fit in 64 bits");
        }
        return NULL;
    }
    if (!PyList_Check(seqs) || PyList_GET_SIZE(seqs) == 0) {
        PyErr_SetString(TgErr_Shape, "sequences must be a non-empty list of dicts");
        return NULL;
    }
    const tg_config *cfg = tg_model_config(self->m);
    if (check_sampling(maxnew_ll, temp_d, top_p_d, top_k_ll, rep_d, cfg->max_len) < 0) return NULL;
    const int maxnew = (int)maxnew_ll, top_k = top_k_ll > cfg->vocab ? cfg->vocab : (int)top_k_ll;
    /* below TG_MIN_TEMPERATURE sampling is greedy (in C too); 1e-39 must not become a huge 1/T */
    const float temp = temp_d < TG_MIN_TEMPERATURE ? 0.0f : (float)temp_d, top_p = (float)top_p_d, rep = (float)rep_d;
    if (cb != Py_None && !PyCallable_Check(cb)) {
        PyErr_SetString(PyExc_TypeError, "callback must be callable");
        return NULL;
    }
    const int B = (int)PyList_GET_SIZE(seqs);
    const tg_config *c = tg_model_config(self->m);
    tg_sequence *sq = calloc((size_t)B, sizeof *sq);
    PyObject **refs = calloc((size_t)B * 5, sizeof *refs);
    int32_t *eos_ids = NULL, *tokens = NULL;
    int *n_out = calloc((size_t)B, sizeof(int)), n_eos = 0, rc, where = -1;
    PyObject *result = NULL;
    PyArrayObject *last = NULL;
    if (!sq || !refs || !n_out) {
        PyErr_NoMemory();
        goto done;
    }
    for (int b = 0; b < B; b++)
        if (parse_sequence(self, PyList_GET_ITEM(seqs, b), &sq[b], refs + 5 * b, &where)) goto done;
    if (tg_py_eos_ids(eos, &eos_ids, &n_eos)) goto done;
    tokens = calloc((size_t)B * (maxnew > 0 ? maxnew : 1), sizeof(int32_t));
    if (!tokens) {
        PyErr_NoMemory();
        goto done;
    }
    if (want_last) {
        npy_intp ld[2] = {B, c->vocab};
        last = (PyArrayObject *)PyArray_ZEROS(2, ld, NPY_FLOAT32, 0);
        if (!last) goto done;
    }
    poll_state ps = {0.0};
    tg_sampling sp = {maxnew, temp, top_p, top_k, rep, (uint64_t)seed, eos_ids, n_eos, poll_signals, &ps};
    callback_state st = {cb, 0};
    RUN_STAGE(self, rc, where, 0,
              tg_generate(self->m, sq, B, &sp, cb != Py_None ? call_python : NULL, &st, tokens, n_out,
                          last ? PyArray_DATA(last) : NULL));
    if (st.failed) goto done; /* the callback's exception */
    if (rc) {
        model_error(self);
        goto done;
    }
    PyObject *lists = PyList_New(B);
    for (int b = 0; lists && b < B; b++) {
        PyObject *l = PyList_New(n_out[b]);
        for (int i = 0; l && i < n_out[b]; i++) PyList_SET_ITEM(l, i, PyLong_FromLong(tokens[(size_t)b * maxnew + i]));
        if (!l) {
            Py_CLEAR(lists);
            break;
        }
        PyList_SET_ITEM(lists, b, l);
    }
    if (lists) result = Py_BuildValue("(NO)", lists, last ? (PyObject *)last : Py_None);
done:
    if (refs) drop_refs(refs, 5 * B);
    Py_XDECREF(last);
    free(refs);
    free(sq);
    PyMem_Free(eos_ids);
    free(tokens);
    free(n_out);
    return result;
}

static PyObject *Model_get_config(ModelObject *self, void *closure) {
    if (model_ready(self)) return NULL;
    return config_export(tg_model_config(self->m));
}

/* the backend's CUDA stream as an integer (for __dlpack__(stream=...)); None on the CPU */
static PyObject *Model_get_stream(ModelObject *self, void *closure) {
    if (model_ready(self)) return NULL;
#ifdef TG_WITH_CUDA
    if (strcmp(self->be->name, "cuda") == 0) return PyLong_FromUnsignedLongLong((unsigned long long)tg_cuda_stream(self->be));
#endif
    Py_RETURN_NONE;
}

static PyObject *Model_get_device(ModelObject *self, void *closure) {
    if (model_ready(self)) return NULL;
    if (strcmp(self->be->name, "cpu") == 0) return PyUnicode_FromString("cpu");
    return PyUnicode_FromFormat("%s:%d", self->be->name, self->be->device);
}

static PyMethodDef Model_methods[] = {
    {"required", (PyCFunction)Model_required, METH_NOARGS, "required() -> [(name, shape, loaded)] of checkpoint tensors"},
    {"storage", (PyCFunction)Model_storage, METH_NOARGS, "storage() -> [(name, dtype, bytes)] of checkpoint tensors"},
    {"set_tensor", (PyCFunction)Model_set_tensor, METH_VARARGS, "set_tensor(name, array, src_dtype)"},
    {"finish", (PyCFunction)Model_finish, METH_NOARGS, "finish(): check every tensor arrived"},
    {"vision_features", (PyCFunction)Model_vision_features, METH_VARARGS, "(B,3,S,S) float32 -> (B,Np,Dv)"},
    {"text_tower", (PyCFunction)Model_text_tower, METH_VARARGS, "(B,T) int32 -> (hidden, pooled)"},
    {"fom", (PyCFunction)Model_fom, METH_VARARGS, "(B,Dt) -> (B,Nq,Dv)"},
    {"dp", (PyCFunction)Model_dp, METH_VARARGS, "(B,4Np,Dv), (B,T,Dt)[, text_len] -> (B,L,H)"},
    {"visual_tokens", (PyCFunction)(void (*)(void))Model_visual_tokens, METH_VARARGS | METH_KEYWORDS, "visual tokens"},
    {"logits", (PyCFunction)Model_logits, METH_VARARGS, "logits(sequence, all_positions=True) -> (n, V)"},
    {"spliced_length", (PyCFunction)Model_spliced_length, METH_VARARGS, "length of the spliced, cut sequence"},
    {"visual_token_count", (PyCFunction)Model_visual_token_count, METH_VARARGS, "visual_token_count(use_dp, n_latents)"},
    {"llm_attention", (PyCFunction)Model_llm_attention, METH_VARARGS, "llm_attention(seq, q0, q1, k0, k1)"},
    {"dp_attention", (PyCFunction)Model_dp_attention, METH_VARARGS, "dp_attention(seq) -> (latents, 4Np+latents)"},
    {"generate", (PyCFunction)(void (*)(void))Model_generate, METH_VARARGS | METH_KEYWORDS, "generate(sequences, ...)"},
    {NULL}};

static PyGetSetDef Model_getset[] = {
    {"config", (getter)Model_get_config, NULL, "the model config: every field of config_fields()", NULL},
    {"device", (getter)Model_get_device, NULL, "backend device", NULL},
    {"stream", (getter)Model_get_stream, NULL, "the CUDA stream the model's work is queued on (an int; None on the CPU)", NULL},
    {NULL}};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tgllava._C.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A TG-LLaVA / LLaVA-1.5 model on one backend (use tgllava.load)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
};

/* ------------------------------------------------------------------ for the other binding files (sched.c) */

tg_model *tg_py_model(PyObject *o) {
    if (!PyObject_TypeCheck(o, &ModelType)) {
        PyErr_Format(PyExc_TypeError, "expected a tgllava._C.Model, got %s", Py_TYPE(o)->tp_name);
        return NULL;
    }
    return model_ready((ModelObject *)o) ? NULL : ((ModelObject *)o)->m;
}

int tg_py_model_enter(PyObject *o) { return model_enter((ModelObject *)o); }
int tg_py_model_owned(PyObject *o) { return atomic_load(&((ModelObject *)o)->owner) == PyThread_get_thread_ident(); }
int tg_py_model_lock(PyObject *o) { return model_lock((ModelObject *)o); }
void tg_py_model_unlock(PyObject *o, int rc) { model_unlock((ModelObject *)o, rc); }
PyObject *tg_py_raise_failure(PyObject *fallback) { return raise_failure(fallback); }

int tg_py_parse_sequence(PyObject *model, PyObject *d, tg_sequence *s, PyObject **refs, int *where) {
    return parse_sequence((ModelObject *)model, d, s, refs, where);
}

tg_backend *tg_py_model_backend(PyObject *o) { return tg_py_model(o) ? ((ModelObject *)o)->be : NULL; }

/* ------------------------------------------------------------------ module functions */

static PyObject *py_has_cuda(PyObject *mod, PyObject *noargs) {
#ifdef TG_WITH_CUDA
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *py_gemm_seconds(PyObject *mod, PyObject *args) {
    int reset = 0;
    if (!PyArg_ParseTuple(args, "|p", &reset)) return NULL;
    return PyFloat_FromDouble(tg_cpu_gemm_seconds(reset));
}

static PyObject *py_cpu_kernels(PyObject *mod, PyObject *noargs) { return PyUnicode_FromString(tg_cpu_kernels()); }

/* config_fields() -> [(name, type, meaning, needed)]: the schema of the config dict (config_fields.h) */
static PyObject *py_config_fields(PyObject *mod, PyObject *noargs) {
    PyObject *out = PyList_New(N_CONFIG_FIELDS);
    for (int i = 0; out && i < N_CONFIG_FIELDS; i++) {
        const config_field *f = &CONFIG_FIELDS[i];
        PyObject *row = Py_BuildValue("(ssss)", f->name, f->type, f->meaning, NEED_TEXT[f->need]);
        if (!row) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, row);
    }
    return out;
}

/* check_sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty, max_len=-1) -> None: the
 * sampling rule of generate (ShapeError naming the first bad value; max_len < 0: no upper bound) */
static PyObject *py_check_sampling(PyObject *mod, PyObject *args) {
    long long max_new, top_k, max_len = -1;
    double temp, top_p, rep;
    if (!PyArg_ParseTuple(args, "LddLd|L", &max_new, &temp, &top_p, &top_k, &rep, &max_len)) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) { /* 2**63 and beyond: a bad value */
            PyErr_Clear();
            PyErr_SetString(TgErr_Shape, "max_new_tokens and top_k must fit in 64 bits");
        }
        return NULL;
    }
    if (check_sampling(max_new, temp, top_p, top_k, rep, max_len) < 0) return NULL;
    Py_RETURN_NONE;
}

/* DTYPES, IMAGE_TOKEN, MAX_BATCH, MIN_TEMPERATURE, CPU_EXACT_ROWS: the C core's constants, for Python to use
 * rather than retype */
static int add_constants(PyObject *m) {
    PyObject *dtypes = PyTuple_New(TG_DTYPE_COUNT);
    for (int i = 0; dtypes && i < TG_DTYPE_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(DTYPE_NAMES[i]);
        if (!name) {
            Py_CLEAR(dtypes);
            break;
        }
        PyTuple_SET_ITEM(dtypes, i, name);
    }
    if (!dtypes || PyModule_AddObject(m, "DTYPES", dtypes) < 0) {
        Py_XDECREF(dtypes);
        return -1;
    }
    PyObject *min_temp = PyFloat_FromDouble((double)TG_MIN_TEMPERATURE);
    if (!min_temp || PyModule_AddObject(m, "MIN_TEMPERATURE", min_temp) < 0) {
        Py_XDECREF(min_temp);
        return -1;
    }
    if (PyModule_AddIntConstant(m, "IMAGE_TOKEN", TG_IMAGE_TOKEN) < 0 ||
        PyModule_AddIntConstant(m, "MAX_BATCH", TG_MAX_BATCH) < 0 ||
        PyModule_AddIntConstant(m, "CPU_EXACT_ROWS", TG_CPU_EXACT_ROWS) < 0)
        return -1;
    return 0;
}

static PyMethodDef module_methods[] = {
    {"check_sampling", py_check_sampling, METH_VARARGS,
     "check_sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty, max_len=-1): the sampling rule "
     "of generate; ShapeError naming the first bad value"},
    {"config_fields", py_config_fields, METH_NOARGS,
     "config_fields() -> [(name, 'int' or 'float', meaning, needed)] of the model config, in tg_config order; needed "
     "is 'always', 'has_fom or has_dp', 'has_fom' or 'has_dp' (a field not needed may be left out: it is then 0)"},
    {"cpu_kernels", py_cpu_kernels, METH_NOARGS, "CPU kernels in use: 'avx2' or 'portable' (TGLLAVA_CPU_KERNELS=portable forces it)"},
    {"cpu_gemm_seconds", py_gemm_seconds, METH_VARARGS, "cpu_gemm_seconds(reset=False): time the CPU backend spent in matrix products"},
    {"built_with_cuda", py_has_cuda, METH_NOARGS, "True when the CUDA backend was compiled in"},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "tgllava._C", "tgllava C core", -1, module_methods};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    PyObject *errors = PyImport_ImportModule("tgllava.errors");
    if (!errors) return NULL;
    TgErr_Base = PyObject_GetAttrString(errors, "TgError");
    TgErr_Checkpoint = PyObject_GetAttrString(errors, "CheckpointError");
    TgErr_Shape = PyObject_GetAttrString(errors, "ShapeError");
    TgErr_Device = PyObject_GetAttrString(errors, "DeviceError");
    TgErr_Memory = PyObject_GetAttrString(errors, "OutOfMemoryError");
    Py_DECREF(errors);
    if (!TgErr_Base || !TgErr_Checkpoint || !TgErr_Shape || !TgErr_Device || !TgErr_Memory) return NULL;
    if (PyType_Ready(&ModelType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0 || tg_py_ops_init(m) < 0 || tg_py_sched_init(m) < 0 || tg_py_devbuf_init(m) < 0 ||
        add_constants(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
