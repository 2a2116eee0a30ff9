/* Which entries torch's unstable CPU sort puts in a window of positions, without sorting.
 *
 * torch sorts a contiguous float tensor on CPU with libstdc++'s std::sort (introsort: median-of-three
 * quicksort partitions down to blocks of 16, heapsort past a depth limit, then one insertion-sort
 * pass) over (value, index) pairs. Which of several equal values land inside a window such as
 * "the k largest" is decided by those moves, so TIES' masks can only match mergekit's if the same
 * moves are made. But only the partitions of ranges that straddle a window boundary decide
 * membership: a range that lies wholly inside or outside the window keeps its members whatever
 * order it is later sorted into. Following just those ranges is a quickselect with introsort's
 * pivots: linear time, and the same members as the full sort.
 *
 * Written from the algorithm's published behaviour (median of first+1, middle and last-1 moved to
 * first; Hoare partition of [first+1, last) around it; the left part keeps the pivot; blocks of at
 * most 16 are insertion-sorted, which is stable and never moves an entry out of its block).
 * Python checks this against torch's own kernel before using it (mergeflow/methods/introsort.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 16

typedef struct {
    float *keys;
    uint32_t *index;
    uint8_t *inside;
    int64_t start, stop;
    int descending;
    int depth_exceeded;
} Window;

/* The order of torch's sort: "a goes before b". NaN goes last ascending and first descending. */
static inline int before(const Window *w, float a, float b) {
    if (w->descending)
        return (isnan(a) && !isnan(b)) || a > b;
    return (!isnan(a) && isnan(b)) || a < b;
}

static inline void swap(Window *w, int64_t i, int64_t j) {
    float key = w->keys[i];
    uint32_t index = w->index[i];
    w->keys[i] = w->keys[j];
    w->index[i] = w->index[j];
    w->keys[j] = key;
    w->index[j] = index;
}

static void move_median_to_first(Window *w, int64_t result, int64_t a, int64_t b, int64_t c) {
    const float *k = w->keys;
    if (before(w, k[a], k[b])) {
        if (before(w, k[b], k[c]))
            swap(w, result, b);
        else if (before(w, k[a], k[c]))
            swap(w, result, c);
        else
            swap(w, result, a);
    } else if (before(w, k[a], k[c]))
        swap(w, result, a);
    else if (before(w, k[b], k[c]))
        swap(w, result, c);
    else
        swap(w, result, b);
}

/* Partition [first, last) around the median of three; returns the cut. */
static int64_t partition(Window *w, int64_t first, int64_t last) {
    move_median_to_first(w, first, first + 1, first + (last - first) / 2, last - 1);
    const float pivot = w->keys[first];
    int64_t left = first + 1, right = last;
    for (;;) {
        while (before(w, w->keys[left], pivot))
            ++left;
        --right;
        while (before(w, pivot, w->keys[right]))
            --right;
        if (!(left < right))
            return left;
        swap(w, left, right);
        ++left;
    }
}

static void mark(Window *w, int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i)
        w->inside[w->index[i]] = 1;
}

/* A final block: sorted by insertion (stable), then the positions inside the window marked. */
static void finish_block(Window *w, int64_t first, int64_t last) {
    for (int64_t i = first + 1; i < last; ++i) {
        float key = w->keys[i];
        uint32_t index = w->index[i];
        int64_t j = i;
        for (; j > first && before(w, key, w->keys[j - 1]); --j) {
            w->keys[j] = w->keys[j - 1];
            w->index[j] = w->index[j - 1];
        }
        w->keys[j] = key;
        w->index[j] = index;
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

/* Put every key back where it started, so that the caller can sort the original arrangement. */
static void restore(Window *w, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        while (w->index[i] != (uint32_t)i)
            swap(w, i, w->index[i]);
}

/* window(keys, n, start, stop, descending, inside) -> bool
 *
 * keys: address of n contiguous float32 (reordered); inside: address of n zeroed bytes, set to 1
 * for the entries the sort puts at positions [start, stop). False, with the keys back in their
 * original order and nothing marked, when introsort would have fallen back to heapsort on a range
 * that decides membership (the caller then sorts). */
static PyObject *window(PyObject *self, PyObject *args) {
    unsigned long long keys, inside;
    long long n, start, stop;
    int descending;
    if (!PyArg_ParseTuple(args, "KLLLpK", &keys, &n, &start, &stop, &descending, &inside))
        return NULL;
    if (n < 0 || (unsigned long long)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "window: between 0 and 2**32 entries");
        return NULL;
    }
    Window w = {(float *)(uintptr_t)keys, NULL, (uint8_t *)(uintptr_t)inside, start, stop, descending, 0};
    if (n == 0 || start >= stop)
        Py_RETURN_TRUE;
    w.index = malloc((size_t)n * sizeof(uint32_t));
    if (w.index == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < n; ++i)
        w.index[i] = (uint32_t)i;
    int depth = 0;
    for (long long m = n; m > 1; m >>= 1)
        ++depth;
    visit(&w, 0, n, 2 * depth);
    if (w.depth_exceeded) {
        restore(&w, n);
        memset(w.inside, 0, (size_t)n);
    }
    Py_END_ALLOW_THREADS
    free(w.index);
    return PyBool_FromLong(!w.depth_exceeded);
}

static PyMethodDef methods[] = {
    {"window", window, METH_VARARGS, "Entries an unstable torch CPU sort puts at positions [start, stop)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_introsort", NULL, -1, methods};

PyMODINIT_FUNC PyInit__introsort(void) { return PyModule_Create(&module); }
