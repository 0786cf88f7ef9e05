/* ops.c -- single ops of any backend, callable from Python, for the op tests and microbenchmarks.
 *
 * _C.op_<name>(device, ...) uploads its NumPy inputs to the backend of
 * `device` ("cpu", "cuda:N"), runs one op of backend.h and returns the
 * result as NumPy.  Backends are created once per device and kept.  The
 * tests compare every op with a NumPy twin (CPU) and with the CPU backend
 * (CUDA); an op a backend lacks raises DeviceError("not supported").
 * Arguments are passed to the backend as they come (ids, head_dim, ...), so
 * that the tests see each backend's own checks.
 *
 * Threads: a backend is not thread-safe (the CUDA backend's plan cache and
 * scratch buffers, the CPU backend's panels have no lock), and the backends
 * here are shared by every caller of a device.  These functions therefore
 * keep the GIL for the whole op: one thread at a time per process.  (A Model
 * owns its backend and serializes its calls on its own lock.)
 */
#include <omp.h>
#include <string.h>

#include "common.h"

#define MAX_DEVICES 9
static struct {
    char name[32];
    tg_backend *be;
} devices[MAX_DEVICES];

static tg_backend *get_backend(const char *device) {
    for (int i = 0; i < MAX_DEVICES; i++)
        if (devices[i].be && strcmp(devices[i].name, device) == 0) return devices[i].be;
    for (int i = 0; i < MAX_DEVICES; i++)
        if (!devices[i].be) {
            tg_backend *be = tg_py_backend(device);
            if (!be) return NULL;
            snprintf(devices[i].name, sizeof devices[i].name, "%s", device);
            devices[i].be = be;
            return be;
        }
    PyErr_SetString(TgErr_Device, "too many devices");
    return NULL;
}

/* a small bag of backend buffers released together */
typedef struct {
    tg_backend *be;
    void *p[12];
    int n;
} bufs;

static void *bput(bufs *b, size_t bytes) {
    void *p = b->be->alloc(b->be, bytes ? bytes : 4);
    if (!p) {
        PyErr_SetString(TgErr_Device, b->be->err);
        return NULL;
    }
    b->p[b->n++] = p;
    return p;
}
static void *bin(bufs *b, PyArrayObject *a) {
    if (!a) return NULL;
    size_t n = (size_t)PyArray_NBYTES(a);
    void *p = bput(b, n);
    if (p && b->be->to_device(b->be, p, PyArray_DATA(a), n)) {
        PyErr_SetString(TgErr_Device, b->be->err);
        return NULL;
    }
    return p;
}
static void bfree(bufs *b) {
    for (int i = 0; i < b->n; i++) b->be->release(b->be, b->p[i]);
    b->n = 0;
}
static PyObject *bout(bufs *b, PyArrayObject *out, const void *src) {
    if (b->be->to_host(b->be, PyArray_DATA(out), src, (size_t)PyArray_NBYTES(out))) {
        PyErr_SetString(TgErr_Device, b->be->err);
        Py_DECREF(out);
        return NULL;
    }
    return (PyObject *)out;
}
static PyObject *op_failed(bufs *b) {
    PyErr_SetString(TgErr_Device, b->be->err[0] ? b->be->err : "op failed");
    return NULL;
}
static PyArrayObject *opt_arr(PyObject *o, int type, int nd, const char *what, int *bad) {
    if (o == Py_None) return NULL;
    PyArrayObject *a = tg_py_array(o, type, nd, what);
    if (!a) *bad = 1;
    return a;
}
#define F32(o, nd, what) tg_py_array(o, NPY_FLOAT32, nd, what)

static PyObject *op_linear(PyObject *mod, PyObject *args) {
    const char *dev;
    PyObject *xo, *wo, *bo, *ro;
    int act, dtype, reps = 1;
    if (!PyArg_ParseTuple(args, "sOOOOii|i", &dev, &xo, &wo, &bo, &ro, &act, &dtype, &reps)) return NULL;
    tg_backend *be = get_backend(dev);
    if (!be) return NULL;
    int bad = 0;
    PyArrayObject *x = F32(xo, 2, "x"), *w = x ? F32(wo, 2, "w") : NULL;
    PyArrayObject *bias = w ? opt_arr(bo, NPY_FLOAT32, 1, "bias", &bad) : NULL, *res = w && !bad ? opt_arr(ro, NPY_FLOAT32, 2, "residual", &bad) : NULL;
    PyObject *result = NULL;
    bufs b = {be};
    tg_weight wt = {0};
    if (!x || !w || bad) goto done;
    int64_t M = PyArray_DIM(x, 0), K = PyArray_DIM(x, 1), N = PyArray_DIM(w, 0);
    if (PyArray_DIM(w, 1) != K || (bias && PyArray_DIM(bias, 0) != N) || (res && (PyArray_DIM(res, 0) != M || PyArray_DIM(res, 1) != N))) {
        PyErr_SetString(TgErr_Shape, "linear: inconsistent shapes");
        goto done;
    }
    if (tg_weight_upload(be, &wt, PyArray_DATA(w), N, K, dtype)) {
        op_failed(&b);
        goto done;
    }
    float *xd = bin(&b, x), *bd = bias ? bin(&b, bias) : NULL, *rd = res ? bin(&b, res) : NULL, *yd = bput(&b, (size_t)(M * N) * 4);
    if (!xd || (bias && !bd) || (res && !rd) || !yd) goto done;
    /* reps > 1: time the op alone (inputs already on the backend), for microbenchmarks */
    double t0 = 0.0, t1 = 0.0;
    int rc = 0;
    be->sync(be);
    t0 = omp_get_wtime();
    for (int r = 0; r < (reps > 0 ? reps : 1) && !rc; r++) rc = be->linear(be, xd, &wt, bd, rd, yd, M, act);
    be->sync(be);
    t1 = omp_get_wtime();
    if (rc) {
        op_failed(&b);
        goto done;
    }
    npy_intp od[2] = {M, N};
    result = bout(&b, (PyArrayObject *)PyArray_SimpleNew(2, od, NPY_FLOAT32), yd);
    if (result && reps > 1) result = Py_BuildValue("(Nd)", result, (t1 - t0) / reps);
done:
    if (wt.data) be->weight_release(be, &wt);
    bfree(&b);
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(bias);
    Py_XDECREF(res);
    return result;
}

static PyObject *op_norm(PyObject *mod, PyObject *args) {
    const char *dev;
    PyObject *xo, *go, *bo;
    float eps;
    int rms;
    if (!PyArg_ParseTuple(args, "sOOOfp", &dev, &xo, &go, &bo, &eps, &rms)) return NULL;
    tg_backend *be = get_backend(dev);
    if (!be) return NULL;
    int bad = 0;
    PyArrayObject *x = F32(xo, 2, "x"), *g = x ? F32(go, 1, "gamma") : NULL, *bt = g ? opt_arr(bo, NPY_FLOAT32, 1, "beta", &bad) : NULL;
    PyObject *result = NULL;
    bufs b = {be};
    if (!x || !g || bad) goto done;
    int64_t R = PyArray_DIM(x, 0), D = PyArray_DIM(x, 1);
    if (PyArray_DIM(g, 0) != D || (bt && PyArray_DIM(bt, 0) != D)) {
        PyErr_SetString(TgErr_Shape, "norm: gamma/beta must match the last dimension");
        goto done;
    }
    float *xd = bin(&b, x), *gd = bin(&b, g), *bd = bt ? bin(&b, bt) : NULL, *yd = bput(&b, (size_t)(R * D) * 4);
    if (!xd || !gd || (bt && !bd) || !yd) goto done;
    int rc = rms ? be->rmsnorm(be, xd, gd, yd, R, D, eps) : be->layernorm(be, xd, gd, bd, yd, R, D, eps);
    if (rc) {
        op_failed(&b);
        goto done;
    }
    result = bout(&b, (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(x), NPY_FLOAT32), yd);
done:
    bfree(&b);
    Py_XDECREF(x);
    Py_XDECREF(g);
    Py_XDECREF(bt);
    return result;
}

/* op_attention(dev, q (B,Tq,Hq*hd), k (B,Tk,Hkv*hd), v, n_heads, n_kv_heads, scale, causal, q_pos, kv_len, key_mask, probs) */
static PyObject *op_attention(PyObject *mod, PyObject *args) {
    const char *dev;
    PyObject *qo, *ko, *vo, *qpo, *klo, *kmo;
    int nh, nkv, causal, want_probs;
    float scale;
    if (!PyArg_ParseTuple(args, "sOOOiifpOOOp", &dev, &qo, &ko, &vo, &nh, &nkv, &scale, &causal, &qpo, &klo, &kmo, &want_probs)) return NULL;
    tg_backend *be = get_backend(dev);
    if (!be) return NULL;
    int bad = 0;
    PyArrayObject *q = F32(qo, 3, "q"), *k = q ? F32(ko, 3, "k") : NULL, *v = k ? F32(vo, 3, "v") : NULL;
    PyArrayObject *qp = v ? opt_arr(qpo, NPY_INT32, 1, "q_pos", &bad) : NULL;
    PyArrayObject *kl = v && !bad ? opt_arr(klo, NPY_INT32, 1, "kv_len", &bad) : NULL;
    PyArrayObject *km = v && !bad ? opt_arr(kmo, NPY_INT32, 2, "key_mask", &bad) : NULL;
    PyObject *result = NULL;
    bufs b = {be};
    if (!q || !k || !v || bad) goto done;
    int B = (int)PyArray_DIM(q, 0), Tq = (int)PyArray_DIM(q, 1), Tk = (int)PyArray_DIM(k, 1);
    if (nh <= 0 || nkv <= 0 || nh % nkv || PyArray_DIM(q, 2) % nh) {
        PyErr_SetString(TgErr_Shape, "attention: bad head counts");
        goto done;
    }
    int hd = (int)(PyArray_DIM(q, 2) / nh);
    if (PyArray_DIM(k, 0) != B || PyArray_DIM(v, 0) != B || PyArray_DIM(k, 2) != (npy_intp)nkv * hd ||
        PyArray_DIM(v, 1) != Tk || PyArray_DIM(v, 2) != (npy_intp)nkv * hd || (qp && PyArray_DIM(qp, 0) != B) ||
        (kl && PyArray_DIM(kl, 0) != B) || (km && (PyArray_DIM(km, 0) != B || PyArray_DIM(km, 1) != Tk))) {
        PyErr_SetString(TgErr_Shape, "attention: inconsistent shapes");
        goto done;
    }
    tg_attention at = {0};
    at.q = bin(&b, q), at.k = bin(&b, k), at.v = bin(&b, v);
    at.out = bput(&b, (size_t)PyArray_NBYTES(q));
    at.q_pos = qp ? bin(&b, qp) : NULL, at.kv_len = kl ? bin(&b, kl) : NULL, at.key_mask = km ? bin(&b, km) : NULL;
    size_t pbytes = (size_t)B * Tq * Tk * 4;
    if (want_probs) {
        at.probs_accum = bput(&b, pbytes);
        if (at.probs_accum) {
            float *z = PyMem_Calloc(pbytes / 4 + 1, 4);
            if (!z || be->to_device(be, at.probs_accum, z, pbytes)) at.probs_accum = NULL;
            PyMem_Free(z);
        }
    }
    if (!at.q || !at.k || !at.v || !at.out || (qp && !at.q_pos) || (kl && !at.kv_len) || (km && !at.key_mask) || (want_probs && !at.probs_accum)) {
        if (!PyErr_Occurred()) op_failed(&b);
        goto done;
    }
    at.q_stride = at.o_stride = (int64_t)nh * hd, at.k_stride = at.v_stride = (int64_t)nkv * hd;
    at.q_bstride = at.o_bstride = (int64_t)Tq * nh * hd, at.k_bstride = at.v_bstride = (int64_t)Tk * nkv * hd;
    at.B = B, at.Tq = Tq, at.Tk = Tk, at.n_heads = nh, at.n_kv_heads = nkv, at.head_dim = hd, at.scale = scale, at.causal = causal;
    int rc = be->attention(be, &at);
    if (rc) {
        op_failed(&b);
        goto done;
    }
    PyObject *o = bout(&b, (PyArrayObject *)PyArray_SimpleNew(3, PyArray_DIMS(q), NPY_FLOAT32), at.out);
    if (o && want_probs) {
        npy_intp pd[3] = {B, Tq, Tk};
        PyObject *p = bout(&b, (PyArrayObject *)PyArray_SimpleNew(3, pd, NPY_FLOAT32), at.probs_accum);
        result = p ? Py_BuildValue("(NN)", o, p) : NULL;
        if (!p) Py_DECREF(o);
    } else {
        result = o;
    }
done:
    bfree(&b);
    Py_XDECREF(q);
    Py_XDECREF(k);
    Py_XDECREF(v);
    Py_XDECREF(qp);
    Py_XDECREF(kl);
    Py_XDECREF(km);
    return result;
}

/* elementwise family: op_elementwise(dev, name, x, extra...) */
static PyObject *op_elementwise(PyObject *mod, PyObject *args) {
    const char *dev, *name;
    PyObject *xo, *yo = Py_None;
    int iarg = 0;
    float farg = 0.0f;
    if (!PyArg_ParseTuple(args, "ssO|Oif", &dev, &name, &xo, &yo, &iarg, &farg)) return NULL;
    tg_backend *be = get_backend(dev);
    if (!be) return NULL;
    bufs b = {be};
    PyObject *result = NULL;
    PyArrayObject *x = NULL, *y = NULL, *out = NULL;
    int rc = -1;
    if (strcmp(name, "activation") == 0) { /* x any shape float32, iarg = act */
        if (!(x = F32(xo, -1, "x"))) goto done;
        float *xd = bin(&b, x);
        if (!xd) goto done;
        rc = be->activation(be, xd, PyArray_SIZE(x), iarg);
        out = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32);
        if (!rc && out) result = bout(&b, out, xd);
    } else if (strcmp(name, "silu_mul") == 0) { /* x (R, 2F) */
        if (!(x = F32(xo, 2, "gu"))) goto done;
        int64_t R = PyArray_DIM(x, 0), F = PyArray_DIM(x, 1) / 2;
        float *xd = bin(&b, x), *od = bput(&b, (size_t)(R * F) * 4);
        if (!xd || !od) goto done;
        rc = be->silu_mul(be, xd, od, R, F);
        npy_intp dd[2] = {R, F};
        out = (PyArrayObject *)PyArray_SimpleNew(2, dd, NPY_FLOAT32);
        if (!rc && out) result = bout(&b, out, od);
    } else if (strcmp(name, "add_bcast") == 0) { /* y (O, N) += x (N) */
        if (!(x = F32(xo, 2, "y")) || !(y = F32(yo, 1, "x"))) goto done;
        if (PyArray_DIM(y, 0) != PyArray_DIM(x, 1)) {
            PyErr_SetString(TgErr_Shape, "add_bcast: sizes differ");
            goto done;
        }
        float *xd = bin(&b, x), *yd = bin(&b, y);
        if (!xd || !yd) goto done;
        rc = be->add_bcast(be, xd, yd, PyArray_DIM(x, 0), PyArray_DIM(x, 1));
        out = (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(x), NPY_FLOAT32);
        if (!rc && out) result = bout(&b, out, xd);
    } else if (strcmp(name, "im2col") == 0) { /* x (B,C,S,S), iarg = P */
        if (!(x = F32(xo, 4, "pixels"))) goto done;
        int B = (int)PyArray_DIM(x, 0), C = (int)PyArray_DIM(x, 1), S = (int)PyArray_DIM(x, 2), P = iarg;
        if (P <= 0 || S % P || PyArray_DIM(x, 3) != S) {
            PyErr_SetString(TgErr_Shape, "im2col: need square images with a side divisible by the patch");
            goto done;
        }
        int64_t rows = (int64_t)B * (S / P) * (S / P), cols = (int64_t)C * P * P;
        float *xd = bin(&b, x), *od = bput(&b, (size_t)(rows * cols) * 4);
        if (!xd || !od) goto done;
        rc = be->im2col(be, xd, od, B, C, S, P);
        npy_intp dd[2] = {rows, cols};
        out = (PyArrayObject *)PyArray_SimpleNew(2, dd, NPY_FLOAT32);
        if (!rc && out) result = bout(&b, out, od);
    } else if (strcmp(name, "upscale_tiles") == 0) {
        if (!(x = F32(xo, 4, "pixels"))) goto done;
        int B = (int)PyArray_DIM(x, 0), C = (int)PyArray_DIM(x, 1), S = (int)PyArray_DIM(x, 2);
        npy_intp dd[5] = {B, 4, C, S, S};
        float *xd = bin(&b, x), *od = bput(&b, (size_t)B * 4 * C * S * S * 4);
        if (!xd || !od) goto done;
        rc = be->upscale_tiles(be, xd, od, B, C, S);
        out = (PyArrayObject *)PyArray_SimpleNew(5, dd, NPY_FLOAT32);
        if (!rc && out) result = bout(&b, out, od);
    } else if (strcmp(name, "rope") == 0) { /* x (R, stride), y = pos int32 (R), iarg = n_heads, farg = theta; head_dim = stride / n_heads */
        if (!(x = F32(xo, 2, "x")) || !(y = tg_py_array(yo, NPY_INT32, 1, "pos"))) goto done;
        int64_t R = PyArray_DIM(x, 0), W = PyArray_DIM(x, 1);
        if (iarg <= 0 || W % iarg || PyArray_DIM(y, 0) != R) {
            PyErr_SetString(TgErr_Shape, "rope: bad shapes");
            goto done;
        }
        float *xd = bin(&b, x), *pd = bin(&b, y);
        if (!xd || !pd) goto done;
        rc = be->rope(be, xd, R, W, iarg, (int)(W / iarg), (const int32_t *)pd, farg);
        out = (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(x), NPY_FLOAT32);
        if (!rc && out) result = bout(&b, out, xd);
    } else if (strcmp(name, "argmax") == 0) {
        if (!(x = F32(xo, 2, "x"))) goto done;
        int64_t R = PyArray_DIM(x, 0);
        float *xd = bin(&b, x), *od = bput(&b, (size_t)R * 4);
        if (!xd || !od) goto done;
        rc = be->argmax(be, xd, R, PyArray_DIM(x, 1), (int32_t *)od);
        npy_intp dd[1] = {R};
        out = (PyArrayObject *)PyArray_SimpleNew(1, dd, NPY_INT32);
        if (!rc && out) result = bout(&b, out, od);
    } else if (strcmp(name, "embedding") == 0) { /* x table (V, D), y ids int32 (n), iarg = dtype */
        if (!(x = F32(xo, 2, "table")) || !(y = tg_py_array(yo, NPY_INT32, 1, "ids"))) goto done;
        int64_t V = PyArray_DIM(x, 0), D = PyArray_DIM(x, 1), n = PyArray_DIM(y, 0);
        tg_weight t = {0};
        if (tg_weight_upload(be, &t, PyArray_DATA(x), V, D, iarg)) {
            op_failed(&b);
            goto done;
        }
        float *idd = bin(&b, y), *od = bput(&b, (size_t)(n * D) * 4);
        rc = (idd && od) ? be->embedding(be, &t, (const int32_t *)idd, od, n) : -1;
        npy_intp dd[2] = {n, D};
        out = (PyArrayObject *)PyArray_SimpleNew(2, dd, NPY_FLOAT32);
        if (!rc && out) result = bout(&b, out, od);
        be->weight_release(be, &t);
    } else if (strcmp(name, "gather_rows") == 0 || strcmp(name, "scatter_rows") == 0) {
        /* gather: x src (R, D), y idx int32 (n) -> (n, D).  scatter: x src (n, D), y idx int32 (n),
         * iarg = R rows of the zeroed destination -> (R, D).  Indices must be in range (and distinct for a
         * scatter): the backends do not check them, so they are checked here. */
        const int gather = name[0] == 'g';
        if (!(x = F32(xo, 2, "src")) || !(y = tg_py_array(yo, NPY_INT32, 1, "idx"))) goto done;
        int64_t D = PyArray_DIM(x, 1), n = PyArray_DIM(y, 0), R = gather ? PyArray_DIM(x, 0) : iarg;
        const int32_t *idx = PyArray_DATA(y);
        if (!gather && PyArray_DIM(x, 0) != n) {
            PyErr_SetString(TgErr_Shape, "scatter_rows: src must have one row per index");
            goto done;
        }
        for (int64_t i = 0; i < n; i++)
            if (idx[i] < 0 || idx[i] >= R) {
                PyErr_Format(TgErr_Shape, "%s: index %d outside [0, %lld)", name, idx[i], (long long)R);
                goto done;
            }
        npy_intp dd[2] = {gather ? n : R, D};
        out = (PyArrayObject *)PyArray_ZEROS(2, dd, NPY_FLOAT32, 0);
        float *xd = bin(&b, x), *idd = xd ? bin(&b, y) : NULL, *od = idd && out ? bin(&b, out) : NULL;
        if (od) rc = gather ? be->gather_rows(be, xd, (const int32_t *)idd, od, n, D)
                            : be->scatter_rows(be, xd, (const int32_t *)idd, od, n, D);
        if (!rc) result = bout(&b, out, od);
    } else {
        PyErr_Format(TgErr_Shape, "unknown op %s", name);
        goto done;
    }
    if (rc && !PyErr_Occurred()) op_failed(&b);
    if (rc || !result) Py_XDECREF(out);
    if (rc) result = NULL;
done:
    bfree(&b);
    Py_XDECREF(x);
    Py_XDECREF(y);
    return result;
}

static PyMethodDef ops_methods[] = {
    {"op_linear", op_linear, METH_VARARGS, "op_linear(device, x, w, bias, residual, act, dtype)"},
    {"op_norm", op_norm, METH_VARARGS, "op_norm(device, x, gamma, beta, eps, rms)"},
    {"op_attention", op_attention, METH_VARARGS, "op_attention(device, q, k, v, n_heads, n_kv_heads, scale, causal, q_pos, kv_len, key_mask, probs)"},
    {"op_elementwise", op_elementwise, METH_VARARGS,
     "op_elementwise(device, name, x, y=None, iarg=0, farg=0); name: activation, silu_mul, add_bcast, im2col, "
     "upscale_tiles, rope, argmax, embedding, gather_rows, scatter_rows"},
    {NULL}};

int tg_py_ops_init(PyObject *module) {
    for (PyMethodDef *d = ops_methods; d->ml_name; d++) {
        PyObject *f = PyCFunction_New(d, NULL);
        if (!f || PyModule_AddObject(module, d->ml_name, f) < 0) {
            Py_XDECREF(f);
            return -1;
        }
    }
    return 0;
}
