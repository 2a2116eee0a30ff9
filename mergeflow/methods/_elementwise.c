/* Per-element passes of the merge methods, natively: a sparsifier's mask applied to a task vector,
 * the combination of the sparse task vectors with the base (mergekit-semantics §7.6, steps 4-5),
 * slerp's normalised products and interpolation (§7.2), and linear's weighted sum (§7.1).
 *
 * mergekit runs the combination as a dozen whole-tensor torch operations: weighted deltas, a sign
 * election, masked sums over the models, a division and the base added back. Each rounds to the
 * merge dtype as torch does: float32 arithmetic, then round-to-nearest-even. These kernels make the
 * same float operations in the same order for each element and round where torch rounds, so they
 * give the same bits, without the tensor-sized temporaries and the slow bool and half-precision
 * reduction kernels. torch sums up to 16 rows over dim 0 one row after another from +0 (the first
 * level of its cascade holds 16), so a sum here is the same loop: at every position for up to 4
 * rows, and from 5 rows on up to the last whole block of four vectors, past which torch takes
 * another order (the caller combines those positions with torch). An entry the election drops adds its ±0 product there; here it adds
 * +0, and neither changes a sum that starts from +0.
 *
 * Only finite values are vouched for: NaN and inf bits depend on which torch kernel (vectorised
 * or not) made them. The kernels report a non-finite value, and the caller recomputes that tensor
 * with torch's operations. Python checks them against those operations on probes before using
 * them (mergeflow/methods/sparsify.py, task_arithmetic.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define MAX_MODELS 16 /* rows torch sums in a plain loop */
#define MAX_THREADS 256
#define MIN_PER_THREAD (1 << 18) /* fewer elements a thread would cost more than it saves */

enum Kind { BFLOAT16 = 0, FLOAT16 = 1, FLOAT32 = 2 };

static inline float from_bits(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint32_t to_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    if (exponent == 0) { /* zero or subnormal: mantissa * 2**-24, exact in float */
        float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        return from_bits(to_bits(magnitude) | sign);
    }
    if (exponent == 31)
        return from_bits(sign | 0x7F800000u | (mantissa << 13));
    return from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

/* Round to nearest, ties to even, as torch converts float32 to float16 (NaN is never kept). */
static inline uint16_t float_to_half(float value) {
    uint32_t bits = to_bits(value), sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7FFFFFFFu;
    if (magnitude >= 0x7F800000u)
        return (uint16_t)(sign | (magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u));
    if (magnitude >= 0x477FF000u) /* 65520 and above round to inf */
        return (uint16_t)(sign | 0x7C00u);
    if (magnitude < 0x38800000u) { /* below 2**-14: a subnormal, a multiple of 2**-24 */
        float scaled = from_bits(magnitude) * 16777216.0f; /* exact: a power of two */
        uint32_t whole = (uint32_t)scaled;
        float rest = scaled - (float)whole;
        if (rest > 0.5f || (rest == 0.5f && (whole & 1u)))
            ++whole;
        return (uint16_t)(sign | whole);
    }
    uint32_t half = (magnitude >> 13) - (112u << 10), rest = magnitude & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u)))
        ++half; /* a carry into the exponent is the right rounding, up to inf */
    return (uint16_t)(sign | half);
}

static inline float load(const void *data, int kind, int64_t i) {
    switch (kind) {
    case BFLOAT16:
        return from_bits((uint32_t)((const uint16_t *)data)[i] << 16);
    case FLOAT16:
        return half_to_float(((const uint16_t *)data)[i]);
    default:
        return ((const float *)data)[i];
    }
}

/* A float32 result rounded to the merge dtype and read back (float32 itself is unchanged). */
static inline float rounded(float value, int kind) {
    switch (kind) {
    case BFLOAT16: {
        uint32_t bits = to_bits(value);
        return from_bits(((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16) << 16);
    }
    case FLOAT16:
        return half_to_float(float_to_half(value));
    default:
        return value;
    }
}

static inline void store(void *data, int kind, int64_t i, float value) {
    switch (kind) {
    case BFLOAT16:
        ((uint16_t *)data)[i] = (uint16_t)(to_bits(value) >> 16); /* already rounded */
        break;
    case FLOAT16:
        ((uint16_t *)data)[i] = float_to_half(value);
        break;
    default:
        ((float *)data)[i] = value;
    }
}

static inline int is_finite(float value) { return (to_bits(value) & 0x7F800000u) != 0x7F800000u; }

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* The combination of elements [0, n); returns whether every result and every sum over the models
 * is finite. */
static ALWAYS_INLINE int combine_elements(int kind, int64_t n, const void *base, const void *const *deltas, const float *weights,
                                          Py_ssize_t models, int sign_consensus, int normalize, float fixed_divisor, void *out) {
    int all_finite = 1;
    float weighted[MAX_MODELS];
    for (int64_t i = 0; i < n; ++i) {
        float total = 0.0f;
        for (Py_ssize_t m = 0; m < models; ++m) {
            weighted[m] = rounded(load(deltas[m], kind, i) * weights[m], kind);
            total += weighted[m];
        }
        float mixed, divisor;
        if (sign_consensus) {
            /* The rounded sum has the same sign, and a zero sum elects +. All-ones masks, so
             * that the loop has no branch and vectorises. */
            uint32_t negative = 0u - (uint32_t)(total < 0.0f);
            mixed = 0.0f;
            divisor = 0.0f;
            for (Py_ssize_t m = 0; m < models; ++m) {
                uint32_t below = 0u - (uint32_t)(weighted[m] < 0.0f), above = 0u - (uint32_t)(weighted[m] > 0.0f);
                uint32_t keep = (below & negative) | (above & ~negative);
                mixed += from_bits(to_bits(weighted[m]) & keep);
                divisor += from_bits(to_bits(weights[m]) & keep);
            }
            mixed = rounded(mixed, kind);
            divisor = rounded(divisor, kind);
            divisor += (float)(divisor == 0.0f); /* 0 becomes 1; any other divisor gains +0 */
        } else {
            mixed = rounded(total, kind);
            divisor = fixed_divisor;
        }
        if (normalize)
            mixed = rounded(mixed / divisor, kind);
        float result = rounded(load(base, kind, i) + mixed, kind);
        /* A non-finite weighted delta makes the sum non-finite; the election may have dropped it
         * here, where torch's NaN * 0 would have kept it. */
        all_finite &= is_finite(total) & is_finite(result);
        store(out, kind, i, result);
    }
    return all_finite;
}

/* combine_elements with its kind, flags and (up to 4) model count fixed at compile time, so that
 * the loop over elements unrolls the models, has no branch, and vectorises. */
#define ELEMENTS(KIND, MODELS, CONSENSUS, NORMALIZE) \
    return combine_elements(KIND, n, base, deltas, weights, MODELS, CONSENSUS, NORMALIZE, fixed_divisor, out)
#define FOR_MODELS(KIND, CONSENSUS, NORMALIZE)         \
    switch (models) {                                 \
    case 1:                                           \
        ELEMENTS(KIND, 1, CONSENSUS, NORMALIZE);      \
    case 2:                                           \
        ELEMENTS(KIND, 2, CONSENSUS, NORMALIZE);      \
    case 3:                                           \
        ELEMENTS(KIND, 3, CONSENSUS, NORMALIZE);      \
    case 4:                                           \
        ELEMENTS(KIND, 4, CONSENSUS, NORMALIZE);      \
    default:                                          \
        ELEMENTS(KIND, models, CONSENSUS, NORMALIZE); \
    }
#define FOR_FLAGS(KIND)                  \
    if (sign_consensus) {                \
        if (normalize)                   \
            FOR_MODELS(KIND, 1, 1)       \
        else                             \
            FOR_MODELS(KIND, 1, 0)       \
    } else {                             \
        if (normalize)                   \
            FOR_MODELS(KIND, 0, 1)       \
        else                             \
            FOR_MODELS(KIND, 0, 0)       \
    }

static int combine_of_kind(int kind, int64_t n, const void *base, const void *const *deltas, const float *weights,
                           Py_ssize_t models, int sign_consensus, int normalize, float fixed_divisor, void *out) {
    switch (kind) {
    case BFLOAT16:
        FOR_FLAGS(BFLOAT16)
    case FLOAT16:
        FOR_FLAGS(FLOAT16)
    default:
        FOR_FLAGS(FLOAT32)
    }
}

/* How many threads to split n elements among: at most ``threads``, each with MIN_PER_THREAD. */
static int threads_for(int64_t n, int threads) {
    int64_t most = n / MIN_PER_THREAD;
    if (most < 1)
        most = 1;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    return most < threads ? (int)most : threads;
}

/* What one thread of a call does: elements [first, last), and whether every result there is
 * finite. Each kernel's part struct starts with one. */
typedef struct {
    int64_t first, last;
    int all_finite;
} Span;

/* Splits n elements among up to ``threads`` threads (this one included): part t is a copy of
 * ``whole`` (a part struct of ``part_size`` bytes) with its own span, in ``parts`` (room for
 * MAX_THREADS of them), and work(part) runs on its thread; a thread that cannot be started leaves
 * its part to this one. The parts write disjoint elements, so the bits do not depend on the split.
 * Returns whether every result was finite. Touches no Python object: call it without the GIL. */
static int run_parts(void *(*work)(void *), const void *whole, char *parts, size_t part_size, int64_t n, int threads) {
    const int count = threads_for(n, threads);
    for (int t = 0; t < count; ++t) {
        char *part = parts + (size_t)t * part_size;
        memcpy(part, whole, part_size);
        *(Span *)part = (Span){n * t / count, n * (t + 1) / count, 1};
    }
    pthread_t started[MAX_THREADS];
    int running[MAX_THREADS] = {0};
    for (int t = 1; t < count; ++t)
        running[t] = pthread_create(&started[t], NULL, work, parts + (size_t)t * part_size) == 0;
    work(parts);
    int all_finite = 1;
    for (int t = 0; t < count; ++t) {
        if (t > 0 && running[t])
            pthread_join(started[t], NULL);
        else if (t > 0)
            work(parts + (size_t)t * part_size);
        all_finite &= ((const Span *)(parts + (size_t)t * part_size))->all_finite;
    }
    return all_finite;
}

static inline size_t element_size(int kind) { return kind == FLOAT32 ? 4 : 2; }

/* A thread's part of a combine() call. */
typedef struct {
    Span span;
    int kind, sign_consensus, normalize;
    const char *base;
    const char *deltas[MAX_MODELS];
    const float *weights;
    Py_ssize_t models;
    float fixed_divisor;
    char *out;
} CombinePart;

static void *combine_part(void *argument) {
    CombinePart *p = argument;
    const size_t offset = (size_t)p->span.first * element_size(p->kind);
    const void *deltas[MAX_MODELS];
    for (Py_ssize_t m = 0; m < p->models; ++m)
        deltas[m] = p->deltas[m] + offset;
    p->span.all_finite = combine_of_kind(p->kind, p->span.last - p->span.first, p->base + offset, deltas, p->weights,
                                         p->models, p->sign_consensus, p->normalize, p->fixed_divisor, p->out + offset);
    return NULL;
}

/* combine(kind, n, base, deltas, weights, sign_consensus, normalize, divisor, out, threads) -> bool
 *
 * base, out: addresses of n values of the merge dtype (kind 0 bfloat16, 1 float16, 2 float32);
 * deltas: a tuple of such addresses, one per model (at most 16); weights: the models' weights,
 * already rounded to the merge dtype; divisor: without sign consensus, the divisor mergekit
 * computes from the weights alone. out = base + the (elected, optionally normalised) weighted sum
 * of the deltas, on up to ``threads`` threads. False when a result or a sum over the models is not
 * finite (``out`` then holds no meaning). */
static PyObject *combine(PyObject *self, PyObject *args) {
    int kind, sign_consensus, normalize, threads;
    long long n;
    unsigned long long base_address, out_address;
    PyObject *delta_addresses, *weight_values;
    double divisor_value;
    if (!PyArg_ParseTuple(args, "iLKO!O!ppdKi", &kind, &n, &base_address, &PyTuple_Type, &delta_addresses, &PyTuple_Type,
                          &weight_values, &sign_consensus, &normalize, &divisor_value, &out_address, &threads))
        return NULL;
    Py_ssize_t models = PyTuple_GET_SIZE(delta_addresses);
    if (kind < BFLOAT16 || kind > FLOAT32 || n < 0 || models < 1 || models > MAX_MODELS ||
        PyTuple_GET_SIZE(weight_values) != models || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "combine: kind 0-2, n >= 0, 1-16 deltas and one weight each, threads >= 1");
        return NULL;
    }
    float weights[MAX_MODELS];
    CombinePart whole = {{0, n, 1}, kind, sign_consensus, normalize, (const char *)(uintptr_t)base_address, {NULL},
                         weights, models, (float)divisor_value, (char *)(uintptr_t)out_address};
    for (Py_ssize_t m = 0; m < models; ++m) {
        whole.deltas[m] = (const char *)(uintptr_t)PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(delta_addresses, m));
        weights[m] = (float)PyFloat_AsDouble(PyTuple_GET_ITEM(weight_values, m));
    }
    if (PyErr_Occurred())
        return NULL;
    CombinePart parts[MAX_THREADS];
    int all_finite;
    Py_BEGIN_ALLOW_THREADS
    all_finite = run_parts(combine_part, &whole, (char *)parts, sizeof whole, n, threads);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(all_finite);
}

/* A thread's part of a masked() call. */
typedef struct {
    Span span;
    int kind;
    const char *values;
    const uint8_t *mask;
    char *out;
} MaskedPart;

static void *masked_part(void *argument) {
    MaskedPart *p = argument;
    const uint8_t *mask = p->mask;
    uint32_t all_finite = 1;
    if (p->kind == FLOAT32) {
        const uint32_t *values = (const uint32_t *)p->values, exponent = 0x7F800000u;
        uint32_t *out = (uint32_t *)p->out;
        for (int64_t i = p->span.first; i < p->span.last; ++i) {
            all_finite &= (values[i] & exponent) != exponent;
            out[i] = values[i] & ((0u - (uint32_t)(mask[i] != 0)) | 0x80000000u);
        }
    } else {
        const uint16_t *values = (const uint16_t *)p->values;
        const uint32_t exponent = p->kind == BFLOAT16 ? 0x7F80u : 0x7C00u;
        uint16_t *out = (uint16_t *)p->out;
        for (int64_t i = p->span.first; i < p->span.last; ++i) {
            all_finite &= (values[i] & exponent) != exponent;
            out[i] = (uint16_t)(values[i] & ((0u - (uint32_t)(mask[i] != 0)) | 0x8000u));
        }
    }
    p->span.all_finite = (int)all_finite;
    return NULL;
}

/* masked(kind, n, values, mask, out, threads) -> bool
 *
 * out = values * mask for a bool mask, as torch multiplies: a kept entry as it is, a dropped one as
 * a zero of its sign. values, out: addresses of n values of kind 0 (bfloat16), 1 (float16) or 2
 * (float32); mask: of n bytes, 0 or 1; on up to ``threads`` threads. False, with ``out`` of no
 * meaning, when a value is not finite (NaN * 1 and inf * 0 take their bits from torch's kernels). */
static PyObject *masked(PyObject *self, PyObject *args) {
    int kind, threads;
    long long n;
    unsigned long long values_address, mask_address, out_address;
    if (!PyArg_ParseTuple(args, "iLKKKi", &kind, &n, &values_address, &mask_address, &out_address, &threads))
        return NULL;
    if (kind < BFLOAT16 || kind > FLOAT32 || n < 0 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "masked: kind 0-2, n >= 0 and threads >= 1");
        return NULL;
    }
    const MaskedPart whole = {{0, n, 1}, kind, (const char *)(uintptr_t)values_address, (const uint8_t *)(uintptr_t)mask_address,
                              (char *)(uintptr_t)out_address};
    MaskedPart parts[MAX_THREADS];
    int all_finite;
    Py_BEGIN_ALLOW_THREADS
    all_finite = run_parts(masked_part, &whole, (char *)parts, sizeof whole, n, threads);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(all_finite);
}

/* A thread's part of a call on two tensors a, b with two float32 factors x, y. */
typedef struct {
    Span span;
    int kind;
    const char *a, *b;
    float x, y;
    char *out;
} PairPart;

/* out = x * a + y * b, each product rounded to float32, the sum rounded to the merge dtype. */
static ALWAYS_INLINE int interpolate_elements(int kind, const PairPart *p) {
    int all_finite = 1;
    for (int64_t i = p->span.first; i < p->span.last; ++i) {
        float result = rounded(p->x * load(p->a, kind, i) + p->y * load(p->b, kind, i), kind);
        all_finite &= is_finite(result);
        store(p->out, kind, i, result);
    }
    return all_finite;
}

/* out (float32) = (a / x) * (b / y), each step rounded to float32. */
static ALWAYS_INLINE int scaled_product_elements(int kind, const PairPart *p) {
    int all_finite = 1;
    float *out = (float *)p->out;
    for (int64_t i = p->span.first; i < p->span.last; ++i) {
        out[i] = (load(p->a, kind, i) / p->x) * (load(p->b, kind, i) / p->y);
        all_finite &= is_finite(out[i]);
    }
    return all_finite;
}

/* The kind fixed at compile time, so that each loop vectorises. */
#define FOR_KIND(ELEMENTS)                              \
    static void *ELEMENTS##_part(void *argument) {      \
        PairPart *p = argument;                         \
        switch (p->kind) {                              \
        case BFLOAT16:                                  \
            p->span.all_finite = ELEMENTS(BFLOAT16, p); \
            break;                                      \
        case FLOAT16:                                   \
            p->span.all_finite = ELEMENTS(FLOAT16, p);  \
            break;                                      \
        default:                                        \
            p->span.all_finite = ELEMENTS(FLOAT32, p);  \
        }                                               \
        return NULL;                                    \
    }
FOR_KIND(interpolate_elements)
FOR_KIND(scaled_product_elements)

/* Parses (kind, n, a, b, x, y, out, threads) and runs work over the elements on up to ``threads``
 * threads; returns whether every result is finite. */
static PyObject *run_pair(PyObject *args, void *(*work)(void *), const char *name) {
    int kind, threads;
    long long n;
    unsigned long long a_address, b_address, out_address;
    float x, y;
    if (!PyArg_ParseTuple(args, "iLKKffKi", &kind, &n, &a_address, &b_address, &x, &y, &out_address, &threads))
        return NULL;
    if (kind < BFLOAT16 || kind > FLOAT32 || n < 0 || threads < 1) {
        PyErr_Format(PyExc_ValueError, "%s: kind 0-2, n >= 0 and threads >= 1", name);
        return NULL;
    }
    const PairPart whole = {{0, n, 1}, kind, (const char *)(uintptr_t)a_address, (const char *)(uintptr_t)b_address, x, y,
                            (char *)(uintptr_t)out_address};
    PairPart parts[MAX_THREADS];
    int all_finite;
    Py_BEGIN_ALLOW_THREADS
    all_finite = run_parts(work, &whole, (char *)parts, sizeof whole, n, threads);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(all_finite);
}

/* interpolate(kind, n, a, b, x, y, out, threads) -> bool
 *
 * out = x * a + y * b, as torch computes ``x * a.float() + y * b.float()`` and rounds it to the
 * merge dtype: a, b, out are addresses of n values of kind 0 (bfloat16), 1 (float16) or 2
 * (float32). False, with ``out`` of no meaning, when a result is not finite. */
static PyObject *interpolate(PyObject *self, PyObject *args) { return run_pair(args, interpolate_elements_part, "interpolate"); }

/* scaled_products(kind, n, a, b, x, y, out, threads) -> bool
 *
 * out = (a / x) * (b / y) in float32, as torch computes ``(a.float() / x) * (b.float() / y)``:
 * a, b of the merge dtype, out n float32 values. False, with ``out`` of no meaning, when a
 * product is not finite. */
static PyObject *scaled_products(PyObject *self, PyObject *args) { return run_pair(args, scaled_product_elements_part, "scaled_products"); }

/* torch's addcmul_ multiplies and adds in one fused step (its vector kernels are built with
 * contraction, and the tail's scalar code too); fmaf() is that step, and on x86 it is an
 * instruction only where the CPU has FMA, so linear's kernel is built for it and used where the
 * CPU reports it (elsewhere torch's operations run). */
#if defined(__x86_64__) || defined(__i386__)
#define FMA_TARGET __attribute__((target("avx2,fma")))
static int fma_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
#define FMA_TARGET
static int fma_available(void) { return 1; }
#endif

#define MAX_SUMMANDS 64
#define SUM_BLOCK 512 /* elements summed at a time, in a float32 accumulator on the stack */

/* A thread's part of a weighted_sum() call. */
typedef struct {
    Span span;
    int kind, normalize;
    const char *const *inputs;
    const float *weights;
    Py_ssize_t count;
    float divisor;
    char *out;
} SumPart;

static FMA_TARGET int weighted_sum_elements(int kind, const SumPart *p) {
    int all_finite = 1;
    float acc[SUM_BLOCK];
    for (int64_t start = p->span.first; start < p->span.last; start += SUM_BLOCK) {
        const int64_t size = p->span.last - start < SUM_BLOCK ? p->span.last - start : SUM_BLOCK;
        for (int64_t j = 0; j < size; ++j)
            acc[j] = 0.0f;
        for (Py_ssize_t m = 0; m < p->count; ++m) {
            const float weight = p->weights[m];
            for (int64_t j = 0; j < size; ++j)
                acc[j] = fmaf(load(p->inputs[m], kind, start + j), weight, acc[j]);
        }
        for (int64_t j = 0; j < size; ++j) {
            float result = rounded(p->normalize ? acc[j] / p->divisor : acc[j], kind);
            all_finite &= is_finite(result);
            store(p->out, kind, start + j, result);
        }
    }
    return all_finite;
}

static void *weighted_sum_part(void *argument) {
    SumPart *p = argument;
    switch (p->kind) {
    case BFLOAT16:
        p->span.all_finite = weighted_sum_elements(BFLOAT16, p);
        break;
    case FLOAT16:
        p->span.all_finite = weighted_sum_elements(FLOAT16, p);
        break;
    default:
        p->span.all_finite = weighted_sum_elements(FLOAT32, p);
    }
    return NULL;
}

/* weighted_sum(kind, n, inputs, weights, normalize, divisor, out, threads) -> bool or None
 *
 * out = (+0 + inputs[0] * weights[0] + inputs[1] * weights[1] + ...) [/ divisor], in float32, one
 * fused multiply-add per input in order as torch's addcmul_ makes them, rounded to the merge dtype
 * once: inputs is a tuple of addresses of n values of kind 0 (bfloat16), 1 (float16) or 2
 * (float32), at most 64; weights their float32 weights. False, with ``out`` of no meaning, when a
 * result is not finite; None when this CPU has no fused multiply-add. */
static PyObject *weighted_sum(PyObject *self, PyObject *args) {
    int kind, normalize, threads;
    long long n;
    unsigned long long out_address;
    PyObject *input_addresses, *weight_values;
    float divisor;
    if (!PyArg_ParseTuple(args, "iLO!O!pfKi", &kind, &n, &PyTuple_Type, &input_addresses, &PyTuple_Type, &weight_values,
                          &normalize, &divisor, &out_address, &threads))
        return NULL;
    const Py_ssize_t count = PyTuple_GET_SIZE(input_addresses);
    if (kind < BFLOAT16 || kind > FLOAT32 || n < 0 || count < 1 || count > MAX_SUMMANDS ||
        PyTuple_GET_SIZE(weight_values) != count || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "weighted_sum: kind 0-2, n >= 0, 1-64 inputs and one weight each, threads >= 1");
        return NULL;
    }
    if (!fma_available())
        Py_RETURN_NONE;
    const char *inputs[MAX_SUMMANDS];
    float weights[MAX_SUMMANDS];
    for (Py_ssize_t m = 0; m < count; ++m) {
        inputs[m] = (const char *)(uintptr_t)PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(input_addresses, m));
        weights[m] = (float)PyFloat_AsDouble(PyTuple_GET_ITEM(weight_values, m));
    }
    if (PyErr_Occurred())
        return NULL;
    const SumPart whole = {{0, n, 1}, kind, normalize, inputs, weights, count, divisor, (char *)(uintptr_t)out_address};
    SumPart parts[MAX_THREADS];
    int all_finite;
    Py_BEGIN_ALLOW_THREADS
    all_finite = run_parts(weighted_sum_part, &whole, (char *)parts, sizeof whole, n, threads);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(all_finite);
}

static PyMethodDef methods[] = {
    {"masked", masked, METH_VARARGS, "values * a bool mask."},
    {"combine", combine, METH_VARARGS, "base + the weighted, optionally sign-elected and normalised sum of the deltas."},
    {"interpolate", interpolate, METH_VARARGS, "x * a + y * b, rounded to the merge dtype."},
    {"scaled_products", scaled_products, METH_VARARGS, "(a / x) * (b / y) in float32."},
    {"weighted_sum", weighted_sum, METH_VARARGS, "The inputs' weighted sum by fused multiply-adds, optionally divided."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_elementwise", NULL, -1, methods};

PyMODINIT_FUNC PyInit__elementwise(void) { return PyModule_Create(&module); }
