/* The whole Min-unit, forward and backward, for float32 maps in channels-last memory:
 *
 *     out = min(ReLU(IN(v)), ReLU(IN(g))),   v = w_v * x,  g = w_g * x   (depthwise, k x k, stride s)
 *
 * Sample n of a map is an (h*w x c) row-major slab, so every depthwise tap and every
 * per-channel sum is a run of contiguous, vectorisable operations over the channels of one
 * pixel. The batch is split across OpenMP threads, a sample per iteration. A sample's filter
 * outputs live only in a per-thread scratch slab that stays in the L2 cache: the forward pass
 * reads x and writes the output; the backward pass recomputes v and g from x (18 multiply-adds
 * an element, cheaper than storing and re-reading them), then reads the output gradient and
 * writes x's. Full-size maps cross main memory about once per direction, where separate
 * kernels (two convs, two instance norms, ReLUs, a minimum, and their backward passes) cross it
 * a dozen times.
 *
 * Filters come as (k*k x c) tap-major arrays. stats holds, per sample, four runs of c floats:
 * mean(v), 1/sqrt(var(v)+eps), mean(g), 1/sqrt(var(g)+eps), with the biased variance (what
 * instance norm normalises with). Per-channel sums run in float over blocks of pixels and in
 * double across blocks; the filter gradients per sample in float, then per thread in double,
 * then over threads in a fixed order, so results do not depend on scheduling.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
#endif

typedef struct {
    long height, width, channels, out_height, out_width, kernel, stride, pad;
} Geometry;

#define ROW(ptr, p, c) ((ptr) + (size_t)(p) * (size_t)(c))

static Geometry geometry(long height, long width, long channels, long kernel, long stride)
{
    const long pad = kernel / 2;
    Geometry geo = {height, width, channels, (height + 2 * pad - kernel) / stride + 1,
                    (width + 2 * pad - kernel) / stride + 1, kernel, stride, pad};
    return geo;
}

/* Channels are processed CHUNK at a time as GCC/Clang vectors (one AVX register; two SSE
 * ones), loaded and stored with memcpy, which compiles to unaligned vector moves. `width` is
 * CHUNK except for the last, partial chunk of a pixel. */
#define CHUNK 8
#define MAX_KERNEL 7  /* the widest filter the kernel takes: 7 x 7 */
#define INLINE static inline __attribute__((always_inline))
typedef float vec __attribute__((vector_size(CHUNK * sizeof(float))));
typedef int ivec __attribute__((vector_size(CHUNK * sizeof(int))));

INLINE vec load(const float *p, int width)
{
    vec v = {0};
    memcpy(&v, p, (size_t)width * sizeof(float));
    return v;
}

INLINE void store(float *p, vec v, int width) { memcpy(p, &v, (size_t)width * sizeof(float)); }

/* The taps (i, j) of a k x k window at output (oy, ox) that fall inside the input. */
typedef struct { long y0, x0, i_lo, i_hi, j_lo, j_hi; } Window;

INLINE Window window(const Geometry *geo, long oy, long ox)
{
    const long y0 = oy * geo->stride - geo->pad, x0 = ox * geo->stride - geo->pad;
    Window win = {y0, x0, y0 < 0 ? -y0 : 0, geo->height - y0 < geo->kernel ? geo->height - y0 : geo->kernel,
                  x0 < 0 ? -x0 : 0, geo->width - x0 < geo->kernel ? geo->width - x0 : geo->kernel};
    return win;
}

/* Both depthwise convolutions at one output pixel, channels [k0, k0 + width). */
INLINE void convolve_pixel(const float *x, const float *w_v, const float *w_g, float *v, float *g,
                           const Geometry *geo, Window win, long k0, int width)
{
    const long c = geo->channels;
    vec acc_v = {0}, acc_g = {0};
    for (long i = win.i_lo; i < win.i_hi; ++i)
        for (long j = win.j_lo; j < win.j_hi; ++j) {
            const long t = i * geo->kernel + j;
            const vec xq = load(ROW(x, (win.y0 + i) * geo->width + win.x0 + j, c) + k0, width);
            acc_v += xq * load(ROW(w_v, t, c) + k0, width);
            acc_g += xq * load(ROW(w_g, t, c) + k0, width);
        }
    store(v + k0, acc_v, width);
    store(g + k0, acc_g, width);
}

/* Both depthwise convolutions of one sample (zero padding k/2) into v and g. */
static void convolve(const float *restrict x, const float *restrict w_v, const float *restrict w_g,
                     float *restrict v, float *restrict g, const Geometry *geo)
{
    const long c = geo->channels;
    for (long oy = 0; oy < geo->out_height; ++oy)
        for (long ox = 0; ox < geo->out_width; ++ox) {
            const Window win = window(geo, oy, ox);
            const long p = oy * geo->out_width + ox;
            long k0 = 0;
            for (; k0 + CHUNK <= c; k0 += CHUNK) convolve_pixel(x, w_v, w_g, ROW(v, p, c), ROW(g, p, c), geo, win, k0, CHUNK);
            if (k0 < c) convolve_pixel(x, w_v, w_g, ROW(v, p, c), ROW(g, p, c), geo, win, k0, (int)(c - k0));
        }
}

/* Per-channel sums run in float over blocks of BLOCK pixels (vectorised 8 floats wide), and
 * the block sums in double: float-fast, and accurate to double rounding of float blocks. */
#define BLOCK 32

INLINE long block_end(long p0, long hw) { return p0 + BLOCK < hw ? p0 + BLOCK : hw; }

/* sum[k] += part[k] for the block just summed, then part[k] = 0 for the next one. */
static void flush(double *restrict sum, float *restrict part, long count)
{
    for (long k = 0; k < count; ++k) {
        sum[k] += part[k];
        part[k] = 0.0f;
    }
}

static void channel_means(const float *restrict x, long hw, long c, double *restrict sum, float *restrict part,
                          float *restrict mean)
{
    memset(sum, 0, sizeof(double) * (size_t)c);
    memset(part, 0, sizeof(float) * (size_t)c);
    for (long p0 = 0; p0 < hw; p0 += BLOCK) {
        for (long p = p0; p < block_end(p0, hw); ++p) {
            const float *restrict row = ROW(x, p, c);
            for (long k = 0; k < c; ++k) part[k] += row[k];
        }
        flush(sum, part, c);
    }
    for (long k = 0; k < c; ++k) mean[k] = (float)(sum[k] / (double)hw);
}

static void channel_scales(const float *restrict x, const float *restrict mean, long hw, long c, float eps,
                           double *restrict sum, float *restrict part, float *restrict scale)
{
    memset(sum, 0, sizeof(double) * (size_t)c);
    memset(part, 0, sizeof(float) * (size_t)c);
    for (long p0 = 0; p0 < hw; p0 += BLOCK) {
        for (long p = p0; p < block_end(p0, hw); ++p) {
            const float *restrict row = ROW(x, p, c);
            for (long k = 0; k < c; ++k) {
                const float centred = row[k] - mean[k];
                part[k] += centred * centred;
            }
        }
        flush(sum, part, c);
    }
    for (long k = 0; k < c; ++k) scale[k] = (float)(1.0 / sqrt(sum[k] / (double)hw + (double)eps));
}

/* The output where the two normalised values are a and b: min(a, b) clamped at 0, NaN kept. */
static inline float relu_min(float a, float b)
{
    const float m = (a < b || a != a) ? a : b;
    return (m > 0.0f || m != m) ? m : 0.0f;
}

/* One sample: both filters, their statistics, then the output. */
static void forward_sample(const float *restrict x, const float *restrict w_v, const float *restrict w_g,
                           float *restrict out, float *restrict stats, float *restrict v, float *restrict g,
                           double *restrict sum, float *restrict part, const Geometry *geo, float eps)
{
    const long c = geo->channels, hw = geo->out_height * geo->out_width;
    float *restrict mean_v = stats, *restrict scale_v = stats + c;
    float *restrict mean_g = stats + 2 * c, *restrict scale_g = stats + 3 * c;
    convolve(x, w_v, w_g, v, g, geo);
    channel_means(v, hw, c, sum, part, mean_v);
    channel_scales(v, mean_v, hw, c, eps, sum, part, scale_v);
    channel_means(g, hw, c, sum, part, mean_g);
    channel_scales(g, mean_g, hw, c, eps, sum, part, scale_g);
    for (long p = 0; p < hw; ++p) {
        const float *restrict vr = ROW(v, p, c), *restrict gr = ROW(g, p, c);
        float *restrict orow = ROW(out, p, c);
        for (long k = 0; k < c; ++k)
            orow[k] = relu_min((vr[k] - mean_v[k]) * scale_v[k], (gr[k] - mean_g[k]) * scale_g[k]);
    }
}

int minnets_min_unit_forward(const float *x, const float *w_v, const float *w_g, float *out, float *stats,
                             long batch, long height, long width, long channels, long kernel, long stride,
                             float eps, int threads)
{
    const Geometry geo = geometry(height, width, channels, kernel, stride);
    const size_t in_size = (size_t)(height * width * channels);
    const size_t out_size = (size_t)(geo.out_height * geo.out_width * channels);
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *scratch = malloc(sizeof(float) * (2 * out_size + (size_t)channels));
        double *sum = malloc(sizeof(double) * (size_t)channels);
        failed = scratch == NULL || sum == NULL;
        #pragma omp for schedule(static)
        for (long n = 0; n < batch; ++n) {
            if (failed) continue;
            forward_sample(x + n * in_size, w_v, w_g, out + n * out_size, stats + n * 4 * (size_t)channels,
                           scratch, scratch + out_size, sum, scratch + 2 * out_size, &geo, eps);
        }
        free(scratch);
        free(sum);
    }
    return failed;
}

/* How much of the output gradient reaches a and b, PyTorch's conventions: none where the
 * output is 0, all of it to the smaller input, half to each on a tie. Written as arithmetic
 * so that the loops vectorise. */
static inline void route(float a, float b, float grad, float *to_a, float *to_b)
{
    const float through = (a < b ? a : b) > 0.0f ? grad : 0.0f;
    const float tie = 0.5f * (float)(a == b);
    *to_a = through * ((float)(a < b) + tie);
    *to_b = through * ((float)(b < a) + tie);
}

/* One sample of instance norm's backward, in place: v and g (the filter outputs) become the
 * gradients reaching them, scale * (d - mean(d) - y * mean(d * y)), where d is the part of the
 * output gradient that reaches the normalised map y. */
static void norm_backward(const float *restrict grad, float *restrict v, float *restrict g,
                          const float *restrict stats, long hw, long c, double *restrict sums,
                          float *restrict part, float *restrict coef)
{
    const float *restrict mean_v = stats, *restrict scale_v = stats + c;
    const float *restrict mean_g = stats + 2 * c, *restrict scale_g = stats + 3 * c;
    float *restrict sum_v = part, *restrict dot_v = part + c, *restrict sum_g = part + 2 * c, *restrict dot_g = part + 3 * c;
    memset(sums, 0, sizeof(double) * 4 * (size_t)c);
    memset(part, 0, sizeof(float) * 4 * (size_t)c);
    for (long p0 = 0; p0 < hw; p0 += BLOCK) {
        for (long p = p0; p < block_end(p0, hw); ++p) {
            const float *restrict gr = ROW(grad, p, c), *restrict vr = ROW(v, p, c), *restrict wr = ROW(g, p, c);
            for (long k = 0; k < c; ++k) {
                const float a = (vr[k] - mean_v[k]) * scale_v[k], b = (wr[k] - mean_g[k]) * scale_g[k];
                float to_a, to_b;
                route(a, b, gr[k], &to_a, &to_b);
                sum_v[k] += to_a;
                dot_v[k] += to_a * a;
                sum_g[k] += to_b;
                dot_g[k] += to_b * b;
            }
        }
        flush(sums, part, 4 * c);
    }
    for (long k = 0; k < 4 * c; ++k) coef[k] = (float)(sums[k] / (double)hw);
    const float *restrict mean_dv = coef, *restrict mean_dv_a = coef + c;
    const float *restrict mean_dg = coef + 2 * c, *restrict mean_dg_b = coef + 3 * c;
    for (long p = 0; p < hw; ++p) {
        const float *restrict gr = ROW(grad, p, c);
        float *restrict vr = ROW(v, p, c), *restrict wr = ROW(g, p, c);
        for (long k = 0; k < c; ++k) {
            const float a = (vr[k] - mean_v[k]) * scale_v[k], b = (wr[k] - mean_g[k]) * scale_g[k];
            float to_a, to_b;
            route(a, b, gr[k], &to_a, &to_b);
            vr[k] = scale_v[k] * (to_a - mean_dv[k] - a * mean_dv_a[k]);
            wr[k] = scale_g[k] * (to_b - mean_dg[k] - b * mean_dg_b[k]);
        }
    }
}

/* Along one axis: the output positions o whose window covers input position `at`, with the
 * tap index in each (o * stride + tap - pad = at). Tabulated once per call, to keep integer
 * division out of the pixel loop. */
typedef struct { long count, out[MAX_KERNEL], tap[MAX_KERNEL]; } AxisCover;

static void axis_covers(AxisCover *covers, long size, long out_size, const Geometry *geo)
{
    for (long at = 0; at < size; ++at) {
        AxisCover *cov = covers + at;
        cov->count = 0;
        for (long tap = 0; tap < geo->kernel; ++tap) {
            const long shifted = at + geo->pad - tap;  /* = o * stride */
            if (shifted < 0 || shifted % geo->stride != 0 || shifted / geo->stride >= out_size) continue;
            cov->out[cov->count] = shifted / geo->stride;
            cov->tap[cov->count++] = tap;
        }
    }
}

/* The output pixels p whose window covers an input pixel, and the tap t it is in each. */
typedef struct { long count, p[MAX_KERNEL * MAX_KERNEL], t[MAX_KERNEL * MAX_KERNEL]; } Cover;

INLINE Cover cover(const AxisCover *rows, const AxisCover *cols, const Geometry *geo)
{
    Cover cov;
    cov.count = 0;
    for (long a = 0; a < rows->count; ++a)
        for (long b = 0; b < cols->count; ++b) {
            cov.p[cov.count] = rows->out[a] * geo->out_width + cols->out[b];
            cov.t[cov.count++] = rows->tap[a] * geo->kernel + cols->tap[b];
        }
    return cov;
}

/* Both convolutions' backward at one input pixel q, channels [k0, k0 + width): x's gradient,
 * gathered from the output pixels whose window covers q (written once, zeroed where a ReLU
 * before the unit was off), and those pairs' terms of the filter gradients. */
INLINE void convolve_backward_pixel(const float *x, const float *d_v, const float *d_g, const float *w_v,
                                    const float *w_g, float *d_x, float *dw_v, float *dw_g, long c, long q,
                                    const Cover *cov, long k0, int width, int input_is_relu)
{
    const vec xq = load(ROW(x, q, c) + k0, width);
    vec acc = {0};
    for (long n = 0; n < cov->count; ++n) {
        const long p = cov->p[n], t = cov->t[n];
        const vec dv = load(ROW(d_v, p, c) + k0, width), dg = load(ROW(d_g, p, c) + k0, width);
        acc += dv * load(ROW(w_v, t, c) + k0, width) + dg * load(ROW(w_g, t, c) + k0, width);
        store(ROW(dw_v, t, c) + k0, load(ROW(dw_v, t, c) + k0, width) + dv * xq, width);
        store(ROW(dw_g, t, c) + k0, load(ROW(dw_g, t, c) + k0, width) + dg * xq, width);
    }
    if (input_is_relu) acc = (vec)((ivec)acc & (xq > 0.0f));
    store(ROW(d_x, q, c) + k0, acc, width);
}

static void convolve_backward(const float *restrict x, const float *restrict d_v, const float *restrict d_g,
                              const float *restrict w_v, const float *restrict w_g, float *restrict d_x,
                              float *restrict dw_v, float *restrict dw_g, const Geometry *geo,
                              const AxisCover *rows, const AxisCover *cols, int input_is_relu)
{
    const long c = geo->channels, taps = geo->kernel * geo->kernel;
    memset(dw_v, 0, sizeof(float) * (size_t)(taps * c));
    memset(dw_g, 0, sizeof(float) * (size_t)(taps * c));
    for (long iy = 0; iy < geo->height; ++iy)
        for (long ix = 0; ix < geo->width; ++ix) {
            const Cover cov = cover(rows + iy, cols + ix, geo);
            const long q = iy * geo->width + ix;
            long k0 = 0;
            for (; k0 + CHUNK <= c; k0 += CHUNK)
                convolve_backward_pixel(x, d_v, d_g, w_v, w_g, d_x, dw_v, dw_g, c, q, &cov, k0, CHUNK, input_is_relu);
            if (k0 < c)
                convolve_backward_pixel(x, d_v, d_g, w_v, w_g, d_x, dw_v, dw_g, c, q, &cov, k0, (int)(c - k0),
                                        input_is_relu);
        }
}

/* The 1x1 expansion (BatchNorm folded in) whose ReLU output is the unit's input, for fusing
 * its backward pass: while u, the gradient at that ReLU output (already zero where the ReLU
 * was off), is in the cache, x's gradient through the folded weights, folded^T u, and the
 * sums u^T [x - mean, 1] that the BatchNorm's backward needs are computed from it, so u is
 * never written to memory. Both are small matrix products, done in register tiles. */
typedef struct {
    const float *rows;   /* (pixels, d_in + 1): [x - mean, 1] */
    const float *folded; /* (channels, padded_in): folded weights, zero beyond d_in */
    float *grad_rows;    /* (pixels, d_in) out: folded^T u */
    long d_in, padded_in, padded_rows;  /* padded_in: d_in up to 16s; padded_rows: d_in + 1 up to 8s */
} Expansion;

#define SUM_TILE_M 4  /* the sums' register tile: 4 channels x up to 3 vectors of row entries */

/* sums[m][j] += u[p][m] * rows[p][j] for p in [p0, p1), channels [m0, m0 + mr), entries
 * [j0, j0 + 8 * jn), accumulated in float registers, then added to the double sums. */
INLINE void expansion_sums_tile(const float *restrict u, const float *restrict rows, double *restrict sums, long c,
                                long width, long p0, long p1, long m0, int mr, long j0, int jn)
{
    vec acc[SUM_TILE_M][3] = {{{0}}};
    for (long p = p0; p < p1; ++p) {
        vec r[3];
        for (int jv = 0; jv < jn; ++jv) r[jv] = load(ROW(rows, p, width) + j0 + CHUNK * jv, CHUNK);
        for (int mi = 0; mi < mr; ++mi) {
            const float up = ROW(u, p, c)[m0 + mi];
            for (int jv = 0; jv < jn; ++jv) acc[mi][jv] += up * r[jv];
        }
    }
    for (int mi = 0; mi < mr; ++mi)
        for (int jv = 0; jv < jn; ++jv)
            for (int l = 0; l < CHUNK; ++l) ROW(sums, m0 + mi, width)[j0 + CHUNK * jv + l] += acc[mi][jv][l];
}

/* Dispatch to tiles with a compile-time shape, so that the accumulators live in registers. */
INLINE void expansion_sums_block(const float *u, const float *rows, double *sums, long c, long width, long p0,
                                 long p1)
{
    for (long m0 = 0; m0 < c; m0 += SUM_TILE_M)
        for (long j0 = 0; j0 < width; j0 += 3 * CHUNK) {
            const long left = (width - j0) / CHUNK;
            const int full = c - m0 >= SUM_TILE_M;
            if (left >= 3) {
                if (full) expansion_sums_tile(u, rows, sums, c, width, p0, p1, m0, SUM_TILE_M, j0, 3);
                else for (long m = m0; m < c; ++m) expansion_sums_tile(u, rows, sums, c, width, p0, p1, m, 1, j0, 3);
            } else if (left == 2) {
                if (full) expansion_sums_tile(u, rows, sums, c, width, p0, p1, m0, SUM_TILE_M, j0, 2);
                else for (long m = m0; m < c; ++m) expansion_sums_tile(u, rows, sums, c, width, p0, p1, m, 1, j0, 2);
            } else {
                if (full) expansion_sums_tile(u, rows, sums, c, width, p0, p1, m0, SUM_TILE_M, j0, 1);
                else for (long m = m0; m < c; ++m) expansion_sums_tile(u, rows, sums, c, width, p0, p1, m, 1, j0, 1);
            }
        }
}

#define GATHER_TILE_P 4  /* x's gradient: a register tile of 4 pixels x 16 inputs */

/* grad_rows[p][j] = sum_m u[p][m] * folded[m][j] for pixels [p0, p0 + pn), inputs [j0, j0 + 16). */
INLINE void expansion_gather_tile(const float *restrict u, const Expansion *e, float *restrict grad_rows, long c,
                                  long p0, int pn, long j0)
{
    vec acc[GATHER_TILE_P][2] = {{{0}}};
    for (long m = 0; m < c; ++m) {
        const vec f0 = load(ROW(e->folded, m, e->padded_in) + j0, CHUNK);
        const vec f1 = load(ROW(e->folded, m, e->padded_in) + j0 + CHUNK, CHUNK);
        for (int pi = 0; pi < pn; ++pi) {
            const float up = ROW(u, p0 + pi, c)[m];
            acc[pi][0] += up * f0;
            acc[pi][1] += up * f1;
        }
    }
    for (int pi = 0; pi < pn; ++pi) {
        float *restrict out = ROW(grad_rows, p0 + pi, e->d_in) + j0;
        const long left = e->d_in - j0;
        if (left >= 2 * CHUNK) {
            store(out, acc[pi][0], CHUNK);
            store(out + CHUNK, acc[pi][1], CHUNK);
        } else {
            float tile[2 * CHUNK];
            memcpy(tile, acc[pi], sizeof(tile));
            for (long l = 0; l < left; ++l) out[l] = tile[l];
        }
    }
}

/* One sample of the expansion's backward; `padded` is a per-thread (hw, padded_rows) buffer. */
static void expansion_backward(const float *restrict u, const float *restrict rows, float *restrict grad_rows,
                               double *restrict sums, float *restrict padded, const Expansion *e, long hw, long c)
{
    const long width = e->d_in + 1;
    for (long p = 0; p < hw; ++p) {  /* rows with zero entries up to a whole vector */
        memcpy(ROW(padded, p, e->padded_rows), ROW(rows, p, width), sizeof(float) * (size_t)width);
        memset(ROW(padded, p, e->padded_rows) + width, 0, sizeof(float) * (size_t)(e->padded_rows - width));
    }
    for (long p0 = 0; p0 < hw; p0 += BLOCK) expansion_sums_block(u, padded, sums, c, e->padded_rows, p0, block_end(p0, hw));
    for (long j0 = 0; j0 < e->d_in; j0 += 2 * CHUNK) {
        long p0 = 0;
        for (; p0 + GATHER_TILE_P <= hw; p0 += GATHER_TILE_P) expansion_gather_tile(u, e, grad_rows, c, p0, GATHER_TILE_P, j0);
        for (; p0 < hw; ++p0) expansion_gather_tile(u, e, grad_rows, c, p0, 1, j0);
    }
}

/* The sum over threads of per-thread double arrays (`stride` apart), in thread order. */
static void sum_threads(const double *partial, int threads, size_t size, size_t stride, float *out)
{
    for (size_t i = 0; i < size; ++i) {
        double sum = 0.0;
        for (int t = 0; t < threads; ++t) sum += partial[(size_t)t * stride + i];
        out[i] = (float)sum;
    }
}

/* The unit's backward. Without an expansion (expand_rows == NULL), x's gradient goes to
 * grad_x. With one (see Expansion), x is that expansion's ReLU output and must be masked
 * (input_is_relu), grad_x is not used, and the expansion's input gradient goes to
 * expand_grad_rows and its sums u^T [x - mean, 1] to expand_sums ((channels, d_in + 1), double). */
int minnets_min_unit_backward(const float *grad, const float *x, const float *w_v, const float *w_g,
                              const float *stats, float *grad_x, float *grad_w_v, float *grad_w_g,
                              long batch, long height, long width, long channels, long kernel, long stride,
                              int input_is_relu, const float *expand_rows, const float *expand_folded,
                              float *expand_grad_rows, double *expand_sums, long d_in, int threads)
{
    const Geometry geo = geometry(height, width, channels, kernel, stride);
    const long hw = height * width;
    const size_t in_size = (size_t)(hw * channels);
    const size_t out_size = (size_t)(geo.out_height * geo.out_width * channels);
    const size_t filter_size = (size_t)(kernel * kernel * channels);
    const int fused = expand_rows != NULL;
    Expansion e = {expand_rows, NULL, expand_grad_rows, d_in, (d_in + 15) / 16 * 16, (d_in + 1 + 7) / 8 * 8};
    const size_t sums_size = fused ? (size_t)(channels * e.padded_rows) : 0;
    const size_t per_thread = 2 * filter_size + sums_size;  /* dw_v, dw_g, expansion sums */
    double *partial = calloc((size_t)threads * per_thread, sizeof(double));
    AxisCover *rows = malloc(sizeof(AxisCover) * (size_t)(height + width)), *cols = rows + height;
    float *folded = fused ? calloc((size_t)(channels * e.padded_in), sizeof(float)) : NULL;
    if (partial == NULL || rows == NULL || (fused && folded == NULL)) { free(partial); free(rows); free(folded); return 1; }
    for (long m = 0; fused && m < channels; ++m)
        memcpy(ROW(folded, m, e.padded_in), ROW(expand_folded, m, d_in), sizeof(float) * (size_t)d_in);
    e.folded = folded;
    axis_covers(rows, height, geo.out_height, &geo);
    axis_covers(cols, width, geo.out_width, &geo);
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const size_t fused_size = fused ? in_size + (size_t)(hw * e.padded_rows) : 0;  /* u, padded rows */
        float *scratch = malloc(sizeof(float) * (2 * out_size + 2 * filter_size + 8 * (size_t)channels + fused_size));
        double *sums = malloc(sizeof(double) * 4 * (size_t)channels);
        double *mine = partial + (size_t)omp_get_thread_num() * per_thread;
        failed = scratch == NULL || sums == NULL;
        float *v = scratch, *g = scratch + out_size, *dw = scratch + 2 * out_size, *coef = dw + 2 * filter_size;
        float *part = coef + 4 * channels, *u = part + 4 * channels, *padded = u + in_size;
        #pragma omp for schedule(static)
        for (long n = 0; n < batch; ++n) {
            if (failed) continue;
            const float *xs = x + n * in_size;
            convolve(xs, w_v, w_g, v, g, &geo);
            norm_backward(grad + n * out_size, v, g, stats + n * 4 * (size_t)channels,
                          geo.out_height * geo.out_width, channels, sums, part, coef);
            convolve_backward(xs, v, g, w_v, w_g, fused ? u : grad_x + n * in_size, dw, dw + filter_size, &geo, rows,
                              cols, input_is_relu);
            for (size_t i = 0; i < 2 * filter_size; ++i) mine[i] += dw[i];
            if (fused)
                expansion_backward(u, expand_rows + (size_t)(n * hw * (d_in + 1)), expand_grad_rows + (size_t)(n * hw * d_in),
                                   mine + 2 * filter_size, padded, &e, hw, channels);
        }
        free(scratch);
        free(sums);
    }
    sum_threads(partial, threads, filter_size, per_thread, grad_w_v);
    sum_threads(partial + filter_size, threads, filter_size, per_thread, grad_w_g);
    for (long m = 0; fused && m < channels; ++m)  /* unpadded, in double */
        for (long j = 0; j <= d_in; ++j) {
            double sum = 0.0;
            for (int t = 0; t < threads; ++t) sum += partial[(size_t)t * per_thread + 2 * filter_size + (size_t)(m * e.padded_rows + j)];
            expand_sums[m * (d_in + 1) + j] = sum;
        }
    free(partial);
    free(rows);
    free(folded);
    return failed;
}
