/* backend.cu -- the CUDA backend object: creation, memory, weights, the table.
 *
 * tg_cuda_backend_create selects the device, creates one non-blocking stream,
 * the cuBLAS/cuBLASLt handles and a 32 MiB cuBLASLt workspace, and fills the
 * op table of backend.h with the cuda_<op> entries of the family files
 * (gemm.cu, norm.cu, attention.cu, elementwise.cu).
 *
 * Memory: alloc/release are cudaMalloc/cudaFree (allocations are rare: weights,
 * the KV cache, the per-forward arena).  to_device and copy are asynchronous
 * on the stream; to_device waits for its copy (the caller may free or reuse
 * the host buffer as soon as it returns); to_host synchronizes.  Every entry
 * first makes be->device current on the calling thread (tg_cuda_use).
 *
 * Memory of other libraries (CuPy, PyTorch; backend.h): tg_cuda_pointer_device
 * asks CUDA which device a pointer is on, tg_cuda_wait_stream orders the
 * backend's stream after the work queued on another library's stream (an
 * event, no host wait).
 *
 * Weights: weight_alloc + weight_write take host float32 a slice of rows at a
 * time and cast it to the storage dtype on the GPU (round-to-nearest-even),
 * through a ring of two 16 MiB pinned staging buffers so that host copies and
 * transfers overlap; a 13 GB model never needs a float32 copy on the host.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

/* ---- errors ------------------------------------------------------------- */

void tg_cuda_set_err(tg_backend *be, const char *fmt, ...) {
    static const char prefix[] = "cuda backend: ";
    memcpy(be->err, prefix, sizeof prefix); /* includes the terminating NUL */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->err + sizeof prefix - 1, sizeof be->err - (sizeof prefix - 1), fmt, ap);
    va_end(ap);
}

void tg_cuda_fail(tg_backend *be, const char *file, int line, const char *stmt, cudaError_t e) {
    (void)cudaGetLastError();
    /* a sticky error (illegal address, launch failure, ...) cannot be cleared: any call fails again */
    const bool lost = cudaFree(NULL) != cudaSuccess;
    (void)cudaGetLastError();
    tg_cuda_set_err(be, "%s:%d: %s: %s%s", file, line, stmt, cudaGetErrorString(e),
                    lost ? " (the CUDA context is lost for good: every later CUDA call in this process fails; "
                           "restart the process)" : "");
}

const char *tg_cublas_status_str(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED (out of memory)";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
    }
}

int tg_cuda_grow(tg_backend *be, void **buf, size_t *cap, size_t bytes) {
    if (*cap >= bytes && *buf) return 0;
    size_t want = bytes + bytes / 2;
    if (want < 1 << 20) want = 1 << 20;
    tg_cuda_impl *im = tg_impl(be);
    if (*buf) {
        /* kernels queued earlier may still read the old buffer */
        CUDA_CHECK(be, cudaStreamSynchronize(im->stream));
        /* forget the old buffer before looking at cudaFree's status: a failed
         * free must not leave a pointer that the next call (or destroy) frees
         * again, nor its error in cudaGetLastError for the next launch check */
        void *old = *buf;
        const size_t old_cap = *cap;
        *buf = NULL;
        *cap = 0;
        cudaError_t fe = cudaFree(old);
        if (fe != cudaSuccess) {
            (void)cudaGetLastError();
            tg_cuda_set_err(be, "cudaFree of a %zu-byte scratch buffer: %s", old_cap, cudaGetErrorString(fe));
            return -1;
        }
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, want);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky-free OOM error */
        tg_cuda_set_err(be, "out of memory allocating %zu bytes of scratch: %s", want, cudaGetErrorString(e));
        return -1;
    }
    *buf = p;
    *cap = want;
    return 0;
}

/* ---- memory ------------------------------------------------------------- */

static void *cuda_alloc(tg_backend *be, size_t bytes) {
    if (tg_cuda_use(be)) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
        tg_cuda_set_err(be, "out of memory allocating %zu bytes on device %d (%zu of %zu bytes free): %s", bytes,
                        be->device, free_b, total_b, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void cuda_release(tg_backend *be, void *p) {
    if (!p) return;
    if (tg_cuda_use(be)) return;
    cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) {
        /* release returns nothing: clear the error so that the next op's
         * launch check (cudaGetLastError) does not report it as its own */
        (void)cudaGetLastError();
        tg_cuda_set_err(be, "cudaFree: %s", cudaGetErrorString(e));
    }
}

static int cuda_to_device(tg_backend *be, void *dst, const void *host_src, size_t bytes) {
    TG_CUDA_USE(be);
    if (!bytes) return 0;
    tg_cuda_impl *im = tg_impl(be);
    CUDA_CHECK(be, cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, im->stream));
    /* The model uploads from stack and heap buffers that it frees or reuses as
     * soon as this returns (positions, masks, ids, zeroed probability maps,
     * parameter stashes).  For the Async copy CUDA only says a pageable source
     * "might be" staged synchronously, and a pinned one is read later by the
     * DMA engine, so wait for the copy whatever the source memory is.  The
     * uploads are few per forward / decode step, so the waits are cheap. */
    CUDA_CHECK(be, cudaStreamSynchronize(im->stream));
    return 0;
}

static int cuda_to_host(tg_backend *be, void *host_dst, const void *src, size_t bytes) {
    TG_CUDA_USE(be);
    if (!bytes) return 0;
    tg_cuda_impl *im = tg_impl(be);
    CUDA_CHECK(be, cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, im->stream));
    CUDA_CHECK(be, cudaStreamSynchronize(im->stream));
    return 0;
}

static int cuda_copy(tg_backend *be, void *dst, const void *src, size_t bytes) {
    TG_CUDA_USE(be);
    if (!bytes || dst == src) return 0;
    CUDA_CHECK(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, tg_impl(be)->stream));
    return 0;
}

static int cuda_sync(tg_backend *be) {
    TG_CUDA_USE(be);
    CUDA_CHECK(be, cudaStreamSynchronize(tg_impl(be)->stream));
    return 0;
}

/* ---- memory of other libraries (the binding's device arrays, backend.h) -- */

int tg_cuda_pointer_device(tg_backend *be, const void *p) {
    cudaPointerAttributes a;
    cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        tg_cuda_set_err(be, "cudaPointerGetAttributes: %s", cudaGetErrorString(e));
        return -2;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ? a.device : -1;
}

uintptr_t tg_cuda_stream(tg_backend *be) { return (uintptr_t)tg_impl(be)->stream; }

int tg_cuda_wait_stream(tg_backend *be, uintptr_t stream) {
    TG_CUDA_USE(be);
    tg_cuda_impl *im = tg_impl(be);
    cudaStream_t s = stream == 1 ? cudaStreamLegacy : stream == 2 ? cudaStreamPerThread : (cudaStream_t)stream;
    if (s == im->stream) return 0;
    cudaEvent_t ev;
    CUDA_CHECK(be, cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    cudaError_t e = cudaEventRecord(ev, s);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(im->stream, ev, 0);
    (void)cudaEventDestroy(ev); /* released once the wait has happened */
    CUDA_CHECK(be, e);
    return 0;
}

/* ---- weights ------------------------------------------------------------ */

static size_t cuda_row_bytes(tg_backend *be, int dtype, int64_t cols) {
    (void)be;
    return dtype == TG_F32 ? (size_t)cols * 4 : (dtype == TG_F16 || dtype == TG_BF16) ? (size_t)cols * 2 : 0;
}

/* products of up to 16 rows give every row its bits alone (gemm.cu's small-M path); cuBLASLt above */
static int cuda_exact_rows(tg_backend *be, int dtype) {
    (void)be, (void)dtype;
    return 16;
}

static int cuda_weight_alloc(tg_backend *be, tg_weight *w, int64_t rows, int64_t cols, int dtype) {
    TG_CUDA_USE(be);
    w->data = NULL;
    if (dtype != TG_F32 && dtype != TG_F16 && dtype != TG_BF16) {
        tg_cuda_set_err(be, "weight_alloc: dtype %d is not stored on the GPU (float32, float16 or bfloat16; "
                        "int8/int4 are CPU formats)", dtype);
        return -1;
    }
    if (rows < 0 || cols <= 0) {
        tg_cuda_set_err(be, "weight_alloc: bad shape (%lld, %lld)", (long long)rows, (long long)cols);
        return -1;
    }
    void *data = cuda_alloc(be, (size_t)(rows * cols) * tg_dtype_size(dtype));
    if (!data) return -1;
    w->data = data;
    w->dtype = dtype;
    w->rows = rows;
    w->cols = cols;
    return 0;
}

static int stage_init(tg_backend *be) {
    tg_cuda_impl *im = tg_impl(be);
    for (int i = 0; i < TG_STAGE_SLOTS; i++) { /* what a failed earlier try made is kept */
        if (!im->pin[i]) CUDA_CHECK(be, cudaHostAlloc((void **)&im->pin[i], TG_STAGE_FLOATS * 4, cudaHostAllocDefault));
        if (!im->dstage[i]) CUDA_CHECK(be, cudaMalloc((void **)&im->dstage[i], TG_STAGE_FLOATS * 4));
        if (!im->staged[i]) CUDA_CHECK(be, cudaEventCreateWithFlags(&im->staged[i], cudaEventDisableTiming));
    }
    return 0;
}

/* rows [row0, row0 + n) from host float32, in chunks through the pinned staging ring: the host copies
 * chunk c into a free pinned slot while the copy engine moves chunk c-1 (and the cast kernel turns it
 * into f16/bf16, round to nearest even).  The ring runs on across calls (the loader writes ~1 MiB
 * slices), so it returns once `host` has been copied into pinned memory (the caller may free it); a
 * failure of the queued copies shows at a later call or at be->sync (tg_model_finish syncs).  float16
 * values beyond +-65504 are refused, as on the CPU. */
static int cuda_weight_write(tg_backend *be, tg_weight *w, int64_t row0, int64_t n, const float *host) {
    TG_CUDA_USE(be);
    tg_cuda_impl *im = tg_impl(be);
    if (!w->data || row0 < 0 || n < 0 || row0 + n > w->rows) {
        tg_cuda_set_err(be, "weight_write: rows out of range");
        return -1;
    }
    const int64_t len = n * w->cols;
    if (len == 0) return 0;
    if (w->dtype == TG_F16) {
        int64_t bad = 0;
        for (int64_t i = 0; i < len; i++) bad += fabsf(host[i]) > 65504.0f;
        if (bad) {
            tg_cuda_set_err(be, "weight_write: values beyond the float16 range (+-65504): use bfloat16");
            return -1;
        }
    }
    if (stage_init(be)) return -1;
    const size_t esz = tg_dtype_size(w->dtype);
    char *dst = (char *)w->data + (size_t)(row0 * w->cols) * esz;
    for (int64_t off = 0; off < len; off += (int64_t)TG_STAGE_FLOATS) {
        const int64_t cn = len - off < (int64_t)TG_STAGE_FLOATS ? len - off : (int64_t)TG_STAGE_FLOATS;
        const int i = im->stage_next;
        im->stage_next = (i + 1) % TG_STAGE_SLOTS;
        CUDA_CHECK(be, cudaEventSynchronize(im->staged[i])); /* slot i's previous chunk has left it */
        memcpy(im->pin[i], host + off, (size_t)cn * 4);
        if (w->dtype == TG_F32) {
            CUDA_CHECK(be, cudaMemcpyAsync(dst + (size_t)off * 4, im->pin[i], (size_t)cn * 4, cudaMemcpyHostToDevice,
                                           im->stream));
        } else {
            CUDA_CHECK(be, cudaMemcpyAsync(im->dstage[i], im->pin[i], (size_t)cn * 4, cudaMemcpyHostToDevice, im->stream));
            CUDA_CHECK(be, tg_launch_cast_f32(im->dstage[i], dst + (size_t)off * esz, w->dtype, cn, im->stream));
        }
        CUDA_CHECK(be, cudaEventRecord(im->staged[i], im->stream));
    }
    return 0;
}

static void cuda_weight_release(tg_backend *be, tg_weight *w) {
    if (!w) return;
    cuda_release(be, w->data);
    w->data = NULL;
}

/* ---- lifetime ----------------------------------------------------------- */

static void cuda_destroy(tg_backend *be) {
    if (!be) return;
    tg_cuda_impl *im = tg_impl(be);
    if (im) {
        (void)cudaSetDevice(be->device);
        if (im->stream) (void)cudaStreamSynchronize(im->stream);
        tg_lt_plans_free(im);
        tg_rope_tables_free(im);
        if (im->workspace) (void)cudaFree(im->workspace);
        if (im->cast_buf) (void)cudaFree(im->cast_buf);
        if (im->gemm_buf) (void)cudaFree(im->gemm_buf);
        if (im->attn_buf) (void)cudaFree(im->attn_buf);
        if (im->flag) (void)cudaFree(im->flag);
        for (int i = 0; i < TG_STAGE_SLOTS; i++) {
            if (im->pin[i]) (void)cudaFreeHost(im->pin[i]);
            if (im->dstage[i]) (void)cudaFree(im->dstage[i]);
            if (im->staged[i]) (void)cudaEventDestroy(im->staged[i]);
        }
        if (im->lt) (void)cublasLtDestroy(im->lt);
        if (im->cublas) (void)cublasDestroy(im->cublas);
        if (im->stream) (void)cudaStreamDestroy(im->stream);
        (void)cudaGetLastError();
        free(im);
    }
    free(be);
}

extern "C" tg_backend *tg_cuda_backend_create(int device, char *err, size_t errlen) {
    tg_backend *be = NULL;
    tg_cuda_impl *im = NULL;
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        if (err && errlen) snprintf(err, errlen, "no CUDA device: %s", cudaGetErrorString(e));
        return NULL;
    }
    if (ndev <= 0) {
        if (err && errlen) snprintf(err, errlen, "no CUDA device: no CUDA-capable device is detected");
        return NULL;
    }
    if (device < 0 || device >= ndev) {
        if (err && errlen)
            snprintf(err, errlen, "no CUDA device: ordinal %d is out of range (%d device%s present)", device, ndev,
                     ndev == 1 ? "" : "s");
        return NULL;
    }
    e = cudaSetDevice(device);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        if (err && errlen) snprintf(err, errlen, "no CUDA device: %s", cudaGetErrorString(e));
        return NULL;
    }

    be = (tg_backend *)calloc(1, sizeof *be);
    im = (tg_cuda_impl *)calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        if (err && errlen) snprintf(err, errlen, "cuda backend: out of host memory");
        return NULL;
    }
    be->name = "cuda";
    be->device = device;
    be->impl = im;

    {
        int v = 0;
        CUDA_TRY(be, cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
        im->sm_count = v;
        CUDA_TRY(be, cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
        im->smem_optin = (size_t)v;
    }
    CUDA_TRY(be, cudaStreamCreateWithFlags(&im->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(be, cublasCreate(&im->cublas));
    CUBLAS_TRY(be, cublasSetStream(im->cublas, im->stream));
    /* float32 GEMMs stay float32 (no TF32) for conformance */
    CUBLAS_TRY(be, cublasSetMathMode(im->cublas, CUBLAS_DEFAULT_MATH));
    CUBLAS_TRY(be, cublasLtCreate(&im->lt));
    im->workspace_bytes = (size_t)32 << 20;
    CUDA_TRY(be, cudaMalloc(&im->workspace, im->workspace_bytes));
    CUBLAS_TRY(be, cublasSetWorkspace(im->cublas, im->workspace, im->workspace_bytes));
    CUDA_TRY(be, cudaMalloc((void **)&im->flag, sizeof(int)));

    be->destroy = cuda_destroy;
    be->alloc = cuda_alloc;
    be->release = cuda_release;
    be->to_device = cuda_to_device;
    be->to_host = cuda_to_host;
    be->copy = cuda_copy;
    be->sync = cuda_sync;
    be->weight_alloc = cuda_weight_alloc;
    be->weight_write = cuda_weight_write;
    be->weight_release = cuda_weight_release;
    be->linear = cuda_linear;
    be->layernorm = cuda_layernorm;
    be->rmsnorm = cuda_rmsnorm;
    be->attention = cuda_attention;
    be->activation = cuda_activation;
    be->silu_mul = cuda_silu_mul;
    be->add_bcast = cuda_add_bcast;
    be->embedding = cuda_embedding;
    be->gather_rows = cuda_gather_rows;
    be->scatter_rows = cuda_scatter_rows;
    be->im2col = cuda_im2col;
    be->upscale_tiles = cuda_upscale_tiles;
    be->rope = cuda_rope;
    be->argmax = cuda_argmax;
    be->row_bytes = cuda_row_bytes;
    be->exact_rows = cuda_exact_rows;
    return be;

fail:
    if (err && errlen) snprintf(err, errlen, "%s", be->err);
    if (im->workspace_bytes && !im->workspace) im->workspace_bytes = 0;
    cuda_destroy(be);
    return NULL;
}
