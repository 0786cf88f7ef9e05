/* devbuf.c -- tgllava._C.DeviceArray: arrays in a model's backend memory, in and out of the binding.
 *
 * A DeviceArray is C-contiguous memory of one backend (device memory for CUDA, host memory for the
 * CPU backend) with a shape and a NumPy dtype.  It keeps its _C.Model alive and is either
 *   - a result (out="device"): memory from the backend's alloc, released when the last reference goes;
 *   - a view of another library's memory, made by device_view(model, ptr, shape, typenum, base, stream)
 *     from a checked __cuda_array_interface__ (it keeps `base` alive; CUDA says which device the
 *     pointer is on, and another device's memory or host memory is a DeviceError; a producer stream
 *     is waited for on the backend's stream), or by dlpack_view(model, capsule) from a DLPack capsule
 *     (consumed: renamed "used_dltensor", its deleter runs when the view goes; the producer was asked
 *     to order its work before the backend's stream, Model.stream).
 * It exports itself through both protocols: __cuda_array_interface__ (version 3, stream None: the
 * data is complete when a model call returns it) on CUDA, and __dlpack__ / __dlpack_device__ (a
 * legacy "dltensor" capsule holding a reference to the array), so torch.from_dlpack, cupy.asarray and
 * np.from_dlpack (CPU backend) use it without a copy.  numpy() copies it to the host; reshape(shape)
 * is a view.
 * The Model methods read their inputs through tg_py_input (a NumPy array, or a DeviceArray on the
 * model's device) and allocate results through tg_py_output.
 * A result is released with the backend's release (cudaFree) from whichever thread drops it, without
 * the model's lock: cudaFree is safe to call while another thread runs the model.
 */
#include "common.h"

#include <stdint.h>
#include <string.h>

/* DLPack ABI (dlpack.h, the legacy unversioned capsule) */
typedef struct {
    int32_t device_type, device_id;
} DLDevice;
typedef struct {
    uint8_t code, bits;
    uint16_t lanes;
} DLDataType;
typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape, *strides;
    uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;
enum { DL_INT = 0, DL_UINT = 1, DL_FLOAT = 2, DL_BFLOAT = 4, DL_BOOL = 6 };
enum { DL_CPU = 1, DL_CUDA = 2 };

typedef struct {
    PyObject_HEAD
    PyObject *model;     /* the _C.Model whose backend this memory belongs to */
    void *data;
    int owns;            /* a result: data from the backend's alloc */
    PyObject *base;      /* a view: what keeps the memory alive (or NULL) */
    DLManagedTensor *dl; /* a view of a consumed DLPack capsule (or NULL) */
    int ndim, typenum, dev_type, dev_id;
    npy_intp dims[TG_PY_MAXDIM];
} DevArray;

static PyTypeObject DevArrayType;

static int backend_dl_type(const tg_backend *be) { return strcmp(be->name, "cpu") == 0 ? DL_CPU : DL_CUDA; }

static size_t nbytes(const DevArray *a) {
    size_t n = (size_t)PyArray_MultiplyList((npy_intp *)a->dims, a->ndim);
    PyArray_Descr *d = PyArray_DescrFromType(a->typenum);
    size_t item = d ? (size_t)PyDataType_ELSIZE(d) : 0;
    Py_XDECREF(d);
    return n * item;
}

static DevArray *devarray_new(PyObject *model, int typenum, int ndim, const npy_intp *dims) {
    tg_backend *be = tg_py_model_backend(model);
    if (!be) return NULL;
    if (ndim < 0 || ndim > TG_PY_MAXDIM) {
        PyErr_Format(TgErr_Shape, "device arrays have at most %d dimensions, got %d", TG_PY_MAXDIM, ndim);
        return NULL;
    }
    DevArray *a = PyObject_New(DevArray, &DevArrayType);
    if (!a) return NULL;
    Py_INCREF(model);
    a->model = model;
    a->data = NULL;
    a->owns = 0;
    a->base = NULL;
    a->dl = NULL;
    a->ndim = ndim;
    a->typenum = typenum;
    a->dev_type = backend_dl_type(be);
    a->dev_id = be->device;
    for (int i = 0; i < ndim; i++) a->dims[i] = dims[i];
    return a;
}

static void DevArray_dealloc(DevArray *a) {
    if (a->owns && a->data) {
        tg_backend *be = tg_py_model_backend(a->model);
        if (be) be->release(be, a->data);
        else PyErr_Clear();
    }
    if (a->dl && a->dl->deleter) a->dl->deleter(a->dl);
    Py_XDECREF(a->base);
    Py_XDECREF(a->model);
    PyObject_Free(a);
}

/* ------------------------------------------------------------------ the model's lock around a backend call */

/* fn(be, arg) with the GIL released and the model's lock held; DeviceError with the backend's message */
static int on_backend(PyObject *model, int (*fn)(tg_backend *, void *), void *arg) {
    tg_backend *be = tg_py_model_backend(model);
    if (!be || tg_py_model_enter(model)) return -1;
    char msg[512] = {0};
    int rc = -1, locked;
    Py_BEGIN_ALLOW_THREADS
    locked = tg_py_model_lock(model) == 0;
    if (locked) {
        rc = fn(be, arg);
        if (rc) snprintf(msg, sizeof msg, "%s", be->err[0] ? be->err : "backend failure");
        be->err[0] = 0;
        tg_py_model_unlock(model, 0);
    }
    Py_END_ALLOW_THREADS
    if (!locked) return -1; /* Ctrl-C while waiting: its exception is set */
    if (rc) PyErr_SetString(TgErr_Device, msg);
    return rc ? -1 : 0;
}

typedef struct {
    void *host;
    const void *src;
    size_t bytes;
} copy_args;

static int copy_to_host(tg_backend *be, void *arg) {
    copy_args *c = arg;
    return be->to_host(be, c->host, c->src, c->bytes);
}

#ifdef TG_WITH_CUDA
static int wait_stream(tg_backend *be, void *arg) { return tg_cuda_wait_stream(be, *(uintptr_t *)arg); }
#endif

/* ------------------------------------------------------------------ views of other libraries' memory */

static const char *dl_name(int type) { return type == DL_CPU ? "cpu" : type == DL_CUDA ? "cuda" : "device type"; }

/* device_view(model, ptr, shape, typenum, base, stream): a view of C-contiguous memory the caller checked */
static PyObject *py_device_view(PyObject *mod, PyObject *args) {
    PyObject *model, *shape, *base, *stream;
    unsigned long long ptr;
    int typenum;
    if (!PyArg_ParseTuple(args, "OKO!iOO", &model, &ptr, &PyTuple_Type, &shape, &typenum, &base, &stream)) return NULL;
    tg_backend *be = tg_py_model_backend(model);
    if (!be) return NULL;
    PyArray_Descr *d = PyArray_DescrFromType(typenum);
    if (!d) return NULL;
    Py_DECREF(d);
    int ndim = (int)PyTuple_GET_SIZE(shape);
    npy_intp dims[TG_PY_MAXDIM];
    for (int i = 0; i < ndim && i < TG_PY_MAXDIM; i++) {
        dims[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
        if (dims[i] < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(TgErr_Shape, "negative dimension");
            return NULL;
        }
    }
#ifdef TG_WITH_CUDA
    if (backend_dl_type(be) == DL_CUDA) {
        int dev = ptr ? tg_cuda_pointer_device(be, (const void *)(uintptr_t)ptr) : be->device;
        if (dev == -2) {
            PyErr_SetString(TgErr_Device, be->err);
            be->err[0] = 0;
            return NULL;
        }
        if (dev != be->device) {
            if (dev < 0)
                PyErr_Format(TgErr_Device, "the pointer 0x%llx of __cuda_array_interface__ is not device memory "
                             "(CUDA knows it as host memory); the model runs on cuda:%d", ptr, be->device);
            else
                PyErr_Format(TgErr_Device, "the array is on cuda:%d but the model runs on cuda:%d: move it first "
                             "(tensor.to('cuda:%d'))", dev, be->device, be->device);
            return NULL;
        }
        if (stream != Py_None) {
            uintptr_t s = (uintptr_t)PyLong_AsUnsignedLongLong(stream);
            if (PyErr_Occurred()) return NULL;
            if (on_backend(model, wait_stream, &s)) return NULL;
        }
    }
#else
    (void)stream;
#endif
    DevArray *a = devarray_new(model, typenum, ndim, dims);
    if (!a) return NULL;
    a->data = (void *)(uintptr_t)ptr;
    Py_INCREF(base);
    a->base = base;
    return (PyObject *)a;
}

static int dl_typenum(DLDataType t) {
    if (t.lanes != 1) return -1;
    switch (t.code) {
    case DL_INT: return t.bits == 8 ? NPY_INT8 : t.bits == 16 ? NPY_INT16 : t.bits == 32 ? NPY_INT32 : t.bits == 64 ? NPY_INT64 : -1;
    case DL_UINT: return t.bits == 8 ? NPY_UINT8 : t.bits == 16 ? NPY_UINT16 : t.bits == 32 ? NPY_UINT32 : t.bits == 64 ? NPY_UINT64 : -1;
    case DL_FLOAT: return t.bits == 16 ? NPY_FLOAT16 : t.bits == 32 ? NPY_FLOAT32 : t.bits == 64 ? NPY_FLOAT64 : -1;
    case DL_BOOL: return t.bits == 8 ? NPY_BOOL : -1;
    default: return -1;
    }
}

/* dlpack_view(model, capsule, what): a view of a "dltensor" capsule on the model's device, consumed */
static PyObject *py_dlpack_view(PyObject *mod, PyObject *args) {
    PyObject *model, *cap;
    const char *what;
    if (!PyArg_ParseTuple(args, "OOs", &model, &cap, &what)) return NULL;
    tg_backend *be = tg_py_model_backend(model);
    if (!be) return NULL;
    if (!PyCapsule_IsValid(cap, "dltensor")) {
        PyErr_Format(TgErr_Shape, "%s: __dlpack__ did not return an unused \"dltensor\" capsule", what);
        return NULL;
    }
    DLManagedTensor *m = PyCapsule_GetPointer(cap, "dltensor");
    const DLTensor *t = &m->dl_tensor;
    if (t->device.device_type != backend_dl_type(be) || t->device.device_id != be->device) {
        PyErr_Format(TgErr_Device, "%s: the DLPack tensor is on %s:%d but the model runs on %s:%d", what,
                     dl_name(t->device.device_type), (int)t->device.device_id, be->name, be->device);
        return NULL;
    }
    int typenum = dl_typenum(t->dtype);
    if (typenum < 0) {
        PyErr_Format(TgErr_Shape, "%s: unsupported DLPack dtype (code %d, %d bits, %d lanes)%s", what, t->dtype.code,
                     t->dtype.bits, t->dtype.lanes,
                     t->dtype.code == DL_BFLOAT ? ": bfloat16, convert to float32 first (tensor.float())" : "");
        return NULL;
    }
    if (t->ndim < 0 || t->ndim > TG_PY_MAXDIM) {
        PyErr_Format(TgErr_Shape, "%s: a %d-dimensional DLPack tensor", what, (int)t->ndim);
        return NULL;
    }
    npy_intp dims[TG_PY_MAXDIM];
    int64_t want = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        dims[i] = (npy_intp)t->shape[i];
        if (t->strides && t->shape[i] != 1 && t->strides[i] != want) {
            PyErr_Format(TgErr_Shape, "%s: the DLPack tensor is not C-contiguous; make it contiguous first "
                         "(tensor.contiguous(), cupy.ascontiguousarray(x))", what);
            return NULL;
        }
        want *= t->shape[i];
    }
    DevArray *a = devarray_new(model, typenum, t->ndim, dims);
    if (!a) return NULL;
    a->data = (char *)t->data + t->byte_offset;
    if (PyCapsule_SetName(cap, "used_dltensor")) {
        Py_DECREF(a);
        return NULL;
    }
    a->dl = m;
    return (PyObject *)a;
}

/* ------------------------------------------------------------------ the protocols, out */

typedef struct {
    DLManagedTensor m;
    int64_t shape[TG_PY_MAXDIM], strides[TG_PY_MAXDIM];
} exported;

static void export_deleter(DLManagedTensor *m) {
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF((PyObject *)m->manager_ctx);
    PyGILState_Release(g);
    PyMem_RawFree(m);
}

static void capsule_destructor(PyObject *cap) { /* never consumed: the deleter is ours to call */
    if (PyCapsule_IsValid(cap, "dltensor")) {
        DLManagedTensor *m = PyCapsule_GetPointer(cap, "dltensor");
        if (m->deleter) m->deleter(m);
    }
}

static DLDataType dl_dtype(int typenum) {
    PyArray_Descr *d = PyArray_DescrFromType(typenum);
    DLDataType t = {DL_FLOAT, 32, 1};
    if (d) {
        t.bits = (uint8_t)(8 * PyDataType_ELSIZE(d));
        t.code = d->kind == 'f' ? DL_FLOAT : d->kind == 'i' ? DL_INT : d->kind == 'u' ? DL_UINT : DL_BOOL;
        Py_DECREF(d);
    }
    return t;
}

static PyObject *DevArray_dlpack(DevArray *a, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *maxv = Py_None, *dev = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OOOO", kwlist, &stream, &maxv, &dev, &copy)) return NULL;
    /* stream: any consumer stream may read at once, the data is complete (nothing is queued on it) */
    if (copy == Py_True) {
        PyErr_SetString(PyExc_BufferError, "DeviceArray.__dlpack__: copy=True is not supported (it exports in place)");
        return NULL;
    }
    if (dev != Py_None) {
        int type = -1, id = -1;
        if (!PyArg_ParseTuple(dev, "ii", &type, &id)) return NULL;
        if (type != a->dev_type || id != a->dev_id) {
            PyErr_Format(PyExc_BufferError, "DeviceArray.__dlpack__: the array is on %s:%d, not on dl_device (%d, %d)",
                         dl_name(a->dev_type), a->dev_id, type, id);
            return NULL;
        }
    }
    exported *e = PyMem_RawCalloc(1, sizeof *e);
    if (!e) return PyErr_NoMemory();
    int64_t stride = 1;
    for (int i = a->ndim - 1; i >= 0; i--) {
        e->shape[i] = a->dims[i];
        e->strides[i] = stride;
        stride *= a->dims[i];
    }
    DLTensor *t = &e->m.dl_tensor;
    t->data = a->data;
    t->device.device_type = a->dev_type;
    t->device.device_id = a->dev_id;
    t->ndim = a->ndim;
    t->dtype = dl_dtype(a->typenum);
    t->shape = e->shape;
    t->strides = e->strides;
    e->m.manager_ctx = a;
    e->m.deleter = export_deleter;
    Py_INCREF(a);
    PyObject *cap = PyCapsule_New(&e->m, "dltensor", capsule_destructor);
    if (!cap) export_deleter(&e->m);
    return cap;
}

static PyObject *DevArray_dlpack_device(DevArray *a, PyObject *noargs) {
    return Py_BuildValue("(ii)", a->dev_type, a->dev_id);
}

static PyObject *DevArray_shape(DevArray *a, void *closure) {
    PyObject *t = PyTuple_New(a->ndim);
    for (int i = 0; t && i < a->ndim; i++) PyTuple_SET_ITEM(t, i, PyLong_FromSsize_t(a->dims[i]));
    return t;
}

static PyObject *DevArray_dtype(DevArray *a, void *closure) { return (PyObject *)PyArray_DescrFromType(a->typenum); }

static PyObject *DevArray_device(DevArray *a, void *closure) {
    if (a->dev_type == DL_CPU) return PyUnicode_FromString("cpu");
    return PyUnicode_FromFormat("%s:%d", dl_name(a->dev_type), a->dev_id);
}

static PyObject *DevArray_cai(DevArray *a, void *closure) {
    if (a->dev_type != DL_CUDA) {
        PyErr_SetString(PyExc_AttributeError, "__cuda_array_interface__: this array is in the CPU backend's memory");
        return NULL;
    }
    PyArray_Descr *d = PyArray_DescrFromType(a->typenum);
    if (!d) return NULL;
    PyObject *typestr = PyUnicode_FromFormat("<%c%d", d->kind, (int)PyDataType_ELSIZE(d));
    Py_DECREF(d);
    return Py_BuildValue("{s:N,s:N,s:(KO),s:i,s:O,s:O}", "shape", DevArray_shape(a, NULL), "typestr", typestr, "data",
                         (unsigned long long)(uintptr_t)a->data, Py_False, "version", 3, "strides", Py_None, "stream",
                         Py_None);
}

static PyObject *DevArray_numpy(DevArray *a, PyObject *noargs) {
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(a->ndim, a->dims, a->typenum);
    if (!out) return NULL;
    copy_args c = {PyArray_DATA(out), a->data, nbytes(a)};
    if (c.bytes && on_backend(a->model, copy_to_host, &c)) {
        Py_DECREF(out);
        return NULL;
    }
    return (PyObject *)out;
}

/* reshape(shape) -> a view of the same memory with another shape of as many elements */
static PyObject *DevArray_reshape(DevArray *a, PyObject *shape) {
    if (!PyTuple_Check(shape) || PyTuple_GET_SIZE(shape) > TG_PY_MAXDIM) {
        PyErr_Format(TgErr_Shape, "reshape takes a tuple of at most %d sizes", TG_PY_MAXDIM);
        return NULL;
    }
    int ndim = (int)PyTuple_GET_SIZE(shape);
    npy_intp dims[TG_PY_MAXDIM], n = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
        if (dims[i] < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(TgErr_Shape, "reshape: negative size");
            return NULL;
        }
        n *= dims[i];
    }
    if (n != PyArray_MultiplyList(a->dims, a->ndim)) {
        PyErr_Format(TgErr_Shape, "cannot reshape a device array of %zd elements to %R",
                     (Py_ssize_t)PyArray_MultiplyList(a->dims, a->ndim), shape);
        return NULL;
    }
    DevArray *v = devarray_new(a->model, a->typenum, ndim, dims);
    if (!v) return NULL;
    v->data = a->data;
    Py_INCREF(a);
    v->base = (PyObject *)a;
    return (PyObject *)v;
}

static PyObject *DevArray_repr(DevArray *a) {
    PyObject *shape = DevArray_shape(a, NULL), *dt = DevArray_dtype(a, NULL), *dev = DevArray_device(a, NULL);
    PyObject *r = shape && dt && dev ? PyUnicode_FromFormat("DeviceArray(shape=%R, dtype=%S, device='%U', %s)", shape, dt,
                                                            dev, a->owns ? "owned" : "view")
                                     : NULL;
    Py_XDECREF(shape);
    Py_XDECREF(dt);
    Py_XDECREF(dev);
    return r;
}

static PyMethodDef DevArray_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))DevArray_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None) -> a \"dltensor\" capsule (no copy)"},
    {"__dlpack_device__", (PyCFunction)DevArray_dlpack_device, METH_NOARGS, "(DLPack device type, device id)"},
    {"numpy", (PyCFunction)DevArray_numpy, METH_NOARGS, "numpy() -> a host copy as a NumPy array"},
    {"reshape", (PyCFunction)DevArray_reshape, METH_O, "reshape(shape) -> a view with another shape (no copy)"},
    {NULL}};

static PyGetSetDef DevArray_getset[] = {
    {"shape", (getter)DevArray_shape, NULL, "shape (tuple)", NULL},
    {"dtype", (getter)DevArray_dtype, NULL, "NumPy dtype", NULL},
    {"device", (getter)DevArray_device, NULL, "'cuda:N' (or 'cpu' for the CPU backend's memory)", NULL},
    {"__cuda_array_interface__", (getter)DevArray_cai, NULL, "CUDA array interface, version 3 (CUDA memory only)", NULL},
    {NULL}};

static PyTypeObject DevArrayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tgllava._C.DeviceArray",
    .tp_basicsize = sizeof(DevArray),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An array in a model's backend memory: a result (out='device') or a view of another library's array",
    .tp_dealloc = (destructor)DevArray_dealloc,
    .tp_repr = (reprfunc)DevArray_repr,
    .tp_methods = DevArray_methods,
    .tp_getset = DevArray_getset,
};

/* ------------------------------------------------------------------ for the Model methods */

int tg_py_input(PyObject *model, PyObject *o, int typenum, int ndim, const npy_intp *want, const char *what,
                tg_py_buf *b) {
    memset(b, 0, sizeof *b);
    if (!PyObject_TypeCheck(o, &DevArrayType)) {
        PyArrayObject *a = tg_py_array(o, typenum, ndim, what);
        if (!a) return -1;
        if (tg_py_check_dims(a, want, ndim, what)) {
            Py_DECREF(a);
            return -1;
        }
        b->ref = (PyObject *)a;
        b->data = PyArray_DATA(a);
        b->ndim = ndim;
        for (int i = 0; i < ndim; i++) b->dims[i] = PyArray_DIM(a, i);
        return 0;
    }
    DevArray *a = (DevArray *)o;
    tg_backend *be = tg_py_model_backend(model);
    if (!be) return -1;
    if (a->dev_type != backend_dl_type(be) || a->dev_id != be->device) {
        PyErr_Format(TgErr_Device, "%s: the device array is on %s:%d but the model runs on %s:%d", what,
                     dl_name(a->dev_type), a->dev_id, be->name, be->device);
        return -1;
    }
    if (a->typenum != typenum) {
        PyArray_Descr *w = PyArray_DescrFromType(typenum), *g = PyArray_DescrFromType(a->typenum);
        PyErr_Format(TgErr_Shape, "%s must have dtype %s, got %s", what, w->typeobj->tp_name, g->typeobj->tp_name);
        Py_DECREF(w);
        Py_DECREF(g);
        return -1;
    }
    if (a->ndim != ndim) {
        PyErr_Format(TgErr_Shape, "%s must have %d dimensions, got %d", what, ndim, a->ndim);
        return -1;
    }
    for (int i = 0; i < ndim; i++)
        if ((want[i] >= 0 && a->dims[i] != want[i]) || a->dims[i] == 0) {
            PyErr_Format(TgErr_Shape, "%s: dimension %d is %zd, expected %s%zd", what, i, (Py_ssize_t)a->dims[i],
                         want[i] >= 0 ? "" : "at least ", (Py_ssize_t)(want[i] >= 0 ? want[i] : 1));
            return -1;
        }
    Py_INCREF(o);
    b->ref = o;
    b->data = a->data;
    b->ndim = ndim;
    for (int i = 0; i < ndim; i++) b->dims[i] = a->dims[i];
    b->on_backend = 1;
    return 0;
}

int tg_py_same_memory(const tg_py_buf *b, int *where) {
    if (!b->ref) return 0;
    if (*where >= 0 && *where != b->on_backend) {
        PyErr_SetString(TgErr_Shape, "the float inputs of one call mix host arrays and device arrays: pass them all "
                                     "in the same memory");
        return -1;
    }
    *where = b->on_backend;
    return 0;
}

PyObject *tg_py_output(PyObject *model, int on_backend, int ndim, const npy_intp *dims, void **data) {
    if (!on_backend) {
        PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(ndim, (npy_intp *)dims, NPY_FLOAT32);
        *data = a ? PyArray_DATA(a) : NULL;
        return (PyObject *)a;
    }
    DevArray *a = devarray_new(model, NPY_FLOAT32, ndim, dims);
    if (!a) return NULL;
    tg_backend *be = tg_py_model_backend(model);
    size_t bytes = nbytes(a);
    a->data = be->alloc(be, bytes ? bytes : 4);
    if (!a->data) {
        PyErr_Format(TgErr_Memory, "device array of %zu bytes: %s", bytes, be->err);
        be->err[0] = 0;
        Py_DECREF(a);
        return NULL;
    }
    a->owns = 1;
    *data = a->data;
    return (PyObject *)a;
}

static PyMethodDef devbuf_functions[] = {
    {"device_view", py_device_view, METH_VARARGS,
     "device_view(model, ptr, shape, typenum, base, stream) -> DeviceArray viewing C-contiguous memory on the "
     "model's device (base kept alive; stream: None, or the producer's stream to wait for)"},
    {"dlpack_view", py_dlpack_view, METH_VARARGS,
     "dlpack_view(model, capsule, what) -> DeviceArray viewing (and consuming) a \"dltensor\" capsule"},
    {NULL}};

int tg_py_devbuf_init(PyObject *module) {
    if (PyType_Ready(&DevArrayType) < 0) return -1;
    Py_INCREF(&DevArrayType);
    if (PyModule_AddObject(module, "DeviceArray", (PyObject *)&DevArrayType) < 0) {
        Py_DECREF(&DevArrayType);
        return -1;
    }
    return PyModule_AddFunctions(module, devbuf_functions);
}
