/* fail.h -- failures that carry an error code (enum tg_error_code of tg.h).
 *
 * model_fail() (params.c) records a message only; the binding then raises
 * ShapeError, or DeviceError when the backend left a message.  A failure of
 * another kind -- host memory exhausted, generation interrupted -- is
 * reported with model_fail_code(), which also sets the calling thread's
 * tg_error_code(), so the binding raises MemoryError / KeyboardInterrupt.
 */
#ifndef TG_MODEL_FAIL_H
#define TG_MODEL_FAIL_H

#include "tg.h"

/* message as model_fail, plus the calling thread's error code; returns -1 */
int model_fail_code(tg_model *m, int code, const char *fmt, ...);
/* model_fail_code(m, TG_ERR_MEMORY, "out of memory (%s)", what) */
int model_oom(tg_model *m, const char *what);

#endif
