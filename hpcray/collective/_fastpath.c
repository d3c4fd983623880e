/* The small-call fast path of hpcray.collective's "mpi" backend, in C.
 *
 * A small allreduce or reduce of a call signature seen before is: copy the data into this
 * member's slot, stamp the call number, start the group's persistent allgather and test it
 * a bounded number of times (the caller holds the rank's MPI lock), then check that every
 * member's header equals this one's and reduce the members' data in rank order. In Python
 * those steps cost several microseconds; here well under one.
 *
 * No MPI header is needed: MPI_Start and MPI_Test come as function pointers resolved from
 * the MPI library mpi4py loaded, and the request as the address of mpi4py's handle, so the
 * module works with whichever MPI (and MPI ABI) mpi4py was built for. The status argument
 * is a scratch buffer larger than any MPI_Status, not MPI_STATUS_IGNORE, whose value
 * differs between ABIs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef int (*start_fn)(void *request);
typedef int (*test_fn)(void *request, int *flag, void *status);

enum { SUM = 0, PRODUCT = 1, MIN = 2, MAX = 3, AVG = 4 };
enum { F32 = 0, F64, I8, I16, I32, I64, U8, U16, U32, U64 };

typedef struct {
    PyObject_HEAD
    Py_buffer slot;      /* this member's slot: header, then data */
    Py_buffer gathered;  /* every member's slot, world_size * stride bytes */
    void *request;       /* MPI_Request * of the persistent allgather */
    start_fn start;
    test_fn test;
    Py_ssize_t world_size, stride, header_bytes, seq_at, spins;
} Fast;

static void Fast_dealloc(Fast *self) {
    if (self->slot.obj) PyBuffer_Release(&self->slot);
    if (self->gathered.obj) PyBuffer_Release(&self->gathered);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Fast_init(Fast *self, PyObject *args, PyObject *kwds) {
    PyObject *slot, *gathered;
    unsigned long long request, start, test;
    if (!PyArg_ParseTuple(args, "OOKKKnnnnn", &slot, &gathered, &request, &start, &test,
                          &self->world_size, &self->stride, &self->header_bytes,
                          &self->seq_at, &self->spins))
        return -1;
    if (!request || !start || !test) {
        PyErr_SetString(PyExc_ValueError, "null request or MPI function");
        return -1;
    }
    if (PyObject_GetBuffer(slot, &self->slot, PyBUF_WRITABLE) < 0) return -1;
    if (PyObject_GetBuffer(gathered, &self->gathered, PyBUF_SIMPLE) < 0) return -1;
    if (self->slot.len < self->stride || self->gathered.len < self->world_size * self->stride
        || self->seq_at + 8 > self->header_bytes || self->header_bytes > self->stride) {
        PyErr_SetString(PyExc_ValueError, "slot or receive buffer too small");
        return -1;
    }
    self->request = (void *)(uintptr_t)request;
    self->start = (start_fn)(uintptr_t)start;
    self->test = (test_fn)(uintptr_t)test;
    return 0;
}

/* Reduces the members' data (at base + i * stride, i in rank order) into out, n elements. */
#define REDUCE_LOOP(T, ACC, COMBINE)                                                        \
    do {                                                                                    \
        T *o = (T *)out;                                                                    \
        memcpy(o, base, n * sizeof(T));                                                     \
        for (Py_ssize_t r = 1; r < members; r++) {                                          \
            const T *p = (const T *)(base + r * stride);                                    \
            for (Py_ssize_t i = 0; i < n; i++) {                                            \
                ACC a = (ACC)o[i], b = (ACC)p[i];                                           \
                o[i] = (T)(COMBINE);                                                        \
            }                                                                               \
        }                                                                                   \
    } while (0)

/* numpy's minimum and maximum propagate NaN */
#define FMIN(a, b) (((a) < (b) || (a) != (a)) ? (a) : (b))
#define FMAX(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))
#define IMIN(a, b) ((a) < (b) ? (a) : (b))
#define IMAX(a, b) ((a) > (b) ? (a) : (b))

#define FLOAT_CASES(T)                                                                      \
    switch (op) {                                                                           \
    case SUM: case AVG: REDUCE_LOOP(T, T, a + b); break;                                    \
    case PRODUCT: REDUCE_LOOP(T, T, a * b); break;                                          \
    case MIN: REDUCE_LOOP(T, T, FMIN(a, b)); break;                                         \
    case MAX: REDUCE_LOOP(T, T, FMAX(a, b)); break;                                         \
    default: return -1;                                                                     \
    }                                                                                       \
    if (op == AVG) {                                                                        \
        T *o = (T *)out;                                                                    \
        for (Py_ssize_t i = 0; i < n; i++) o[i] = o[i] / (T)members;                        \
    }                                                                                       \
    return 0

/* integers wrap as numpy's do: sums and products in the unsigned type of the same width */
#define INT_CASES(T, U)                                                                     \
    switch (op) {                                                                           \
    case SUM: REDUCE_LOOP(T, U, a + b); break;                                              \
    case PRODUCT: REDUCE_LOOP(T, U, a * b); break;                                          \
    case MIN: REDUCE_LOOP(T, T, IMIN(a, b)); break;                                         \
    case MAX: REDUCE_LOOP(T, T, IMAX(a, b)); break;                                         \
    default: return -1;                                                                     \
    }                                                                                       \
    return 0

static int reduce_into(char *out, const char *base, Py_ssize_t members, Py_ssize_t stride,
                       Py_ssize_t n, int op, int type) {
    switch (type) {
    case F32: { FLOAT_CASES(float); }
    case F64: { FLOAT_CASES(double); }
    case I8: { INT_CASES(int8_t, uint8_t); }
    case I16: { INT_CASES(int16_t, uint16_t); }
    case I32: { INT_CASES(int32_t, uint32_t); }
    case I64: { INT_CASES(int64_t, uint64_t); }
    case U8: { INT_CASES(uint8_t, uint8_t); }
    case U16: { INT_CASES(uint16_t, uint16_t); }
    case U32: { INT_CASES(uint32_t, uint32_t); }
    case U64: { INT_CASES(uint64_t, uint64_t); }
    }
    return -1;
}

static Py_ssize_t itemsize_of(int type) {
    switch (type) {
    case F64: case I64: case U64: return 8;
    case F32: case I32: case U32: return 4;
    case I16: case U16: return 2;
    default: return 1;
    }
}

/* 1: every header equals this member's; 0: one differs */
static int headers_agree(Fast *self) {
    const char *g = (const char *)self->gathered.buf;
    const char *mine = (const char *)self->slot.buf;
    for (Py_ssize_t r = 0; r < self->world_size; r++)
        if (memcmp(g + r * self->stride, mine, self->header_bytes) != 0) return 0;
    return 1;
}

/* finish(tensor, op, type, reduce): checks the headers; reduces into tensor where reduce.
 * Returns 1, or -1 where the headers differ (the caller says how). */
static PyObject *finish(Fast *self, PyObject *tensor, int op, int type, int reduce) {
    if (!headers_agree(self)) return PyLong_FromLong(-1);
    if (reduce) {
        Py_buffer out;
        if (PyObject_GetBuffer(tensor, &out, PyBUF_WRITABLE) < 0) return NULL;
        Py_ssize_t itemsize = itemsize_of(type);
        Py_ssize_t n = out.len / itemsize;
        int bad = n * itemsize != out.len
                  || self->header_bytes + out.len > self->stride
                  || reduce_into((char *)out.buf,
                                 (const char *)self->gathered.buf + self->header_bytes,
                                 self->world_size, self->stride, n, op, type) < 0;
        PyBuffer_Release(&out);
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "unsupported fast-path reduction");
            return NULL;
        }
    }
    return PyLong_FromLong(1);
}

static PyObject *Fast_finish(Fast *self, PyObject *args) {
    PyObject *tensor;
    int op, type, reduce;
    if (!PyArg_ParseTuple(args, "Oiip", &tensor, &op, &type, &reduce)) return NULL;
    return finish(self, tensor, op, type, reduce);
}

/* call(tensor, seq, op, type, reduce): one small call, made with the rank's MPI lock held.
 * Copies tensor's bytes into the slot after the header (the caller wrote the header), stamps
 * seq, starts the allgather and tests it up to spins times. Returns 0 when it has not
 * completed (the caller waits, then calls finish), else what finish returns. */
static PyObject *Fast_call(Fast *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "call(tensor, seq, op, type, reduce)");
        return NULL;
    }
    PyObject *tensor = args[0];
    long long seq = PyLong_AsLongLong(args[1]);
    int op = (int)PyLong_AsLong(args[2]);
    int type = (int)PyLong_AsLong(args[3]);
    int reduce = PyObject_IsTrue(args[4]);
    if (PyErr_Occurred() || reduce < 0) return NULL;
    Py_buffer in;
    if (PyObject_GetBuffer(tensor, &in, PyBUF_SIMPLE) < 0) return NULL;
    if (self->header_bytes + in.len > self->stride) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "tensor too large for the slot");
        return NULL;
    }
    char *slot = (char *)self->slot.buf;
    memcpy(slot + self->header_bytes, in.buf, in.len);
    PyBuffer_Release(&in);
    int64_t s = (int64_t)seq;
    memcpy(slot + self->seq_at, &s, 8);
    if (self->start(self->request) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "MPI_Start failed");
        return NULL;
    }
    _Alignas(16) char status[256];
    int flag = 0;
    for (Py_ssize_t i = 0; i < self->spins && !flag; i++) {
        if (self->test(self->request, &flag, status) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "MPI_Test failed");
            return NULL;
        }
    }
    if (!flag) return PyLong_FromLong(0);
    return finish(self, tensor, op, type, reduce);
}

static PyMethodDef Fast_methods[] = {
    {"call", (PyCFunction)(void (*)(void))Fast_call, METH_FASTCALL,
     "call(tensor, seq, op, type, reduce) -> 1 done, 0 not yet complete, -1 headers differ"},
    {"finish", (PyCFunction)Fast_finish, METH_VARARGS,
     "finish(tensor, op, type, reduce) -> 1 done, -1 headers differ"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hpcray.collective._fastpath.Fast",
    .tp_doc = "Fast(slot, gathered, request_addr, start_fn, test_fn, world_size, stride, "
              "header_bytes, seq_at, spins): one group's small-call fast path",
    .tp_basicsize = sizeof(Fast),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Fast_init,
    .tp_dealloc = (destructor)Fast_dealloc,
    .tp_methods = Fast_methods,
};

static PyObject *py_reduce(PyObject *mod, PyObject *args) {
    /* reduce(out, gathered, members, stride, offset, op, type): for tests */
    PyObject *out_obj, *g_obj;
    Py_ssize_t members, stride, offset;
    int op, type;
    if (!PyArg_ParseTuple(args, "OOnnnii", &out_obj, &g_obj, &members, &stride, &offset, &op,
                          &type))
        return NULL;
    Py_buffer out, g;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE) < 0) return NULL;
    if (PyObject_GetBuffer(g_obj, &g, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_ssize_t itemsize = itemsize_of(type);
    int bad = out.len % itemsize || offset + out.len + (members - 1) * stride > g.len
              || reduce_into((char *)out.buf, (const char *)g.buf + offset, members, stride,
                             out.len / itemsize, op, type) < 0;
    PyBuffer_Release(&out);
    PyBuffer_Release(&g);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "bad reduction arguments");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"reduce", py_reduce, METH_VARARGS, "reduce(out, gathered, members, stride, offset, op, type)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The small-call fast path of the mpi backend.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&FastType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&FastType);
    if (PyModule_AddObject(m, "Fast", (PyObject *)&FastType) < 0) {
        Py_DECREF(&FastType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
