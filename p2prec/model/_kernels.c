/* Compiled loops of the store's apply path (p2prec.model._kernels).
 *
 * Each function does, in one call and one pass over a batch, what the numpy code beside it
 * (keyhash.py, keyindex.py, rowhash.py, store.py) does in tens of numpy calls; results are
 * bit for bit the same (tests/test_kernels.py holds both against each other). The numpy code
 * stays the reference and the fallback where no C compiler built this module.
 *
 * Arrays travel through the buffer protocol (no numpy C API): int64 and uint64 arrays as
 * C-contiguous buffers of 8-byte items. Bounds are checked; the GIL is held throughout (the
 * loops are short and the store is not thread-safe).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EMPTY (-2)  /* keyindex.EMPTY */
#define ABSENT (-1) /* keyindex.ABSENT */
#define TAG_BASE (-3)

static const uint64_t VERSION_MUL = 0x9E3779B97F4A7C15ULL; /* rowhash._VERSION_MUL */

static inline uint64_t mix64(uint64_t x) /* keyhash.mix64: the splitmix64 finaliser */
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return x;
}

/* -- buffers ------------------------------------------------------------------------------- */

typedef struct {
    Py_buffer view;
    Py_ssize_t n; /* items of 8 bytes */
} Array8;

static int array8(PyObject *obj, Array8 *out, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &out->view, flags) < 0)
        return -1;
    if (out->view.len % 8 != 0) {
        PyBuffer_Release(&out->view);
        PyErr_Format(PyExc_ValueError, "%s: a buffer of 8-byte items expected", name);
        return -1;
    }
    out->n = out->view.len / 8;
    return 0;
}

static void release(Array8 *arrays, int count)
{
    for (int i = 0; i < count; i++)
        if (arrays[i].view.obj != NULL)
            PyBuffer_Release(&arrays[i].view);
}

#define I64(a) ((int64_t *)(a).view.buf)
#define U64(a) ((uint64_t *)(a).view.buf)

/* Get `count` arrays from `objs` (writable where `writable[i]`); on failure nothing is held. */
static int arrays8(PyObject **objs, Array8 *arrays, const int *writable, const char **names,
                   int count)
{
    memset(arrays, 0, sizeof(Array8) * (size_t)count);
    for (int i = 0; i < count; i++) {
        if (array8(objs[i], &arrays[i], writable[i], names[i]) < 0) {
            arrays[i].view.obj = NULL;
            release(arrays, i);
            return -1;
        }
    }
    return 0;
}

static int same_length(Array8 *arrays, int count, Py_ssize_t n)
{
    for (int i = 0; i < count; i++) {
        if (arrays[i].n != n) {
            PyErr_SetString(PyExc_ValueError, "arrays of one batch differ in length");
            return -1;
        }
    }
    return 0;
}

/* The pairs array of a KeyIndex: [key, value] * capacity, capacity a power of two. */
static int table_mask(Array8 *pairs, uint64_t *mask)
{
    Py_ssize_t capacity = pairs->n / 2;
    if (capacity < 1 || pairs->n % 2 || (capacity & (capacity - 1))) {
        PyErr_SetString(PyExc_ValueError, "pairs: capacity must be a power of two");
        return -1;
    }
    *mask = (uint64_t)capacity - 1;
    return 0;
}

/* -- shard_of ------------------------------------------------------------------------------ */

PyDoc_STRVAR(shard_of_doc,
             "shard_of(keys, salt, row_shards, out)\n--\n\n"
             "out[i] = mix64(keys[i] ^ salt) % row_shards (keyhash.shard_of).");

static PyObject *shard_of(PyObject *self, PyObject *args)
{
    PyObject *objs[2];
    unsigned long long salt;
    long long row_shards;
    if (!PyArg_ParseTuple(args, "OKLO", &objs[0], &salt, &row_shards, &objs[1]))
        return NULL;
    if (row_shards < 1) {
        PyErr_SetString(PyExc_ValueError, "row_shards must be positive");
        return NULL;
    }
    Array8 a[2];
    static const int writable[2] = {0, 1};
    static const char *names[2] = {"keys", "out"};
    if (arrays8(objs, a, writable, names, 2) < 0)
        return NULL;
    if (same_length(a, 2, a[0].n) < 0) {
        release(a, 2);
        return NULL;
    }
    const uint64_t *keys = U64(a[0]);
    int64_t *out = I64(a[1]);
    for (Py_ssize_t i = 0; i < a[0].n; i++)
        out[i] = (int64_t)(mix64(keys[i] ^ (uint64_t)salt) % (uint64_t)row_shards);
    release(a, 2);
    Py_RETURN_NONE;
}

/* -- probe --------------------------------------------------------------------------------- */

PyDoc_STRVAR(probe_doc,
             "probe(pairs, keys, found, empty_at)\n--\n\n"
             "KeyIndex._probe: each key's position or -1 in found; for keys not found the "
             "first empty position of the probe chain in empty_at (-1 for keys found).");

static PyObject *probe(PyObject *self, PyObject *args)
{
    PyObject *objs[4];
    if (!PyArg_ParseTuple(args, "OOOO", &objs[0], &objs[1], &objs[2], &objs[3]))
        return NULL;
    Array8 a[4];
    static const int writable[4] = {0, 0, 1, 1};
    static const char *names[4] = {"pairs", "keys", "found", "empty_at"};
    if (arrays8(objs, a, writable, names, 4) < 0)
        return NULL;
    uint64_t mask;
    if (table_mask(&a[0], &mask) < 0 || same_length(a + 1, 3, a[1].n) < 0) {
        release(a, 4);
        return NULL;
    }
    const int64_t *pairs = I64(a[0]);
    const int64_t *keys = I64(a[1]);
    int64_t *found = I64(a[2]), *empty_at = I64(a[3]);
    for (Py_ssize_t i = 0; i < a[1].n; i++) {
        uint64_t p = mix64((uint64_t)keys[i]) & mask;
        found[i] = -1;
        empty_at[i] = -1;
        for (uint64_t steps = 0; steps <= mask; steps++, p = (p + 1) & mask) {
            if (pairs[2 * p + 1] == EMPTY) {
                empty_at[i] = (int64_t)p;
                break;
            }
            if (pairs[2 * p] == keys[i]) {
                found[i] = (int64_t)p;
                break;
            }
        }
    }
    release(a, 4);
    Py_RETURN_NONE;
}

/* -- find_or_insert ------------------------------------------------------------------------ */

/* Put back the values find_or_insert tagged for keys [0, done): the saved value of a key that
 * was there, ABSENT for one it inserted. */
static void untag(int64_t *pairs, const int64_t *out, const int64_t *saved, Py_ssize_t done)
{
    for (Py_ssize_t i = 0; i < done; i++)
        pairs[2 * out[i] + 1] = saved[i];
}

PyDoc_STRVAR(find_or_insert_doc,
             "find_or_insert(pairs, keys, out) -> (inserted, duplicate)\n--\n\n"
             "KeyIndex.find_or_insert after its reserve: each key's position in out, keys "
             "never seen inserted with value ABSENT (the table must have room: load at most "
             "one half). When a key occurs twice, duplicate is True, no value has changed and "
             "the keys inserted before it stay (as ABSENT); inserted counts them either way.");

static PyObject *find_or_insert(PyObject *self, PyObject *args)
{
    PyObject *objs[3];
    if (!PyArg_ParseTuple(args, "OOO", &objs[0], &objs[1], &objs[2]))
        return NULL;
    Array8 a[3];
    static const int writable[3] = {1, 0, 1};
    static const char *names[3] = {"pairs", "keys", "out"};
    if (arrays8(objs, a, writable, names, 3) < 0)
        return NULL;
    uint64_t mask;
    if (table_mask(&a[0], &mask) < 0 || same_length(a + 1, 2, a[1].n) < 0) {
        release(a, 3);
        return NULL;
    }
    Py_ssize_t n = a[1].n;
    int64_t *saved = PyMem_Malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    if (saved == NULL) {
        release(a, 3);
        return PyErr_NoMemory();
    }
    int64_t *pairs = I64(a[0]), *out = I64(a[2]);
    const int64_t *keys = I64(a[1]);
    Py_ssize_t inserted = 0, done = 0;
    int duplicate = 0, full = 0;
    /* Each key's value is tagged TAG_BASE - i while the batch runs: meeting a tag on a key
     * means the batch named it before. */
    for (; done < n; done++) {
        uint64_t p = mix64((uint64_t)keys[done]) & mask;
        for (uint64_t steps = 0; pairs[2 * p + 1] != EMPTY && pairs[2 * p] != keys[done];) {
            if (++steps > mask) {
                full = 1;
                break;
            }
            p = (p + 1) & mask;
        }
        if (full)
            break;
        int64_t value = pairs[2 * p + 1];
        if (value <= TAG_BASE) {
            duplicate = 1;
            break;
        }
        if (value == EMPTY) {
            pairs[2 * p] = keys[done];
            value = ABSENT;
            inserted++;
        }
        saved[done] = value;
        out[done] = (int64_t)p;
        pairs[2 * p + 1] = TAG_BASE - (int64_t)done;
    }
    untag(pairs, out, saved, done);
    PyMem_Free(saved);
    release(a, 3);
    if (full) {
        PyErr_SetString(PyExc_RuntimeError, "find_or_insert: the table is full");
        return NULL;
    }
    return Py_BuildValue("(nO)", inserted, duplicate ? Py_True : Py_False);
}

/* -- row_hashes ---------------------------------------------------------------------------- */

/* Little-endian word `j` of width `width` bytes of `row`, widened to 64 bits. */
static inline uint64_t word(const unsigned char *row, Py_ssize_t j, int width)
{
    switch (width) {
    case 8: {
        uint64_t w;
        memcpy(&w, row + 8 * j, 8);
        return w;
    }
    case 4: {
        uint32_t w;
        memcpy(&w, row + 4 * j, 4);
        return w;
    }
    case 2: {
        uint16_t w;
        memcpy(&w, row + 2 * j, 2);
        return w;
    }
    default:
        return row[j];
    }
}

PyDoc_STRVAR(row_hashes_doc,
             "row_hashes(salt, keys, versions, rows, constants, out)\n--\n\n"
             "rowhash.row_hashes: rows is a C-contiguous buffer of len(keys) rows of equal "
             "byte length; constants holds one odd uint64 per word of a row (words of the "
             "widest of 8, 4, 2, 1 bytes that divides the row).");

static PyObject *row_hashes(PyObject *self, PyObject *args)
{
    unsigned long long salt;
    PyObject *objs[4], *rows_obj;
    if (!PyArg_ParseTuple(args, "KOOOOO", &salt, &objs[0], &objs[1], &rows_obj, &objs[2],
                          &objs[3]))
        return NULL;
    Array8 a[4];
    static const int writable[4] = {0, 0, 0, 1};
    static const char *names[4] = {"keys", "versions", "constants", "out"};
    if (arrays8(objs, a, writable, names, 4) < 0)
        return NULL;
    Py_buffer rows;
    if (PyObject_GetBuffer(rows_obj, &rows, PyBUF_C_CONTIGUOUS) < 0) {
        release(a, 4);
        return NULL;
    }
    Py_ssize_t n = a[0].n;
    PyObject *result = NULL;
    if (a[1].n != n || a[3].n != n) {
        PyErr_SetString(PyExc_ValueError, "arrays of one batch differ in length");
        goto done;
    }
    if (n == 0) {
        result = Py_None;
        goto done;
    }
    if (rows.len % n != 0) {
        PyErr_SetString(PyExc_ValueError, "rows: not len(keys) rows of equal length");
        goto done;
    }
    Py_ssize_t row_bytes = rows.len / n;
    int width = row_bytes % 8 == 0 ? 8 : row_bytes % 4 == 0 ? 4 : row_bytes % 2 == 0 ? 2 : 1;
    Py_ssize_t words = row_bytes / width;
    if (a[2].n != words) {
        PyErr_SetString(PyExc_ValueError, "constants: one per word of a row expected");
        goto done;
    }
    const uint64_t *keys = U64(a[0]), *versions = U64(a[1]), *k = U64(a[2]);
    uint64_t *out = U64(a[3]);
    const unsigned char *row = rows.buf;
    for (Py_ssize_t i = 0; i < n; i++, row += row_bytes) {
        uint64_t linear = 0;
        if (width == 8)
            for (Py_ssize_t j = 0; j < words; j++)
                linear += word(row, j, 8) * k[j];
        else
            for (Py_ssize_t j = 0; j < words; j++)
                linear += word(row, j, width) * k[j];
        uint64_t ident = mix64(keys[i] ^ (uint64_t)salt) + versions[i] * VERSION_MUL;
        out[i] = mix64(linear ^ mix64(ident));
    }
    result = Py_None;
done:
    PyBuffer_Release(&rows);
    release(a, 4);
    Py_XINCREF(result);
    return result;
}

/* -- group_by_shard ------------------------------------------------------------------------ */

PyDoc_STRVAR(group_by_shard_doc,
             "group_by_shard(shards, hashes, prev, slot_hash, order, bounds, change)\n--\n\n"
             "store._ByShard: a stable order of the rows by shard, where each shard's rows "
             "begin (bounds, n_shards + 1 entries) and each shard's digest change: the hashes "
             "of its new rows minus slot_hash of the slots they replaced (prev >= 0), mod 2**64.");

static PyObject *group_by_shard(PyObject *self, PyObject *args)
{
    PyObject *objs[7];
    if (!PyArg_ParseTuple(args, "OOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4],
                          &objs[5], &objs[6]))
        return NULL;
    Array8 a[7];
    static const int writable[7] = {0, 0, 0, 0, 1, 1, 1};
    static const char *names[7] = {"shards", "hashes", "prev", "slot_hash",
                                   "order",  "bounds", "change"};
    if (arrays8(objs, a, writable, names, 7) < 0)
        return NULL;
    Py_ssize_t n = a[0].n, n_shards = a[6].n;
    PyObject *result = NULL;
    if (a[1].n != n || a[2].n != n || a[4].n != n) {
        PyErr_SetString(PyExc_ValueError, "arrays of one batch differ in length");
        goto done;
    }
    if (a[5].n != n_shards + 1) {
        PyErr_SetString(PyExc_ValueError, "bounds: one more entry than change expected");
        goto done;
    }
    const int64_t *shards = I64(a[0]), *prev = I64(a[2]);
    const uint64_t *hashes = U64(a[1]), *slot_hash = U64(a[3]);
    int64_t *order = I64(a[4]), *bounds = I64(a[5]);
    uint64_t *change = U64(a[6]);
    memset(bounds, 0, sizeof(int64_t) * (size_t)(n_shards + 1));
    memset(change, 0, sizeof(uint64_t) * (size_t)n_shards);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (shards[i] < 0 || shards[i] >= n_shards || prev[i] >= a[3].n) {
            PyErr_SetString(PyExc_IndexError, "group_by_shard: shard or slot out of range");
            goto done;
        }
        bounds[shards[i] + 1]++;
        change[shards[i]] += hashes[i] - (prev[i] >= 0 ? slot_hash[prev[i]] : 0);
    }
    for (Py_ssize_t s = 0; s < n_shards; s++)
        bounds[s + 1] += bounds[s];
    /* bounds[s] is the next free place of shard s while placing; shifted back after. */
    for (Py_ssize_t i = 0; i < n; i++)
        order[bounds[shards[i]]++] = i;
    memmove(bounds + 1, bounds, sizeof(int64_t) * (size_t)n_shards);
    bounds[0] = 0;
    result = Py_None;
done:
    release(a, 7);
    Py_XINCREF(result);
    return result;
}

/* -- rows_plan ----------------------------------------------------------------------------- */

#define STATUS_APPLY 3 /* store._APPLY */
#define STATUS_NOT_STEPPED 0 /* store._NOT_STEPPED */

PyDoc_STRVAR(rows_plan_doc,
             "rows_plan(keys, versions, salt, row_shards, status, bases, tops, shards, keep)"
             " -> (kept, problem)\n--\n\n"
             "store._rows_to_apply's checks: each row's shard in shards; the rows whose shard "
             "status is APPLY listed in keep[:kept]. problem is 1 when a row lies in a shard "
             "whose status is NOT_STEPPED, else 2 when a row's version is not in (bases[shard], "
             "tops[shard]], else 0 (status, bases and tops: one entry per shard).");

static PyObject *rows_plan(PyObject *self, PyObject *args)
{
    PyObject *objs[7];
    unsigned long long salt;
    long long row_shards;
    if (!PyArg_ParseTuple(args, "OOKLOOOOO", &objs[0], &objs[1], &salt, &row_shards, &objs[2],
                          &objs[3], &objs[4], &objs[5], &objs[6]))
        return NULL;
    Array8 a[7];
    static const int writable[7] = {0, 0, 0, 0, 0, 1, 1};
    static const char *names[7] = {"keys", "versions", "status", "bases", "tops", "shards", "keep"};
    if (arrays8(objs, a, writable, names, 7) < 0)
        return NULL;
    Py_ssize_t n = a[0].n, n_shards = a[2].n;
    PyObject *result = NULL;
    if (a[1].n != n || a[5].n != n || a[6].n != n || a[3].n != n_shards || a[4].n != n_shards) {
        PyErr_SetString(PyExc_ValueError, "rows_plan: arrays differ in length");
        goto done;
    }
    if (row_shards < 1 || row_shards > n_shards) {
        PyErr_SetString(PyExc_ValueError, "rows_plan: row_shards must lie in 1..len(status)");
        goto done;
    }
    const uint64_t *keys = U64(a[0]);
    const int64_t *versions = I64(a[1]), *status = I64(a[2]), *bases = I64(a[3]);
    const int64_t *tops = I64(a[4]);
    int64_t *shards = I64(a[5]), *keep = I64(a[6]);
    Py_ssize_t kept = 0;
    int not_stepped = 0, outside = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t s = (int64_t)(mix64(keys[i] ^ (uint64_t)salt) % (uint64_t)row_shards);
        shards[i] = s;
        not_stepped |= status[s] == STATUS_NOT_STEPPED;
        outside |= versions[i] <= bases[s] || versions[i] > tops[s];
        if (status[s] == STATUS_APPLY)
            keep[kept++] = i;
    }
    result = Py_BuildValue("(ni)", kept, not_stepped ? 1 : outside ? 2 : 0);
done:
    release(a, 7);
    return result;
}

/* -- newer_rows ---------------------------------------------------------------------------- */

PyDoc_STRVAR(newer_rows_doc,
             "newer_rows(pairs, positions, slot_version, versions, no_version, current, keep)"
             " -> kept\n--\n\n"
             "EmbeddingTable.write's filter: current[i] is the value (slot or ABSENT) at "
             "index position positions[i]; the rows newer than their key's current row (whose "
             "version is slot_version[slot], or no_version without a slot) are listed in "
             "keep[:kept].");

static PyObject *newer_rows(PyObject *self, PyObject *args)
{
    PyObject *objs[6];
    long long no_version;
    if (!PyArg_ParseTuple(args, "OOOOLOO", &objs[0], &objs[1], &objs[2], &objs[3], &no_version,
                          &objs[4], &objs[5]))
        return NULL;
    Array8 a[6];
    static const int writable[6] = {0, 0, 0, 0, 1, 1};
    static const char *names[6] = {"pairs", "positions", "slot_version", "versions", "current",
                                   "keep"};
    if (arrays8(objs, a, writable, names, 6) < 0)
        return NULL;
    Py_ssize_t n = a[1].n, capacity = a[0].n / 2, slots = a[2].n;
    PyObject *result = NULL;
    if (same_length(a + 3, 3, n) < 0)
        goto done;
    const int64_t *pairs = I64(a[0]), *positions = I64(a[1]), *slot_version = I64(a[2]);
    const int64_t *versions = I64(a[3]);
    int64_t *current = I64(a[4]), *keep = I64(a[5]);
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (positions[i] < 0 || positions[i] >= capacity) {
            PyErr_SetString(PyExc_IndexError, "newer_rows: position out of range");
            goto done;
        }
        int64_t slot = pairs[2 * positions[i] + 1];
        if (slot >= slots) {
            PyErr_SetString(PyExc_IndexError, "newer_rows: slot out of range");
            goto done;
        }
        current[i] = slot;
        if (versions[i] > (slot >= 0 ? slot_version[slot] : no_version))
            keep[kept++] = i;
    }
    result = PyLong_FromSsize_t(kept);
done:
    release(a, 6);
    return result;
}

/* -- fill_slots ---------------------------------------------------------------------------- */

PyDoc_STRVAR(fill_slots_doc,
             "fill_slots(slots, keys, versions, shards, hashes, prev, positions, slot_key, "
             "slot_version, slot_shard, slot_hash, slot_prev, pairs)\n--\n\n"
             "EmbeddingTable.write's bookkeeping: slot i's key, version, shard, hash and prev, "
             "and the index value at positions[i] set to slots[i] (rows are copied apart).");

static PyObject *fill_slots(PyObject *self, PyObject *args)
{
    PyObject *objs[13];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3],
                          &objs[4], &objs[5], &objs[6], &objs[7], &objs[8], &objs[9], &objs[10],
                          &objs[11], &objs[12]))
        return NULL;
    Array8 a[13];
    static const int writable[13] = {0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1};
    static const char *names[13] = {"slots",     "keys",         "versions",   "shards",
                                    "hashes",    "prev",         "positions",  "slot_key",
                                    "slot_version", "slot_shard", "slot_hash", "slot_prev",
                                    "pairs"};
    if (arrays8(objs, a, writable, names, 13) < 0)
        return NULL;
    Py_ssize_t n = a[0].n, capacity = a[7].n, positions_max = a[12].n / 2;
    PyObject *result = NULL;
    if (same_length(a, 7, n) < 0 || same_length(a + 7, 5, capacity) < 0)
        goto done;
    const int64_t *slots = I64(a[0]), *keys = I64(a[1]), *versions = I64(a[2]);
    const int64_t *shards = I64(a[3]), *prev = I64(a[5]), *positions = I64(a[6]);
    const uint64_t *hashes = U64(a[4]);
    int64_t *slot_key = I64(a[7]), *slot_version = I64(a[8]), *slot_shard = I64(a[9]);
    int64_t *slot_prev = I64(a[11]), *pairs = I64(a[12]);
    uint64_t *slot_hash = U64(a[10]);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (slots[i] < 0 || slots[i] >= capacity || positions[i] < 0 ||
            positions[i] >= positions_max) {
            PyErr_SetString(PyExc_IndexError, "fill_slots: slot or position out of range");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t s = slots[i];
        slot_key[s] = keys[i];
        slot_version[s] = versions[i];
        slot_shard[s] = shards[i];
        slot_hash[s] = hashes[i];
        slot_prev[s] = prev[i];
        pairs[2 * positions[i] + 1] = s;
    }
    result = Py_None;
done:
    release(a, 13);
    Py_XINCREF(result);
    return result;
}

/* -- module -------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"shard_of", shard_of, METH_VARARGS, shard_of_doc},
    {"probe", probe, METH_VARARGS, probe_doc},
    {"find_or_insert", find_or_insert, METH_VARARGS, find_or_insert_doc},
    {"row_hashes", row_hashes, METH_VARARGS, row_hashes_doc},
    {"group_by_shard", group_by_shard, METH_VARARGS, group_by_shard_doc},
    {"rows_plan", rows_plan, METH_VARARGS, rows_plan_doc},
    {"newer_rows", newer_rows, METH_VARARGS, newer_rows_doc},
    {"fill_slots", fill_slots, METH_VARARGS, fill_slots_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "p2prec.model._kernels",
    .m_doc = "Compiled loops of the store's apply path (see _kernels.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
