/* The compiled probe loops of discovery.index.table.DirectoryIndex.
 *
 * The layout is the one table.py describes (slots of 64 bits in buckets of 16, records of
 * 16-byte cells in a log); this file only walks it. Three functions:
 *
 *   lookup(flat, log, n_buckets, keys, out) -> (count, ids)
 *       Of n packed keys, the present and discoverable ones: their positions go to out[:count]
 *       (uint32, ascending), their user ids to the list. Two pipelined passes over the batch,
 *       each with software prefetching: home buckets, then the records of the candidates.
 *   lookup_packed(flat, log, n_buckets, keys, out, prefix) -> (count, positions, ids)
 *       The same lookup with its results packed (index/packed.py documents the format): the
 *       positions as LEB128 varints, and each user id as prefix || varint(length) || bytes,
 *       so that a caller can frame them (a protobuf repeated field, with its key as prefix)
 *       without a Python object per match.
 *   find(flat, log, n_buckets, keys, out_at, out_slot) -> count
 *       The same probe for present keys, discoverable or not: positions and slot numbers.
 *   insert(flat, log, n_buckets, vals, start, release_gil) -> stop
 *       Linear-probing insertion of slot values vals[start:] (EMPTY values are skipped) whose
 *       keys are absent. Returns len(vals), or the index of the first value whose probe would
 *       reach the last bucket (the caller extends the tail and calls again from there),
 *       or -1 if a value points outside the log.
 *       With release_gil the GIL is released: only for a table nobody else can see yet.
 *
 * Arrays come in through the buffer protocol; the caller (table.py) owns them and checks
 * their types and sizes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BUCKET 16
#define EMPTY UINT64_MAX
#define OFF_MASK 0xFFFFFFFFull
#define NCELL(e) (((e) >> 32) & 0xF)
#define DBIT (1ull << 36)
#define FP_MASK 0xFFFFFFE000000000ull
#define AHEAD 16 /* keys in flight between the prefetch of a bucket and its scan */

#define PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 0)

typedef struct {
    Py_ssize_t at;  /* position of the key in the batch */
    uint64_t slot;  /* slot number */
    uint64_t value; /* the slot's value */
} Cand;

typedef struct {
    Cand *items;
    Py_ssize_t size, cap;
} Cands;

static int cands_push(Cands *c, Py_ssize_t at, uint64_t slot, uint64_t value) {
    if (c->size == c->cap) {
        Py_ssize_t cap = c->cap ? 2 * c->cap : 256;
        Cand *items = PyMem_Realloc(c->items, (size_t)cap * sizeof(Cand));
        if (!items)
            return -1;
        c->items = items;
        c->cap = cap;
    }
    c->items[c->size++] = (Cand){at, slot, value};
    return 0;
}

static inline uint64_t home_slot(uint64_t lo, uint64_t n_buckets) {
    return (((lo >> 32) * n_buckets) >> 32) * BUCKET;
}

/* Every slot of the run from the key's home whose value matches `want` under `mask`
 * becomes a candidate. Home buckets fill as prefixes, so the run almost always ends inside
 * the home bucket. (A branch-free compare of the whole bucket, scalar or SSE2, ran no
 * faster: see docs/perf/index-kernel.md.) */
static int scan_run(const uint64_t *flat, uint64_t home, uint64_t want, uint64_t mask, Py_ssize_t at,
                    Cands *out) {
    for (uint64_t p = home;; p++) {
        uint64_t e = flat[p];
        if (e == EMPTY)
            return 0;
        if (((e ^ want) & mask) == 0 && cands_push(out, at, p, e) < 0)
            return -1;
    }
}

/* Pass 1: candidates of every key, in batch order, prefetching home buckets AHEAD keys early. */
static int probe_batch(const uint64_t *flat, uint64_t n_buckets, const uint64_t *keys, Py_ssize_t n,
                       int discoverable_only, Cands *out) {
    uint64_t homes[AHEAD];
    uint64_t mask = discoverable_only ? (FP_MASK | DBIT) : FP_MASK;
    for (Py_ssize_t i = 0; i < n + AHEAD; i++) {
        Py_ssize_t j = i - AHEAD; /* scan key j, whose slot in homes key i takes next */
        if (j >= 0) {
            uint64_t want = (keys[2 * j + 1] & FP_MASK) | (discoverable_only ? DBIT : 0);
            if (scan_run(flat, homes[j % AHEAD], want, mask, j, out) < 0)
                return -1;
        }
        if (i < n) {
            uint64_t h = home_slot(keys[2 * i], n_buckets);
            PREFETCH(flat + h);
            PREFETCH(flat + h + BUCKET / 2);
            homes[i % AHEAD] = h;
        }
    }
    return 0;
}

/* Pass 2: keep the candidates whose record holds the key (prefetching records AHEAD early).
 * Keys are unique in the table, so at most one candidate of a key survives. */
static Py_ssize_t verify(const uint64_t *log, const uint64_t *keys, Cands *c) {
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < c->size + AHEAD; i++) {
        if (i < c->size) {
            const uint64_t *rec = log + 2 * (c->items[i].value & OFF_MASK);
            PREFETCH(rec);
            PREFETCH(rec + 2 * NCELL(c->items[i].value) + 1); /* the record's last byte */
        }
        Py_ssize_t j = i - AHEAD;
        if (j >= 0) {
            Cand k = c->items[j];
            const uint64_t *rec = log + 2 * (k.value & OFF_MASK);
            if (rec[0] == keys[2 * k.at] && rec[1] == keys[2 * k.at + 1])
                c->items[kept++] = k;
        }
    }
    c->size = kept;
    return kept;
}

typedef struct {
    Py_buffer flat, log, keys;
    Py_ssize_t n;
    uint64_t n_buckets;
} Args;

static void args_release(Args *a) {
    PyBuffer_Release(&a->flat);
    PyBuffer_Release(&a->log);
    PyBuffer_Release(&a->keys);
}

static int args_get(PyObject *const *argv, Args *a) {
    memset(a, 0, sizeof *a);
    a->n_buckets = PyLong_AsUnsignedLongLong(argv[2]);
    if (PyErr_Occurred())
        return -1;
    if (PyObject_GetBuffer(argv[0], &a->flat, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(argv[1], &a->log, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(argv[3], &a->keys, PyBUF_SIMPLE) < 0) {
        args_release(a);
        return -1;
    }
    if (a->keys.len % 16) {
        PyErr_Format(PyExc_ValueError, "packed keys must be a multiple of 16 bytes, got %zd", a->keys.len);
        args_release(a);
        return -1;
    }
    a->n = a->keys.len / 16;
    return 0;
}

static int out_get(PyObject *obj, Py_buffer *view, Py_ssize_t need) {
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0)
        return -1;
    if (view->len < need) {
        PyErr_SetString(PyExc_ValueError, "output buffer too small");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Whether the `len` bytes at p are ASCII. The record goes on for at least one more byte
 * (the NUL), within whole words, so the last word is read whole and masked. */
static int is_ascii(const char *p, Py_ssize_t len) {
    uint64_t acc = 0, w;
    Py_ssize_t i = 0;
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, p + i, 8);
        acc |= w;
    }
    if (i < len) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(&w, p + i, 8);
        acc |= w & (UINT64_MAX >> (64 - 8 * (len - i)));
#else
        for (; i < len; i++)
            acc |= (unsigned char)p[i];
#endif
    }
    return (acc & 0x8080808080808080ull) == 0;
}

/* The id bytes of a record (up to its NUL) and their length. */
static const char *record_bytes(const uint64_t *log, uint64_t value, Py_ssize_t *len) {
    const char *body = (const char *)(log + 2 * (value & OFF_MASK) + 2);
    size_t room = 16 * (size_t)NCELL(value);
    const char *end = memchr(body, 0, room);
    *len = end ? end - body : (Py_ssize_t)room;
    return body;
}

/* The user id of a record, as str (ASCII ids, the usual case, are copied without the UTF-8
 * decoder). */
static PyObject *record_id(const uint64_t *log, uint64_t value) {
    Py_ssize_t len;
    const char *body = record_bytes(log, value, &len);
    if (!is_ascii(body, len))
        return PyUnicode_DecodeUTF8(body, len, "strict");
    PyObject *s = PyUnicode_New(len, 127);
    if (s)
        memcpy(PyUnicode_DATA(s), body, (size_t)len);
    return s;
}

/* What lookup and lookup_packed share: the arguments, and the hits of the batch (positions
 * written to out, ascending; their slot values in c). */
typedef struct {
    Args a;
    Py_buffer out;
    Cands c;
    Py_ssize_t hits;
} Lookup;

static void lookup_release(Lookup *l) {
    PyMem_Free(l->c.items);
    PyBuffer_Release(&l->out);
    args_release(&l->a);
}

static int lookup_run(PyObject *const *argv, Lookup *l) {
    memset(l, 0, sizeof *l);
    if (args_get(argv, &l->a) < 0)
        return -1;
    if (out_get(argv[4], &l->out, l->a.n * 4) < 0) {
        args_release(&l->a);
        return -1;
    }
    const uint64_t *keys = l->a.keys.buf;
    if (probe_batch(l->a.flat.buf, l->a.n_buckets, keys, l->a.n, 1, &l->c) < 0) {
        PyErr_NoMemory();
        lookup_release(l);
        return -1;
    }
    l->hits = verify(l->a.log.buf, keys, &l->c);
    uint32_t *pos = l->out.buf;
    for (Py_ssize_t i = 0; i < l->hits; i++)
        pos[i] = (uint32_t)l->c.items[i].at;
    return 0;
}

static PyObject *py_lookup(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 5) {
        PyErr_SetString(PyExc_TypeError, "lookup(flat, log, n_buckets, keys, out)");
        return NULL;
    }
    Lookup l;
    if (lookup_run(argv, &l) < 0)
        return NULL;
    PyObject *result = NULL, *ids = PyList_New(l.hits);
    if (!ids)
        goto done;
    for (Py_ssize_t i = 0; i < l.hits; i++) {
        PyObject *s = record_id(l.a.log.buf, l.c.items[i].value);
        if (!s)
            goto done;
        PyList_SET_ITEM(ids, i, s);
    }
    result = Py_BuildValue("(nO)", l.hits, ids);
done:
    Py_XDECREF(ids);
    lookup_release(&l);
    return result;
}

static Py_ssize_t varint_size(uint64_t v) {
    Py_ssize_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static char *put_varint(char *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (char)v;
    return p;
}

static PyObject *py_lookup_packed(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 6) {
        PyErr_SetString(PyExc_TypeError, "lookup_packed(flat, log, n_buckets, keys, out, prefix)");
        return NULL;
    }
    Py_buffer prefix;
    if (PyObject_GetBuffer(argv[5], &prefix, PyBUF_SIMPLE) < 0)
        return NULL;
    Lookup l;
    if (lookup_run(argv, &l) < 0) {
        PyBuffer_Release(&prefix);
        return NULL;
    }
    const uint64_t *log = l.a.log.buf;
    const uint32_t *pos = l.out.buf;
    Py_ssize_t pos_size = 0, ids_size = 0, len;
    for (Py_ssize_t i = 0; i < l.hits; i++) {
        pos_size += varint_size(pos[i]);
        record_bytes(log, l.c.items[i].value, &len);
        ids_size += prefix.len + varint_size((uint64_t)len) + len;
    }
    PyObject *result = NULL, *positions = PyBytes_FromStringAndSize(NULL, pos_size);
    PyObject *ids = PyBytes_FromStringAndSize(NULL, ids_size);
    if (!positions || !ids)
        goto done;
    char *p = PyBytes_AS_STRING(positions), *q = PyBytes_AS_STRING(ids);
    for (Py_ssize_t i = 0; i < l.hits; i++) {
        p = put_varint(p, pos[i]);
        const char *body = record_bytes(log, l.c.items[i].value, &len);
        memcpy(q, prefix.buf, (size_t)prefix.len);
        q = put_varint(q + prefix.len, (uint64_t)len);
        memcpy(q, body, (size_t)len);
        q += len;
    }
    result = Py_BuildValue("(nOO)", l.hits, positions, ids);
done:
    Py_XDECREF(positions);
    Py_XDECREF(ids);
    PyBuffer_Release(&prefix);
    lookup_release(&l);
    return result;
}

static PyObject *py_find(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 6) {
        PyErr_SetString(PyExc_TypeError, "find(flat, log, n_buckets, keys, out_at, out_slot)");
        return NULL;
    }
    Args a;
    Py_buffer at, slot;
    if (args_get(argv, &a) < 0)
        return NULL;
    if (out_get(argv[4], &at, a.n * 8) < 0) {
        args_release(&a);
        return NULL;
    }
    if (out_get(argv[5], &slot, a.n * 8) < 0) {
        PyBuffer_Release(&at);
        args_release(&a);
        return NULL;
    }
    Cands c = {0};
    PyObject *result = NULL;
    if (probe_batch(a.flat.buf, a.n_buckets, a.keys.buf, a.n, 0, &c) < 0) {
        PyErr_NoMemory();
    } else {
        Py_ssize_t found = verify(a.log.buf, a.keys.buf, &c);
        int64_t *at_out = at.buf, *slot_out = slot.buf;
        for (Py_ssize_t i = 0; i < found; i++) {
            at_out[i] = c.items[i].at;
            slot_out[i] = (int64_t)c.items[i].slot;
        }
        result = PyLong_FromSsize_t(found);
    }
    PyMem_Free(c.items);
    PyBuffer_Release(&slot);
    PyBuffer_Release(&at);
    args_release(&a);
    return result;
}

/* Insert vals[start:] by linear probing; returns where it stopped (see the file comment). */
static Py_ssize_t insert_vals(uint64_t *flat, Py_ssize_t slots, const uint64_t *log, uint64_t log_cells,
                              uint64_t n_buckets, const uint64_t *vals, Py_ssize_t n, Py_ssize_t start) {
    uint64_t last = (uint64_t)(slots - BUCKET); /* the first slot of the last bucket: stays empty */
    if (slots < BUCKET || n_buckets * BUCKET > last)
        return -1;
    for (Py_ssize_t i = start; i < n; i++) {
        if (i + AHEAD < n && vals[i + AHEAD] != EMPTY)
            PREFETCH(log + 2 * (vals[i + AHEAD] & OFF_MASK));
        uint64_t e = vals[i];
        if (e == EMPTY)
            continue;
        if ((e & OFF_MASK) >= log_cells)
            return -1;
        uint64_t p = home_slot(log[2 * (e & OFF_MASK)], n_buckets);
        while (p < last && flat[p] != EMPTY)
            p++;
        if (p >= last)
            return i;
        flat[p] = e;
    }
    return n;
}

static PyObject *py_insert(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 6) {
        PyErr_SetString(PyExc_TypeError, "insert(flat, log, n_buckets, vals, start, release_gil)");
        return NULL;
    }
    uint64_t n_buckets = PyLong_AsUnsignedLongLong(argv[2]);
    Py_ssize_t start = PyLong_AsSsize_t(argv[4]);
    int release = PyObject_IsTrue(argv[5]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer flat, log, vals;
    if (PyObject_GetBuffer(argv[0], &flat, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(argv[1], &log, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&flat);
        return NULL;
    }
    if (PyObject_GetBuffer(argv[3], &vals, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&log);
        PyBuffer_Release(&flat);
        return NULL;
    }
    Py_ssize_t stop;
    Py_ssize_t slots = flat.len / 8, n = vals.len / 8;
    uint64_t log_cells = (uint64_t)log.len / 16;
    if (release) {
        Py_BEGIN_ALLOW_THREADS;
        stop = insert_vals(flat.buf, slots, log.buf, log_cells, n_buckets, vals.buf, n, start);
        Py_END_ALLOW_THREADS;
    } else {
        stop = insert_vals(flat.buf, slots, log.buf, log_cells, n_buckets, vals.buf, n, start);
    }
    PyBuffer_Release(&vals);
    PyBuffer_Release(&log);
    PyBuffer_Release(&flat);
    return PyLong_FromSsize_t(stop);
}

static PyMethodDef methods[] = {
    {"lookup", (PyCFunction)(void (*)(void))py_lookup, METH_FASTCALL, "Batched lookup of discoverable keys."},
    {"lookup_packed", (PyCFunction)(void (*)(void))py_lookup_packed, METH_FASTCALL,
     "Batched lookup of discoverable keys, results packed."},
    {"find", (PyCFunction)(void (*)(void))py_find, METH_FASTCALL, "Batched probe of present keys."},
    {"insert", (PyCFunction)(void (*)(void))py_insert, METH_FASTCALL, "Linear-probing insertion of slots."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_probe",
    .m_doc = "Probe loops of DirectoryIndex.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__probe(void) { return PyModule_Create(&module); }
