/* Which entries torch's unstable CPU sort of magnitudes puts in a window of positions, without sorting.
 *
 * TIES and breadcrumbs keep the entries that mergekit's sort of |delta| (as float32) puts at a
 * window of positions. torch sorts a contiguous float tensor on CPU with libstdc++'s std::sort
 * (introsort: median-of-three quicksort partitions down to blocks of 16, heapsort past a depth
 * limit, then one insertion-sort pass). Which of several equal values land inside a window such as
 * "the k largest" is decided by those moves, so the masks can only match mergekit's if the same
 * moves are made. But only the partitions of ranges that straddle a window boundary decide
 * membership: a range that lies wholly inside or outside the window keeps its members whatever
 * order it is later sorted into. Following just those ranges is a quickselect with introsort's
 * pivots: linear time, and the same members as the full sort.
 *
 * Memory: one 32-bit word per entry, not a float key plus an index. For non-negative floats the
 * order of the bit patterns read as integers is the float order, so a magnitude's bits are its
 * key (every NaN mapped to one key above infinity, since torch's comparator treats NaNs alike and
 * puts them last ascending). Only entries equal to one of the two boundary keys (the keys at the
 * window's first and last position, found first by a radix select) can be inside or outside; their
 * word is instead a flag, which boundary, and their ordinal among such entries in index order. The
 * comparisons, hence the moves, are those on the keys; the ordinals of the tied entries the window
 * collects say which of them are in, and every other entry is in when its key lies strictly
 * between the boundary keys.
 *
 * A caller that cannot hold the values whole (a delta computed chunk by chunk from inputs read in
 * ranges) fills the words with the keys itself, chunk by chunk (keys()), and passes them as its
 * values' kind plus KEYS: the window then works on them in place and never reads the values.
 *
 * Written from the algorithm's published behaviour (median of first+1, middle and last-1 moved to
 * first; Hoare partition of [first+1, last) around it; the left part keeps the pivot; blocks of at
 * most 16 are insertion-sorted, which is stable and never moves an entry out of its block).
 * Python checks this against torch's own kernel before using it (mergeflow/methods/introsort.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 16
#define TIED 0x80000000u   /* the word holds a tied entry's ordinal, not its key */
#define SECOND 0x40000000u /* ... tied with the second boundary key */
#define ORDINAL 0x3FFFFFFFu
#define NAN_KEY 0x7FFFFFFFu
#define NAN_KEY16 0x8000u /* half-precision keys fit in 16 bits, so their radix select is one pass */

enum Kind { BFLOAT16 = 0, FLOAT16 = 1, FLOAT32 = 2 };
#define KEYS 4 /* added to a kind: words already holding the keys of values of that kind */
#define INSIDE_IF_COLLECTED 2 /* an ``inside`` byte of a tied entry, until the replay says */

/* The sort key of entry i: the bits of |x|, every NaN alike and above infinity. */
static inline uint32_t magnitude_key(const void *data, int kind, int64_t i) {
    uint32_t bits;
    if (kind & KEYS)
        return ((const uint32_t *)data)[i];
    switch (kind) {
    case BFLOAT16:
        bits = ((const uint16_t *)data)[i] & 0x7FFFu;
        return bits > 0x7F80u ? NAN_KEY16 : bits;
    case FLOAT16:
        bits = ((const uint16_t *)data)[i] & 0x7FFFu;
        return bits > 0x7C00u ? NAN_KEY16 : bits;
    default:
        bits = ((const uint32_t *)data)[i] & 0x7FFFFFFFu;
        return bits > 0x7F800000u ? NAN_KEY : bits;
    }
}

typedef struct {
    uint32_t *words;
    uint8_t *tied_inside; /* bitmap over the tied entries' ordinals */
    uint32_t boundary[2];
    int64_t start, stop;
    int descending;
    int depth_exceeded;
} Window;

static inline uint32_t key(const Window *w, uint32_t word) {
    return (word & TIED) ? w->boundary[(word & SECOND) != 0] : word;
}

/* The order of torch's sort: "a goes before b". */
static inline int before(const Window *w, uint32_t a, uint32_t b) { return w->descending ? a > b : a < b; }

static inline int word_before(const Window *w, int64_t i, int64_t j) {
    return before(w, key(w, w->words[i]), key(w, w->words[j]));
}

static inline void swap(Window *w, int64_t i, int64_t j) {
    uint32_t word = w->words[i];
    w->words[i] = w->words[j];
    w->words[j] = word;
}

static void move_median_to_first(Window *w, int64_t result, int64_t a, int64_t b, int64_t c) {
    if (word_before(w, a, b)) {
        if (word_before(w, b, c))
            swap(w, result, b);
        else if (word_before(w, a, c))
            swap(w, result, c);
        else
            swap(w, result, a);
    } else if (word_before(w, a, c))
        swap(w, result, a);
    else if (word_before(w, b, c))
        swap(w, result, c);
    else
        swap(w, result, b);
}

/* Partition [first, last) around the median of three; returns the cut. */
static int64_t partition(Window *w, int64_t first, int64_t last) {
    move_median_to_first(w, first, first + 1, first + (last - first) / 2, last - 1);
    const uint32_t pivot = key(w, w->words[first]);
    int64_t left = first + 1, right = last;
    for (;;) {
        while (before(w, key(w, w->words[left]), pivot))
            ++left;
        --right;
        while (before(w, pivot, key(w, w->words[right])))
            --right;
        if (!(left < right))
            return left;
        swap(w, left, right);
        ++left;
    }
}

/* Entries at positions [first, last) are inside: record which tied ones they are. */
static void mark(Window *w, int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i)
        if (w->words[i] & TIED) {
            uint32_t ordinal = w->words[i] & ORDINAL;
            w->tied_inside[ordinal >> 3] |= (uint8_t)(1u << (ordinal & 7));
        }
}

/* A final block: sorted by insertion (stable), then the positions inside the window marked. */
static void finish_block(Window *w, int64_t first, int64_t last) {
    for (int64_t i = first + 1; i < last; ++i) {
        uint32_t word = w->words[i];
        uint32_t k = key(w, word);
        int64_t j = i;
        for (; j > first && before(w, k, key(w, w->words[j - 1])); --j)
            w->words[j] = w->words[j - 1];
        w->words[j] = word;
    }
    mark(w, first > w->start ? first : w->start, last < w->stop ? last : w->stop);
}

static void visit(Window *w, int64_t first, int64_t last, int depth) {
    while (!w->depth_exceeded) {
        if (last <= w->start || first >= w->stop)
            return;
        if (first >= w->start && last <= w->stop) {
            mark(w, first, last);
            return;
        }
        if (last - first <= BLOCK) {
            finish_block(w, first, last);
            return;
        }
        if (depth == 0) { /* introsort would heapsort this range: the caller sorts instead */
            w->depth_exceeded = 1;
            return;
        }
        --depth;
        int64_t cut = partition(w, first, last);
        visit(w, cut, last, depth);
        last = cut;
    }
}

/* A radix select of ascending ranks by the keys' two 16-bit halves: ``high`` is the histogram of
 * the upper halves, ``low`` that of the lower halves among keys with upper half ``low_upper``
 * (-1 before the first select), kept so that a second rank under the same upper half costs no pass. */
typedef struct {
    const void *data;
    int kind;
    int64_t n;
    int64_t high[65536], low[65536];
    int64_t low_upper;
} Select;

/* The key of ascending rank ``rank`` (0-based); *count entries have that key, *below have a smaller one. */
static uint32_t key_of_rank(Select *s, int64_t rank, int64_t *count, int64_t *below) {
    int64_t rest = rank;
    uint32_t upper = 0;
    while (rest >= s->high[upper])
        rest -= s->high[upper++];
    if (s->low_upper != (int64_t)upper) {
        memset(s->low, 0, sizeof s->low);
        for (int64_t i = 0; i < s->n; ++i) {
            uint32_t k = magnitude_key(s->data, s->kind, i);
            if ((k >> 16) == upper)
                ++s->low[k & 0xFFFFu];
        }
        s->low_upper = upper;
    }
    uint32_t lower = 0;
    while (rest >= s->low[lower])
        rest -= s->low[lower++];
    *count = s->low[lower];
    *below = rank - rest;
    return (upper << 16) | lower;
}

/* The window's boundary keys: those at its first (``key[0]``) and last position in the sorted
 * order, with how many entries hold each and how many the order puts before each. */
typedef struct {
    uint32_t key[2];
    int64_t count[2], before[2];
} Boundaries;

static void find_boundaries(Select *s, int64_t start, int64_t stop, int descending, Boundaries *b) {
    if ((s->kind & ~KEYS) == FLOAT32)
        for (int64_t i = 0; i < s->n; ++i)
            ++s->high[magnitude_key(s->data, s->kind, i) >> 16];
    else
        s->high[0] = s->n;
    int64_t positions[2] = {start, stop - 1};
    for (int side = 0; side < 2; ++side) {
        int64_t rank = descending ? s->n - 1 - positions[side] : positions[side], below;
        b->key[side] = key_of_rank(s, rank, &b->count[side], &below);
        b->before[side] = descending ? s->n - below - b->count[side] : below;
    }
}

static Select *new_select(const void *data, int kind, int64_t n) {
    Select *s = calloc(1, sizeof(Select));
    if (s != NULL) {
        s->data = data;
        s->kind = kind;
        s->n = n;
        s->low_upper = -1;
    }
    return s;
}

/* The arguments both entry points take, checked. */
static int parse_window_args(PyObject *args, unsigned long long *values, int *kind, long long *n, long long *start,
                             long long *stop, int *descending, unsigned long long *inside) {
    if (!PyArg_ParseTuple(args, "KiLLLpK", values, kind, n, start, stop, descending, inside))
        return 0;
    if ((*kind & ~KEYS) < BFLOAT16 || (*kind & ~KEYS) > FLOAT32 || *kind > (FLOAT32 | KEYS) || *n < 0 || *start < 0 || *stop > *n) {
        PyErr_SetString(PyExc_ValueError, "window: kind 0-2, plus 4 for keys, and 0 <= start, stop <= n");
        return 0;
    }
    return 1;
}

/* window(values, kind, n, start, stop, descending, inside) -> bool
 *
 * values: address of n contiguous bfloat16 (kind 0), float16 (1) or float32 (2), read only; or,
 * with KEYS added to the kind, of n 32-bit words that keys() filled, used as the scratch and
 * overwritten;
 * inside: address of n bytes, each set to 1 for an entry that torch.sort(|values| as float32)
 * puts at positions [start, stop), else 0. False, with ``inside`` undefined, when introsort
 * would have fallen back to heapsort on a range that decides membership, or more than 2**30
 * entries tie with a boundary (the caller then sorts). */
static PyObject *window(PyObject *self, PyObject *args) {
    unsigned long long values_address, inside_address;
    long long n, start, stop;
    int kind, descending;
    if (!parse_window_args(args, &values_address, &kind, &n, &start, &stop, &descending, &inside_address))
        return NULL;
    const void *values = (const void *)(uintptr_t)values_address;
    uint8_t *inside = (uint8_t *)(uintptr_t)inside_address;
    if (start >= stop) {
        memset(inside, 0, (size_t)n);
        Py_RETURN_TRUE;
    }
    Select *select = new_select(values, kind, n);
    uint32_t *words = kind & KEYS ? (uint32_t *)values : malloc((size_t)n * sizeof(uint32_t));
    uint8_t *tied_inside = NULL;
    int ok = 0, out_of_memory = select == NULL || words == NULL;
    if (!out_of_memory) {
        Py_BEGIN_ALLOW_THREADS
        Boundaries b;
        find_boundaries(select, start, stop, descending, &b);
        Window w = {words, NULL, {b.key[0], b.key[1]}, start, stop, descending, 0};
        int64_t tied = b.count[0] + (b.key[1] != b.key[0] ? b.count[1] : 0);
        if (tied <= (int64_t)ORDINAL + 1 && (tied_inside = calloc((size_t)(tied + 7) / 8, 1)) != NULL) {
            w.tied_inside = tied_inside;
            uint32_t lowest = w.boundary[0] < w.boundary[1] ? w.boundary[0] : w.boundary[1];
            uint32_t highest = w.boundary[0] ^ w.boundary[1] ^ lowest;
            /* Every entry's membership but the tied ones' is known from its key already; those
             * are numbered in index order, so one more pass over ``inside`` fills them in. */
            uint32_t ordinal = 0;
            for (int64_t i = 0; i < n; ++i) {
                uint32_t k = magnitude_key(values, kind, i);
                int tied_side = k == w.boundary[0] ? 0 : k == w.boundary[1] ? 1 : -1;
                inside[i] = tied_side >= 0 ? INSIDE_IF_COLLECTED : lowest < k && k < highest;
                words[i] = tied_side < 0 ? k : TIED | (tied_side ? SECOND : 0) | ordinal++;
            }
            int depth = 0;
            for (long long m = n; m > 1; m >>= 1)
                ++depth;
            visit(&w, 0, n, 2 * depth);
            if (!w.depth_exceeded) {
                ordinal = 0;
                for (int64_t i = 0; i < n; ++i)
                    if (inside[i] == INSIDE_IF_COLLECTED) {
                        inside[i] = (tied_inside[ordinal >> 3] >> (ordinal & 7)) & 1;
                        ++ordinal;
                    }
                ok = 1;
            }
        } else if (tied <= (int64_t)ORDINAL + 1)
            out_of_memory = 1;
        Py_END_ALLOW_THREADS
    }
    free(select);
    if (!(kind & KEYS))
        free(words);
    free(tied_inside);
    if (out_of_memory)
        return PyErr_NoMemory();
    return PyBool_FromLong(ok);
}

/* stable_window(values, kind, n, start, stop, descending, inside) -> None
 *
 * As window(), for a stable sort: entries equal to a boundary key take their positions in index
 * order, so the window holds a run of them and needs no replay (--fast-sparsify). A radix select
 * and one pass: linear time, no scratch beyond the select's histograms. */
static PyObject *stable_window(PyObject *self, PyObject *args) {
    unsigned long long values_address, inside_address;
    long long n, start, stop;
    int kind, descending;
    if (!parse_window_args(args, &values_address, &kind, &n, &start, &stop, &descending, &inside_address))
        return NULL;
    const void *values = (const void *)(uintptr_t)values_address;
    uint8_t *inside = (uint8_t *)(uintptr_t)inside_address;
    if (start >= stop) {
        memset(inside, 0, (size_t)n);
        Py_RETURN_NONE;
    }
    Select *select = new_select(values, kind, n);
    if (select == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    Boundaries b;
    find_boundaries(select, start, stop, descending, &b);
    /* Tied entries of key[side] hold positions before[side], before[side] + 1, ... in index order;
     * those at positions [start, stop) are in. */
    int64_t seen[2] = {0, 0};
    uint32_t lowest = b.key[0] < b.key[1] ? b.key[0] : b.key[1];
    uint32_t highest = b.key[0] ^ b.key[1] ^ lowest;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t k = magnitude_key(values, kind, i);
        int side = k == b.key[0] ? 0 : k == b.key[1] ? 1 : -1;
        if (side >= 0) {
            int64_t position = b.before[side] + seen[side]++;
            inside[i] = start <= position && position < stop;
        } else
            inside[i] = lowest < k && k < highest;
    }
    Py_END_ALLOW_THREADS
    free(select);
    Py_RETURN_NONE;
}

/* keys(values, kind, n, words) -> None
 *
 * Fills n 32-bit words with the sort keys of n contiguous values of kind 0-2, for window() of
 * that kind plus KEYS: a caller fills them chunk by chunk, so the values need never exist whole. */
static PyObject *keys(PyObject *self, PyObject *args) {
    unsigned long long values_address, words_address;
    long long n;
    int kind;
    if (!PyArg_ParseTuple(args, "KiLK", &values_address, &kind, &n, &words_address))
        return NULL;
    if (kind < BFLOAT16 || kind > FLOAT32 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "keys: kind 0-2 and n >= 0");
        return NULL;
    }
    const void *values = (const void *)(uintptr_t)values_address;
    uint32_t *words = (uint32_t *)(uintptr_t)words_address;
    Py_BEGIN_ALLOW_THREADS
    switch (kind) { /* a loop per kind, so each one vectorises */
    case BFLOAT16:
        for (int64_t i = 0; i < n; ++i)
            words[i] = magnitude_key(values, BFLOAT16, i);
        break;
    case FLOAT16:
        for (int64_t i = 0; i < n; ++i)
            words[i] = magnitude_key(values, FLOAT16, i);
        break;
    default:
        for (int64_t i = 0; i < n; ++i)
            words[i] = magnitude_key(values, FLOAT32, i);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"keys", keys, METH_VARARGS, "The sort keys of values, for window() of kind KEYS."},
    {"window", window, METH_VARARGS, "Entries an unstable torch CPU sort of magnitudes puts at positions [start, stop)."},
    {"stable_window", stable_window, METH_VARARGS, "Entries a stable sort of magnitudes puts at positions [start, stop)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_introsort", NULL, -1, methods};

PyMODINIT_FUNC PyInit__introsort(void) { return PyModule_Create(&module); }
