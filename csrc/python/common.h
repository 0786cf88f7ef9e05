/* common.h -- helpers shared by the binding files: argument parsing into
 * checked NumPy arrays or device arrays, exception classes, backend creation by device name. */
#ifndef TG_PY_COMMON_H
#define TG_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL tgllava_ARRAY_API
#include <numpy/arrayobject.h>

#include "backend.h"
#include "tg.h"

extern PyObject *TgErr_Base, *TgErr_Checkpoint, *TgErr_Shape, *TgErr_Device, *TgErr_Memory;

/* A C-contiguous array of `typenum` with `ndim` dims (ndim < 0: any), or NULL with ShapeError set.
 * `what` names the argument in messages.  Returns a new reference: `obj` itself, or a native-byte-order,
 * aligned copy of a byte-swapped or misaligned array. */
PyArrayObject *tg_py_array(PyObject *obj, int typenum, int ndim, const char *what);
/* obj (an int or anything with __index__) as a C int in [lo, hi]: 0, or -1 with TypeError (not an integer) or
 * ShapeError (out of range: never silently cut to 32 bits) naming `what` */
int tg_py_int(PyObject *obj, long long lo, long long hi, const char *what, int *out);
/* eos_ids (None or a sequence of ints in the int32 range) -> *ids (PyMem_Free it; NULL for None), *n; -1 on error */
int tg_py_eos_ids(PyObject *eos, int32_t **ids, int *n);
/* dims check: want[i] < 0 means any */
int tg_py_check_dims(PyArrayObject *a, const npy_intp *want, int ndim, const char *what);
/* create a backend from a device string ("cpu", "cuda", "cuda:1") */
tg_backend *tg_py_backend(const char *device);

int tg_py_ops_init(PyObject *module);

/* module.c's Model for sched.c: the tg_model of a _C.Model (NULL with an exception set), the call
 * protocol of its methods (enter with the GIL; lock and unlock without it, unlock capturing the
 * failure of rc != 0), the exception of a captured failure, and its sequence-dict parser (5 refs; *where as
 * tg_py_same_memory). */
tg_model *tg_py_model(PyObject *o);
int tg_py_model_enter(PyObject *o);
int tg_py_model_owned(PyObject *o); /* this thread holds the model's lock (a callback of one of its calls) */
int tg_py_model_lock(PyObject *o);
void tg_py_model_unlock(PyObject *o, int rc);
PyObject *tg_py_raise_failure(PyObject *fallback);
int tg_py_parse_sequence(PyObject *model, PyObject *d, tg_sequence *s, PyObject **refs, int *where);
int tg_py_sched_init(PyObject *module);
/* the backend of a _C.Model (NULL with an exception set) */
tg_backend *tg_py_model_backend(PyObject *model);

/* devbuf.c: arrays in a model's backend memory (_C.DeviceArray).  An input buffer is a NumPy array
 * (host) or a DeviceArray on the model's device (on_backend); ref is a new reference (NULL: absent). */
#define TG_PY_MAXDIM 8
typedef struct tg_py_buf {
    PyObject *ref;
    void *data;
    int ndim, on_backend;
    npy_intp dims[TG_PY_MAXDIM];
} tg_py_buf;
/* o as a C-contiguous input of `typenum` with `ndim` dims of sizes want (want[i] < 0: any, never empty) */
int tg_py_input(PyObject *model, PyObject *o, int typenum, int ndim, const npy_intp *want, const char *what,
                tg_py_buf *b);
/* the inputs of one call are all host or all backend memory: *where (-1 before the first) records which */
int tg_py_same_memory(const tg_py_buf *b, int *where);
/* a new float32 result: a NumPy array, or a DeviceArray in backend memory (on_backend); *data its memory */
PyObject *tg_py_output(PyObject *model, int on_backend, int ndim, const npy_intp *dims, void **data);
int tg_py_devbuf_init(PyObject *module);
#endif
