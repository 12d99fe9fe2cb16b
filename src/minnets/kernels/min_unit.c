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
 * a dozen times. Optionally (the minnets_* entry points) the 1x1 convs on either side of the
 * unit in a Min-block are fused in as well, and the BatchNorm and ReLU after the reduction and
 * the shortcut's sum take one more pass over the block's narrow output each way; the block's
 * own input and output may be NCHW, transposed a sample at a time in the cache.
 *
 * Filters come as (k*k x c) tap-major arrays. stats holds, per sample, four runs of c floats:
 * mean(v), 1/sqrt(var(v)+eps), mean(g), 1/sqrt(var(g)+eps), with the biased variance (what
 * instance norm normalises with). Per-channel sums run in float over blocks of pixels and in
 * double across blocks; weight gradients per sample in float, then per thread in double,
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

/* Channels are processed CHUNK at a time as GCC/Clang vectors: one AVX-512 register (16
 * floats) where the CPU has them, else one AVX register (8 floats; two SSE ones). Full chunks
 * are loaded and stored with memcpy, which compiles to unaligned vector moves; `width` is CHUNK
 * except for the last, partial chunk of a pixel, which AVX-512 moves with a lane mask. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define CHUNK 16
#else
#define CHUNK 8
#endif
#define MAX_KERNEL 7  /* the widest filter the kernel takes: 7 x 7 */
#define INLINE static inline __attribute__((always_inline))
typedef float vec __attribute__((vector_size(CHUNK * sizeof(float))));
typedef int ivec __attribute__((vector_size(CHUNK * sizeof(int))));

INLINE vec load(const float *p, int width)
{
    vec v = {0};
    if (width == CHUNK) {
        memcpy(&v, p, sizeof v);
        return v;
    }
#if defined(__AVX512F__)
    return (vec)_mm512_maskz_loadu_ps((__mmask16)((1u << width) - 1u), p);
#else
    memcpy(&v, p, (size_t)width * sizeof(float));
    return v;
#endif
}

INLINE void store(float *p, vec v, int width)
{
    if (width == CHUNK) {
        memcpy(p, &v, sizeof v);
        return;
    }
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << width) - 1u), (__m512)v);
#else
    memcpy(p, &v, (size_t)width * sizeof(float));
#endif
}

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

/* Channels [k0, k0 + width) of both depthwise convolutions of one sample. For 3x3 filters the
 * nine taps of both stay in registers, and pixels whose window lies inside the input take them
 * unrolled; border pixels (and other sizes) loop over the taps that fall inside. */
INLINE void convolve_chunk(const float *x, const float *w_v, const float *w_g, float *v, float *g,
                           const Geometry *geo, long k0, int width)
{
    const long c = geo->channels;
    const int three = geo->kernel == 3;
    vec wv[9] = {0}, wg[9] = {0};
    if (three)
        for (int t = 0; t < 9; ++t) {
            wv[t] = load(ROW(w_v, t, c) + k0, width);
            wg[t] = load(ROW(w_g, t, c) + k0, width);
        }
    for (long oy = 0; oy < geo->out_height; ++oy)
        for (long ox = 0; ox < geo->out_width; ++ox) {
            const Window win = window(geo, oy, ox);
            const long p = oy * geo->out_width + ox;
            if (!(three && win.i_lo == 0 && win.i_hi == 3 && win.j_lo == 0 && win.j_hi == 3)) {
                convolve_pixel(x, w_v, w_g, ROW(v, p, c), ROW(g, p, c), geo, win, k0, width);
                continue;
            }
            vec acc_v = {0}, acc_g = {0};
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) {
                    const vec xq = load(ROW(x, (win.y0 + i) * geo->width + win.x0 + j, c) + k0, width);
                    acc_v += xq * wv[3 * i + j];
                    acc_g += xq * wg[3 * i + j];
                }
            store(ROW(v, p, c) + k0, acc_v, width);
            store(ROW(g, p, c) + k0, acc_g, width);
        }
}

/* Both depthwise convolutions of one sample (zero padding k/2) into v and g. */
static void convolve(const float *restrict x, const float *restrict w_v, const float *restrict w_g,
                     float *restrict v, float *restrict g, const Geometry *geo)
{
    const long c = geo->channels;
    for (long k0 = 0; k0 < c; k0 += CHUNK) {
        if (c - k0 >= CHUNK) convolve_chunk(x, w_v, w_g, v, g, geo, k0, CHUNK);
        else convolve_chunk(x, w_v, w_g, v, g, geo, k0, (int)(c - k0));
    }
}

/* Per-channel sums run in float over blocks of BLOCK pixels (vectorised across channels), and
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

/* sum[k] += sum_p rows[p][k] over pixels [0, hw) (rows: hw x c), in float blocks and double. */
static void column_sums(const float *restrict rows, long c, long hw, double *restrict sum, float *restrict part)
{
    memset(part, 0, sizeof(float) * (size_t)c);
    for (long p0 = 0; p0 < hw; p0 += BLOCK) {
        for (long p = p0; p < block_end(p0, hw); ++p) {
            const float *restrict row = ROW(rows, p, c);
            for (long k = 0; k < c; ++k) part[k] += row[k];
        }
        flush(sum, part, c);
    }
}

static void channel_means(const float *restrict x, long hw, long c, double *restrict sum, float *restrict part,
                          float *restrict mean)
{
    memset(sum, 0, sizeof(double) * (size_t)c);
    column_sums(x, c, hw, sum, part);
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

/* The unit's output rows from the filter outputs and their statistics, `width` floats apart
 * (channels c, then zeros up to width). */
static void min_output(const float *restrict v, const float *restrict g, const float *restrict stats,
                       float *restrict out, long hw, long c, long width)
{
    const float *restrict mean_v = stats, *restrict scale_v = stats + c;
    const float *restrict mean_g = stats + 2 * c, *restrict scale_g = stats + 3 * c;
    for (long p = 0; p < hw; ++p) {
        const float *restrict vr = ROW(v, p, c), *restrict gr = ROW(g, p, c);
        float *restrict orow = ROW(out, p, width);
        for (long k = 0; k < c; ++k)
            orow[k] = relu_min((vr[k] - mean_v[k]) * scale_v[k], (gr[k] - mean_g[k]) * scale_g[k]);
        for (long k = c; k < width; ++k) orow[k] = 0.0f;
    }
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
    min_output(v, g, stats, out, hw, c, c);
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

/* One output row's share of x's gradient at an input pixel: the output pixels (out_row, cols)
 * with taps (tap_row, cols), added to *sum_v and *sum_g. */
INLINE void gather_row(const float *d_v, const float *d_g, const float *w_v, const float *w_g, const Geometry *geo,
                       const AxisCover *cols, long out_row, long tap_row, long k0, int width, vec *sum_v, vec *sum_g)
{
    const long c = geo->channels;
    vec acc_v = *sum_v, acc_g = *sum_g;
    for (long b = 0; b < cols->count; ++b) {
        const long p = (out_row * geo->out_width + cols->out[b]) * c + k0;
        const long t = (tap_row * geo->kernel + cols->tap[b]) * c + k0;
        acc_v += load(d_v + p, width) * load(w_v + t, width);
        acc_g += load(d_g + p, width) * load(w_g + t, width);
    }
    *sum_v = acc_v;
    *sum_g = acc_g;
}

/* x's gradient at input pixel (iy, ix), channels [k0, k0 + width), gathered from the output
 * pixels whose window covers it (rows x cols of them: see axis_covers), written once, zeroed
 * where a ReLU before the unit was off. Four independent chains of multiply-adds: v and g,
 * even and odd output rows, in named variables (an array indexed by the row's parity stayed in
 * memory: measured). */
INLINE void input_gradient_pixel(const float *x, const float *d_v, const float *d_g, const float *w_v,
                                 const float *w_g, float *d_x, const Geometry *geo, const AxisCover *rows,
                                 const AxisCover *cols, long q, long k0, int width, int input_is_relu)
{
    const long c = geo->channels;
    vec even_v = {0}, even_g = {0}, odd_v = {0}, odd_g = {0};
    for (long a = 0; a < rows->count; a += 2) {
        gather_row(d_v, d_g, w_v, w_g, geo, cols, rows->out[a], rows->tap[a], k0, width, &even_v, &even_g);
        if (a + 1 < rows->count)
            gather_row(d_v, d_g, w_v, w_g, geo, cols, rows->out[a + 1], rows->tap[a + 1], k0, width, &odd_v, &odd_g);
    }
    vec sum = (even_v + odd_v) + (even_g + odd_g);
    if (input_is_relu) sum = (vec)((ivec)sum & (load(ROW(x, q, c) + k0, width) > 0.0f));
    store(ROW(d_x, q, c) + k0, sum, width);
}

/* The same for a row of input pixels [ix0, ix1) of a 3x3 filter with stride 1 whose output
 * pixels all have the full window (the interior): the nine taps' weights of both filters stay in
 * registers, and the output pixels are (iy + 1 - i, ix + 1 - j) for tap (i, j). */
INLINE void input_gradient_row_3x3(const float *x, const float *d_v, const float *d_g, const float *w_v,
                                   const float *w_g, float *d_x, const Geometry *geo, long iy, long ix0,
                                   long ix1, long k0, int width, int input_is_relu)
{
    const long c = geo->channels, w_out = geo->out_width;
    vec wv[9], wg[9];
    for (int t = 0; t < 9; ++t) {
        wv[t] = load(ROW(w_v, t, c) + k0, width);
        wg[t] = load(ROW(w_g, t, c) + k0, width);
    }
    for (long ix = ix0; ix < ix1; ++ix) {
        vec acc[4] = {0};
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                const long p = ((iy + 1 - i) * w_out + ix + 1 - j) * c + k0;
                const int e = (3 * i + j) & 1;
                acc[2 * e] += load(d_v + p, width) * wv[3 * i + j];
                acc[2 * e + 1] += load(d_g + p, width) * wg[3 * i + j];
            }
        acc[0] = (acc[0] + acc[2]) + (acc[1] + acc[3]);
        const long q = iy * geo->width + ix;
        if (input_is_relu) acc[0] = (vec)((ivec)acc[0] & (load(ROW(x, q, c) + k0, width) > 0.0f));
        store(ROW(d_x, q, c) + k0, acc[0], width);
    }
}

/* x's gradient of one sample, channels [k0, k0 + width), row by row. */
INLINE void input_gradient_chunk(const float *x, const float *d_v, const float *d_g, const float *w_v,
                                 const float *w_g, float *d_x, const Geometry *geo, const AxisCover *rows,
                                 const AxisCover *cols, long k0, int width, int input_is_relu)
{
    /* With k = 3, stride 1 and "same" padding, input pixels 1 .. size-2 of each axis are covered
     * by all three taps. */
    const int interior = geo->kernel == 3 && geo->stride == 1 && geo->width >= 3;
    for (long iy = 0; iy < geo->height; ++iy) {
        const int inner_row = interior && iy >= 1 && iy + 1 < geo->height;
        const long ix0 = inner_row ? 1 : geo->width, ix1 = inner_row ? geo->width - 1 : geo->width;
        for (long ix = 0; ix < geo->width; ++ix) {
            if (ix == ix0) {
                input_gradient_row_3x3(x, d_v, d_g, w_v, w_g, d_x, geo, iy, ix0, ix1, k0, width, input_is_relu);
                ix = ix1 - 1;
                continue;
            }
            input_gradient_pixel(x, d_v, d_g, w_v, w_g, d_x, geo, rows + iy, cols + ix, iy * geo->width + ix, k0,
                                 width, input_is_relu);
        }
    }
}

/* The filter gradients of one sample, channels [k0, k0 + width): dw[t] = sum_p d[p] * x[q(p, t)]
 * over the output pixels p. For 3x3 filters the nine taps of both filters sum in registers over
 * the pixels whose window lies inside the input; border pixels (and other sizes) add into dw. */
INLINE void filter_gradients_chunk(const float *restrict x, const float *restrict d_v, const float *restrict d_g,
                                   float *restrict dw_v, float *restrict dw_g, const Geometry *geo, long k0, int width)
{
    const long c = geo->channels, k = geo->kernel;
    vec acc_v[9] = {0}, acc_g[9] = {0};
    for (long oy = 0; oy < geo->out_height; ++oy)
        for (long ox = 0; ox < geo->out_width; ++ox) {
            const Window win = window(geo, oy, ox);
            const long p = oy * geo->out_width + ox;
            const vec dv = load(ROW(d_v, p, c) + k0, width), dg = load(ROW(d_g, p, c) + k0, width);
            if (k == 3 && win.i_lo == 0 && win.i_hi == 3 && win.j_lo == 0 && win.j_hi == 3) {
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j) {
                        const vec xq = load(ROW(x, (win.y0 + i) * geo->width + win.x0 + j, c) + k0, width);
                        acc_v[3 * i + j] += dv * xq;
                        acc_g[3 * i + j] += dg * xq;
                    }
                continue;
            }
            for (long i = win.i_lo; i < win.i_hi; ++i)
                for (long j = win.j_lo; j < win.j_hi; ++j) {
                    const long t = i * k + j;
                    const vec xq = load(ROW(x, (win.y0 + i) * geo->width + win.x0 + j, c) + k0, width);
                    store(ROW(dw_v, t, c) + k0, load(ROW(dw_v, t, c) + k0, width) + dv * xq, width);
                    store(ROW(dw_g, t, c) + k0, load(ROW(dw_g, t, c) + k0, width) + dg * xq, width);
                }
        }
    if (k != 3) return;
    for (int t = 0; t < 9; ++t) {
        store(ROW(dw_v, t, c) + k0, load(ROW(dw_v, t, c) + k0, width) + acc_v[t], width);
        store(ROW(dw_g, t, c) + k0, load(ROW(dw_g, t, c) + k0, width) + acc_g[t], width);
    }
}

/* Both convolutions' backward for one sample: x's gradient into d_x, the filters' into dw_v, dw_g.
 * d_x may be x itself: a chunk of channels takes its filter gradients before x's gradient
 * overwrites it, and x's gradient at a pixel reads only that pixel of x. */
static void convolve_backward(const float *x, const float *restrict d_v, const float *restrict d_g,
                              const float *restrict w_v, const float *restrict w_g, float *d_x,
                              float *restrict dw_v, float *restrict dw_g, const Geometry *geo,
                              const AxisCover *rows, const AxisCover *cols, int input_is_relu)
{
    const long c = geo->channels, taps = geo->kernel * geo->kernel;
    memset(dw_v, 0, sizeof(float) * (size_t)(taps * c));
    memset(dw_g, 0, sizeof(float) * (size_t)(taps * c));
    for (long k0 = 0; k0 < c; k0 += CHUNK) {
        const int width = c - k0 < CHUNK ? (int)(c - k0) : CHUNK;
        if (width == CHUNK) {
            filter_gradients_chunk(x, d_v, d_g, dw_v, dw_g, geo, k0, CHUNK);
            input_gradient_chunk(x, d_v, d_g, w_v, w_g, d_x, geo, rows, cols, k0, CHUNK, input_is_relu);
        } else {
            filter_gradients_chunk(x, d_v, d_g, dw_v, dw_g, geo, k0, width);
            input_gradient_chunk(x, d_v, d_g, w_v, w_g, d_x, geo, rows, cols, k0, width, input_is_relu);
        }
    }
}

/* Small matrix products around the unit, done in register tiles while their operands are in
 * the cache: the 1x1 expansion before it (BatchNorm folded in) and the 1x1 reduction after it.
 * Fusing them means that the widest maps of a Min-block, the expansion's output and its
 * gradient, and the unit's output and its gradient, never cross main memory. */

/* Both products keep their vectors along a map's channels (the wide side), so no operand is
 * padded: the last vector of a row is partial where the width is not a multiple of CHUNK. The
 * narrow operand `u`, (hw x c) row-major, is read a float at a time. */

#define SUM_TILE_M 4  /* outer_sums: a register tile of 4 rows x up to 4 vectors */
#define SUM_BLOCK 256  /* pixels summed in float registers before a tile is added to the double sums */

/* sums[m][j] += u[p][m] * rows[p][j] for p in [p0, p1), m in [m0, m0 + mr), j in
 * [j0, j0 + CHUNK * jn) and < width, accumulated in float registers, then added to the double sums. */
INLINE void outer_sums_tile(const float *restrict u, long c, const float *restrict rows, long width,
                            double *restrict sums, long p0, long p1, long m0, int mr, long j0, int jn)
{
    vec acc[SUM_TILE_M][4] = {{{0}}};
    const int last = width - j0 - CHUNK * (jn - 1) < CHUNK ? (int)(width - j0 - CHUNK * (jn - 1)) : CHUNK;
    for (long p = p0; p < p1; ++p) {
        vec r[4];
        for (int jv = 0; jv < jn; ++jv) r[jv] = load(ROW(rows, p, width) + j0 + CHUNK * jv, jv == jn - 1 ? last : CHUNK);
        for (int mi = 0; mi < mr; ++mi) {
            const float up = ROW(u, p, c)[m0 + mi];
            for (int jv = 0; jv < jn; ++jv) acc[mi][jv] += up * r[jv];
        }
    }
    /* Unrolled, so that acc is only ever indexed by constants: otherwise GCC keeps the tile in
     * memory and stores every accumulator at every pixel (measured: 2.5x slower). */
    #pragma GCC unroll 4
    for (int mi = 0; mi < mr; ++mi)
        #pragma GCC unroll 4
        for (int jv = 0; jv < jn; ++jv) {
            const vec tile = acc[mi][jv];
            float lanes[CHUNK];
            memcpy(lanes, &tile, sizeof lanes);
            double *restrict dest = ROW(sums, m0 + mi, width) + j0 + CHUNK * jv;
            for (int l = 0; l < (jv == jn - 1 ? last : CHUNK); ++l) dest[l] += lanes[l];
        }
}

/* One row of tiles at rows [m, m + mr): up to four vectors at a time across `width`. */
INLINE void outer_sums_tiles(const float *u, long c, const float *rows, long width, double *sums, long p0, long p1,
                             long m, int mr)
{
    const long vectors = (width + CHUNK - 1) / CHUNK;
    for (long jv = 0; jv < vectors; jv += 4) {
        const long left = vectors - jv;
        if (left >= 4) outer_sums_tile(u, c, rows, width, sums, p0, p1, m, mr, CHUNK * jv, 4);
        else if (left == 3) outer_sums_tile(u, c, rows, width, sums, p0, p1, m, mr, CHUNK * jv, 3);
        else if (left == 2) outer_sums_tile(u, c, rows, width, sums, p0, p1, m, mr, CHUNK * jv, 2);
        else outer_sums_tile(u, c, rows, width, sums, p0, p1, m, mr, CHUNK * jv, 1);
    }
}

/* sums (c x width, double) += u^T rows over pixels [0, hw); u is (hw x c), rows (hw x width).
 * Tiles get a compile-time shape, so accumulators stay in registers. */
static void outer_sums(const float *u, long c, const float *rows, long width, double *sums, long hw)
{
    for (long p0 = 0; p0 < hw; p0 += SUM_BLOCK) {
        const long p1 = p0 + SUM_BLOCK < hw ? p0 + SUM_BLOCK : hw;
        long m = 0;
        for (; m + SUM_TILE_M <= c; m += SUM_TILE_M) outer_sums_tiles(u, c, rows, width, sums, p0, p1, m, SUM_TILE_M);
        for (; m < c; ++m) outer_sums_tiles(u, c, rows, width, sums, p0, p1, m, 1);
    }
}

/* product: register tiles of up to 16 accumulators, 4 pixels x 4 (or 3) vectors, or 8 pixels x 2 (or 1). */
#define PRODUCT_PIXELS 8
#define PRODUCT_VECTORS 4

/* out[p][j] = sum_m u[p][m] * matrix[m][j] (+ bias[j] where bias != NULL, + out[p][j] if
 * `accumulate`, rectified if `relu`) for p in [p0, p0 + pn), j in [j0, j0 + CHUNK * jn) and
 * < width (matrix: c x width). The additions and the ReLU come once per tile, after the loop. */
INLINE void product_tile(const float *restrict u, long c, const float *restrict matrix, float *restrict out,
                         long width, long p0, int pn, long j0, int jn, const float *bias, int accumulate, int relu)
{
    vec acc[PRODUCT_PIXELS][PRODUCT_VECTORS] = {{{0}}};
    const int last = width - j0 - CHUNK * (jn - 1) < CHUNK ? (int)(width - j0 - CHUNK * (jn - 1)) : CHUNK;
    for (long m = 0; m < c; ++m) {
        vec row[PRODUCT_VECTORS];
        for (int jv = 0; jv < jn; ++jv) row[jv] = load(ROW(matrix, m, width) + j0 + CHUNK * jv, jv == jn - 1 ? last : CHUNK);
        for (int pi = 0; pi < pn; ++pi) {
            const float up = ROW(u, p0 + pi, c)[m];
            for (int jv = 0; jv < jn; ++jv) acc[pi][jv] += up * row[jv];
        }
    }
    for (int jv = 0; jv < jn; ++jv) {
        const int lanes = jv == jn - 1 ? last : CHUNK;
        const vec offset = bias != NULL ? load(bias + j0 + CHUNK * jv, lanes) : (vec){0};
        for (int pi = 0; pi < pn; ++pi) {
            float *restrict dest = ROW(out, p0 + pi, width) + j0 + CHUNK * jv;
            vec value = acc[pi][jv] + offset;
            if (accumulate) value += load(dest, lanes);
            if (relu) value = (vec)((ivec)value & (value > 0.0f));
            store(dest, value, lanes);
        }
    }
}

/* One column of tiles, j in [j0, j0 + CHUNK * jn), over all pixels. */
INLINE void product_column(const float *u, long c, const float *matrix, float *out, long width, long hw, long j0,
                           int jn, const float *bias, int accumulate, int relu)
{
    const int pn = jn > 2 ? PRODUCT_PIXELS / 2 : PRODUCT_PIXELS;
    long p0 = 0;
    for (; p0 + pn <= hw; p0 += pn) product_tile(u, c, matrix, out, width, p0, pn, j0, jn, bias, accumulate, relu);
    for (; p0 < hw; ++p0) product_tile(u, c, matrix, out, width, p0, 1, j0, jn, bias, accumulate, relu);
}

INLINE void product_columns(const float *u, long c, const float *matrix, float *out, long width, long hw,
                            const float *bias, int accumulate, int relu)
{
    const long vectors = (width + CHUNK - 1) / CHUNK;
    for (long jv = 0; jv < vectors; jv += PRODUCT_VECTORS) {
        const long left = vectors - jv;
        if (left >= 4) product_column(u, c, matrix, out, width, hw, CHUNK * jv, 4, bias, accumulate, relu);
        else if (left == 3) product_column(u, c, matrix, out, width, hw, CHUNK * jv, 3, bias, accumulate, relu);
        else if (left == 2) product_column(u, c, matrix, out, width, hw, CHUNK * jv, 2, bias, accumulate, relu);
        else product_column(u, c, matrix, out, width, hw, CHUNK * jv, 1, bias, accumulate, relu);
    }
}

/* out (hw x width) = u (hw x c) @ matrix (c x width) + bias (or NULL), then (+ out if
 * `accumulate`) rectified if `relu`; one compiled copy per combination of the two flags used. */
static void product(const float *u, long c, const float *matrix, float *out, long width, long hw, const float *bias,
                    int accumulate, int relu)
{
    if (relu) product_columns(u, c, matrix, out, width, hw, bias, 0, 1);
    else if (accumulate) product_columns(u, c, matrix, out, width, hw, bias, 1, 0);
    else product_columns(u, c, matrix, out, width, hw, bias, 0, 0);
}

/* dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols, in CHUNK x CHUNK
 * tiles: every load and store is a run along a row. Element by element, an NCHW sample's
 * channels (4 KB apart for 32 x 32 maps) all fall in one set of the L1 cache and evict each
 * other (perf: 7 % of a block's time went to its transpositions; tiles made blocks 4-9 % faster). */
#if defined(__AVX512F__)
INLINE __m512 unpack_low_pairs(__m512 a, __m512 b)
{
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

INLINE __m512 unpack_high_pairs(__m512 a, __m512 b)
{
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

/* The 16 x 16 matrix whose rows are r[0..15] becomes its transpose: interleave single floats,
 * then pairs, then 128-bit quarters twice. */
INLINE void transpose_registers(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = unpack_low_pairs(t[i], t[i + 2]);
        r[i + 1] = unpack_high_pairs(t[i], t[i + 2]);
        r[i + 2] = unpack_low_pairs(t[i + 1], t[i + 3]);
        r[i + 3] = unpack_high_pairs(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 16; i += 8)
        for (int k = 0; k < 4; ++k) {
            t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0x88);
            t[i + k + 4] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0xdd);
        }
    for (int k = 0; k < 8; ++k) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
        r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xdd);
    }
}

static void transpose(const float *restrict src, long src_stride, long rows, long cols, float *restrict dst,
                      long dst_stride)
{
    for (long i0 = 0; i0 < rows; i0 += CHUNK) {
        const int ni = rows - i0 < CHUNK ? (int)(rows - i0) : CHUNK;
        for (long j0 = 0; j0 < cols; j0 += CHUNK) {
            const int nj = cols - j0 < CHUNK ? (int)(cols - j0) : CHUNK;
            __m512 r[16];
            for (int i = 0; i < 16; ++i)
                r[i] = i < ni ? (__m512)load(src + (i0 + i) * src_stride + j0, nj) : _mm512_setzero_ps();
            transpose_registers(r);
            for (int j = 0; j < nj; ++j) store(dst + (j0 + j) * dst_stride + i0, (vec)r[j], ni);
        }
    }
}
#else
static void transpose(const float *restrict src, long src_stride, long rows, long cols, float *restrict dst,
                      long dst_stride)
{
    for (long i0 = 0; i0 < rows; i0 += CHUNK)
        for (long j0 = 0; j0 < cols; j0 += CHUNK)
            for (long j = j0; j < (j0 + CHUNK < cols ? j0 + CHUNK : cols); ++j)
                for (long i = i0; i < (i0 + CHUNK < rows ? i0 + CHUNK : rows); ++i)
                    dst[j * dst_stride + i] = src[i * src_stride + j];
}
#endif

/* Sample n of the block's input as (hw x d_in) rows, with element (p, m) at
 * x[n * sample + p * pixel + m * channel]: where it lies if channels-last, else transposed into
 * `scratch` (hw * d_in floats), which the products then read contiguously. */
static const float *sample_rows(const float *x, long n, long sample, long pixel, long channel, long hw, long d_in,
                                float *restrict scratch)
{
    const float *base = x + n * sample;
    if (channel == 1 && pixel == d_in) return base;
    if (pixel == 1) {
        transpose(base, channel, d_in, hw, scratch, d_in);
        return scratch;
    }
    for (long p = 0; p < hw; ++p)
        for (long m = 0; m < d_in; ++m) scratch[p * d_in + m] = base[p * pixel + m * channel];
    return scratch;
}

/* (hw x c) rows as the c maps of one NCHW sample: maps[k * hw + p] = rows[p * c + k]. */
static void rows_to_maps(const float *restrict rows, long hw, long c, float *restrict maps)
{
    transpose(rows, c, hw, c, maps, hw);
}

/* The sum over threads of per-thread double arrays (`stride` apart) of `size` values, in thread
 * order, as float or as double. */
static void sum_threads(const double *partial, int threads, size_t stride, size_t size, float *out_float,
                        double *out_double)
{
    for (size_t i = 0; i < size; ++i) {
        double sum = 0.0;
        for (int t = 0; t < threads; ++t) sum += partial[(size_t)t * stride + i];
        if (out_float != NULL) out_float[i] = (float)sum;
        else out_double[i] = sum;
    }
}

/* The reduction's BatchNorm (batch statistics) and ReLU, and the block's sum with its shortcut,
 * as two passes over the reduction's output r (d_out = c channels) after the forward pass has
 * its moments. `norm` holds six runs of c floats: gain (gamma / sigma), shift (beta - gain * mean),
 * mean, 1 / sigma, and for the backward pass gain * mean(d) and gain / sigma * mean(d * r_hat),
 * where d is the gradient at the BatchNorm's output and r_hat = (r - mean) / sigma. A sample of
 * r, the shortcut and their gradients is c runs of hw pixels with `maps` (NCHW), else hw rows of c. */

enum { NORM_FORWARD, NORM_SUMS, NORM_BACKWARD };

/* One vector of `op` at element `at` of a sample: NORM_FORWARD writes ReLU(gain * r + shift) (+ other,
 * the shortcut, where given) to out; NORM_SUMS adds d and d * r_hat to *sum and *dot, d being
 * `other` (the gradient) where the ReLU is on; NORM_BACKWARD writes r's gradient to out.
 * co: the six rows of norm, for these lanes' channels. */
INLINE void norm_vector(int op, const float *r, const float *other, float *out, long at, int width, const vec co[6],
                        vec *sum, vec *dot)
{
    const vec rv = load(r + at, width);
    const vec y = co[0] * rv + co[1];
    const ivec on = y > 0.0f;
    if (op == NORM_FORWARD) {
        vec value = (vec)((ivec)y & on);
        if (other != NULL) value += load(other + at, width);
        store(out + at, value, width);
        return;
    }
    const vec d = (vec)((ivec)load(other + at, width) & on);
    if (op == NORM_SUMS) {
        *sum += d;
        *dot += d * ((rv - co[2]) * co[3]);
    } else {
        store(out + at, co[0] * d - co[4] - co[5] * (rv - co[2]), width);
    }
}

/* `op` over one sample (c channels, hw pixels; NCHW with maps, else channels-last), vectors
 * along the pixels of a channel or along the channels of a pixel. NORM_SUMS adds to sums[0..2c),
 * in float over SUM_BLOCK pixels, then in double. */
INLINE void norm_sample(int op, const float *r, const float *other, const float *norm, float *out, double *sums,
                        long c, long hw, int maps)
{
    for (long k0 = 0; k0 < c; k0 += maps ? 1 : CHUNK) {
        const int lanes = maps ? 1 : (c - k0 < CHUNK ? (int)(c - k0) : CHUNK);
        vec co[6];
        for (int row = 0; row < 6; ++row)
            co[row] = maps ? norm[row * c + k0] + (vec){0} : load(norm + row * c + k0, lanes);
        for (long p0 = 0; p0 < hw; p0 += SUM_BLOCK) {
            const long p1 = p0 + SUM_BLOCK < hw ? p0 + SUM_BLOCK : hw;
            vec sum = {0}, dot = {0};
            if (maps)
                for (long p = p0; p < p1; p += CHUNK)
                    norm_vector(op, r, other, out, k0 * hw + p, p1 - p < CHUNK ? (int)(p1 - p) : CHUNK, co, &sum, &dot);
            else
                for (long p = p0; p < p1; ++p) norm_vector(op, r, other, out, p * c + k0, lanes, co, &sum, &dot);
            if (op != NORM_SUMS) continue;
            float sum_lanes[CHUNK], dot_lanes[CHUNK];
            memcpy(sum_lanes, &sum, sizeof sum_lanes);
            memcpy(dot_lanes, &dot, sizeof dot_lanes);
            for (int l = 0; l < (maps ? CHUNK : lanes); ++l) {
                sums[k0 + (maps ? 0 : l)] += sum_lanes[l];
                sums[c + k0 + (maps ? 0 : l)] += dot_lanes[l];
            }
        }
    }
}

/* The shortcut of a stride-2 block without projection, on NCHW maps: a 2 x 2 average pool,
 * stride 2, ceil mode (a window cut by the border averages the pixels it covers), of the
 * block's input, with zero channels appended. add_pooled adds it for `channels` maps of
 * height x width to the (ceil(height / 2) x ceil(width / 2)) maps `out`; a cut window reads its
 * last row or column twice, which averages the same. add_unpooled adds its backward pass, the
 * output gradient spread over each window, to x's gradient. */
static void add_pooled(const float *restrict x, float *restrict out, long channels, long height, long width)
{
    const long out_height = (height + 1) / 2, out_width = (width + 1) / 2, pairs = width / 2;
    for (long k = 0; k < channels; ++k)
        for (long oy = 0; oy < out_height; ++oy) {
            const float *restrict top = x + (k * height + 2 * oy) * width;
            const float *restrict bottom = 2 * oy + 1 < height ? top + width : top;
            float *restrict dest = out + (k * out_height + oy) * out_width;
            for (long ox = 0; ox < pairs; ++ox)
                dest[ox] += 0.25f * ((top[2 * ox] + top[2 * ox + 1]) + (bottom[2 * ox] + bottom[2 * ox + 1]));
            if (pairs < out_width)
                dest[pairs] += 0.25f * ((top[width - 1] + top[width - 1]) + (bottom[width - 1] + bottom[width - 1]));
        }
}

static void add_unpooled(const float *restrict grad, float *restrict d_x, long channels, long height, long width)
{
    const long out_height = (height + 1) / 2, out_width = (width + 1) / 2, pairs = width / 2;
    for (long k = 0; k < channels; ++k)
        for (long iy = 0; iy < height; ++iy) {
            const long oy = iy / 2;
            const float *restrict g = grad + (k * out_height + oy) * out_width;
            float *restrict dest = d_x + (k * height + iy) * width;
            const float scale = 2 * oy + 1 < height ? 0.25f : 0.5f;
            for (long ox = 0; ox < pairs; ++ox) {
                dest[2 * ox] += scale * g[ox];
                dest[2 * ox + 1] += scale * g[ox];
            }
            if (pairs < out_width) dest[width - 1] += 2.0f * scale * g[pairs];
        }
}

/* out = shortcut + ReLU(gain * r + shift), shortcut NULL for none; with pool_x (or NULL: NCHW
 * only) the shortcut is instead add_pooled's of pool_x, d_in maps of height x width a sample. */
int minnets_reduce_norm_forward(const float *r, const float *norm, const float *shortcut, float *out, long batch,
                                long c, long hw, int maps, const float *pool_x, long d_in, long height, long width,
                                int threads)
{
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long n = 0; n < batch; ++n) {
        const size_t at = (size_t)(n * c * hw);
        norm_sample(NORM_FORWARD, r + at, shortcut != NULL ? shortcut + at : NULL, norm, out + at, NULL, c, hw, maps);
        if (pool_x != NULL)
            add_pooled(pool_x + (size_t)(n * d_in * height * width), out + at, d_in < c ? d_in : c, height, width);
    }
    return 0;
}

/* sums[0..c) = sum d and sums[c..2c) = sum d * r_hat over the batch, d = grad where the ReLU let
 * it through: BatchNorm's two reductions for its backward pass (and gamma's and beta's gradients). */
int minnets_reduce_norm_sums(const float *grad, const float *r, const float *norm, double *sums, long batch, long c,
                             long hw, int maps, int threads)
{
    double *partial = calloc((size_t)threads * 2 * (size_t)c, sizeof(double));
    if (partial == NULL) return 1;
    #pragma omp parallel num_threads(threads)
    {
        double *mine = partial + (size_t)omp_get_thread_num() * 2 * (size_t)c;
        #pragma omp for schedule(static)
        for (long n = 0; n < batch; ++n) {
            const size_t at = (size_t)(n * c * hw);
            norm_sample(NORM_SUMS, r + at, grad + at, norm, NULL, mine, c, hw, maps);
        }
    }
    sum_threads(partial, threads, 2 * (size_t)c, 2 * (size_t)c, NULL, sums);
    free(partial);
    return 0;
}

/* Per channel of (hw x c) rows: a shift (the mean, rounded to float), then the sums of
 * (row - shift) and of its square, in double: moments[0..c), [c..2c), [2c..3c). From these the
 * caller gets the batch's mean and variance exactly, without a second pass over the maps.
 * Scratch: sum (c doubles), part (3c floats). */
static void row_moments(const float *restrict rows, long hw, long c, double *restrict moments, double *restrict sum,
                        float *restrict part)
{
    float *restrict shift = part + 2 * c;
    memset(sum, 0, sizeof(double) * (size_t)c);
    column_sums(rows, c, hw, sum, part);
    for (long k = 0; k < c; ++k) {
        shift[k] = (float)(sum[k] / (double)(hw > 0 ? hw : 1));
        moments[k] = shift[k];
    }
    double *restrict centred = moments + c;  /* c sums, then c sums of squares */
    memset(centred, 0, sizeof(double) * 2 * (size_t)c);
    memset(part, 0, sizeof(float) * 2 * (size_t)c);
    for (long p0 = 0; p0 < hw; p0 += BLOCK) {
        for (long p = p0; p < block_end(p0, hw); ++p) {
            const float *restrict row = ROW(rows, p, c);
            for (long k = 0; k < c; ++k) {
                const float d = row[k] - shift[k];
                part[k] += d;
                part[c + k] += d * d;
            }
        }
        flush(centred, part, 2 * c);
    }
}

/* Forward pass. With a reduction (reduce_t != NULL: the 1x1 conv after the unit, transposed,
 * (channels x d_out)), `out` receives that conv's output, plus reduce_bias (or NULL) and
 * rectified if reduce_relu, instead of the unit's. With an expansion (expand_x != NULL), x is
 * not read but the unit's input is computed a sample at a time, in the cache, as
 * ReLU(expand_x @ expand_t + expand_bias): expand_x is the block's input, (pixels x d_in) with
 * element (n, p, m) at expand_x[n * sample + p * pixel + m * channel], expand_t (d_in x channels).
 * `out` is channels-last, or with a reduction and out_maps, NCHW. With reduce_moments (or NULL),
 * each sample's row_moments of the reduction's output go there ((batch x 3 x d_out) doubles). */
int minnets_min_unit_forward(const float *x, const float *w_v, const float *w_g, float *out, float *stats,
                             long batch, long height, long width, long channels, long kernel, long stride,
                             float eps, const float *reduce_t, const float *reduce_bias, int reduce_relu, long d_out,
                             double *reduce_moments, const float *expand_x, long sample, long pixel, long channel,
                             const float *expand_t, const float *expand_bias, long d_in, int out_maps, int threads)
{
    const Geometry geo = geometry(height, width, channels, kernel, stride);
    const long hw = height * width, hw_out = geo.out_height * geo.out_width;
    const size_t in_size = (size_t)(hw * channels);
    const size_t out_size = (size_t)(hw_out * channels);
    const long out_channels = reduce_t != NULL ? d_out : channels;
    const int transposing = reduce_t != NULL && out_maps;
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        /* the unit's output, before the reduction, and the reduction's as rows */
        const size_t unit_size = reduce_t != NULL ? out_size + (transposing ? (size_t)(hw_out * d_out) : 0) : 0;
        const size_t input_size = expand_x != NULL ? in_size + (size_t)(hw * d_in) : 0;  /* the unit's input, computed here, and the block's */
        const size_t part_size = (size_t)(channels > 3 * d_out ? channels : 3 * d_out);
        float *scratch = malloc(sizeof(float) * (2 * out_size + part_size + unit_size + input_size));
        double *sum = malloc(sizeof(double) * part_size);
        failed = scratch == NULL || sum == NULL;
        float *v = scratch, *g = v + out_size, *part = g + out_size, *unit = part + part_size, *input = unit + unit_size;
        #pragma omp for schedule(static)
        for (long n = 0; n < batch; ++n) {
            if (failed) continue;
            float *dest = out + (size_t)(n * hw_out * out_channels);
            const float *xs = input;
            if (expand_x != NULL) {
                const float *block_input = sample_rows(expand_x, n, sample, pixel, channel, hw, d_in, input + in_size);
                product(block_input, d_in, expand_t, input, channels, hw, expand_bias, 0, 1);
            } else {
                xs = x + n * in_size;
            }
            forward_sample(xs, w_v, w_g, reduce_t != NULL ? unit : dest, stats + n * 4 * (size_t)channels,
                           v, g, sum, part, &geo, eps);
            if (reduce_t != NULL) {
                float *rows = transposing ? unit + out_size : dest;
                product(unit, channels, reduce_t, rows, d_out, hw_out, reduce_bias, 0, reduce_relu);
                if (reduce_moments != NULL)
                    row_moments(rows, hw_out, d_out, reduce_moments + (size_t)(n * 3 * d_out), sum, part);
                if (transposing) rows_to_maps(rows, hw_out, d_out, dest);
            }
        }
        free(scratch);
        free(sum);
    }
    return failed;
}

/* Backward pass.
 * - With an expansion (expand_x != NULL, as in the forward pass): x is not read but recomputed,
 *   and grad_x is not used; with u the gradient at the expansion's ReLU output (zero where it is
 *   0), expand_grad_rows (pixels x d_in, channels-last) receives expand_folded u at every pixel
 *   (expand_folded: channels x d_in) and expand_sums ((d_in + 1) x channels, double) the sums
 *   expand_x^T u and, in its last row, 1^T u.
 * - With a reduction (reduce != NULL: the 1x1 conv after the unit, (d_out x channels)): `grad`
 *   is the gradient at that conv's output (d_out channels; NCHW if grad_maps, else channels-last),
 *   and reduce_sums (d_out x channels, double) receives the conv's weight gradient. With
 *   reduce_norm (or NULL), `grad` is the gradient after that conv's BatchNorm and ReLU instead,
 *   reduce_out the conv's output (as grad) and reduce_norm as in minnets_reduce_norm_sums. */
int minnets_min_unit_backward(const float *grad, const float *x, const float *w_v, const float *w_g,
                              const float *stats, float *grad_x, float *grad_w_v, float *grad_w_g,
                              long batch, long height, long width, long channels, long kernel, long stride,
                              int input_is_relu, const float *expand_x, long sample, long pixel, long channel,
                              const float *expand_t, const float *expand_bias, const float *expand_folded,
                              float *expand_grad_rows, double *expand_sums, long d_in,
                              const float *reduce, double *reduce_sums, long d_out, const float *reduce_out,
                              const float *reduce_norm, int grad_maps, int threads)
{
    const Geometry geo = geometry(height, width, channels, kernel, stride);
    const long hw = height * width, hw_out = geo.out_height * geo.out_width;
    const size_t in_size = (size_t)(hw * channels);
    const size_t out_size = (size_t)(hw_out * channels);
    const size_t filter_size = (size_t)(kernel * kernel * channels);
    const int expanding = expand_x != NULL, reducing = reduce != NULL;
    const size_t expand_size = expanding ? (size_t)((d_in + 1) * channels) : 0;
    const size_t reduce_size = reducing ? (size_t)(d_out * channels) : 0;
    const size_t per_thread = 2 * filter_size + expand_size + reduce_size;  /* dw_v, dw_g, the products' sums */
    double *partial = calloc((size_t)threads * per_thread, sizeof(double));
    AxisCover *rows = malloc(sizeof(AxisCover) * (size_t)(height + width)), *cols = rows + height;
    if (partial == NULL || rows == NULL) {
        free(partial); free(rows);
        return 1;
    }
    axis_covers(rows, height, geo.out_height, &geo);
    axis_covers(cols, width, geo.out_width, &geo);
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        /* The recomputed input, then u in its place; the block's input. */
        const size_t expand_scratch = expanding ? in_size + (size_t)(hw * d_in) : 0;
        /* The unit's output, then its gradient in its place; the output gradient as rows, and
         * before the BatchNorm as maps. Reusing buffers keeps a sample's working set in the L2 cache. */
        const size_t reduced_size = (size_t)(hw_out * d_out);
        const size_t reduce_scratch = reducing ? out_size + (grad_maps || reduce_norm != NULL ? reduced_size : 0)
                                                     + (grad_maps && reduce_norm != NULL ? reduced_size : 0) : 0;
        float *scratch = malloc(sizeof(float) * (2 * out_size + 2 * filter_size + 8 * (size_t)channels
                                                 + expand_scratch + reduce_scratch));
        double *sums = malloc(sizeof(double) * 4 * (size_t)channels);
        double *mine = partial + (size_t)omp_get_thread_num() * per_thread;
        failed = scratch == NULL || sums == NULL;
        float *v = scratch, *g = v + out_size, *dw = g + out_size, *coef = dw + 2 * filter_size;
        float *part = coef + 4 * channels, *input = part + 4 * channels, *u = input;
        float *transposed = input + (expanding ? in_size : 0), *unit = transposed + (expanding ? hw * d_in : 0);
        float *grad_rows = unit + (reducing ? out_size : 0);
        float *grad_maps_scratch = grad_rows + reduced_size;
        #pragma omp for schedule(static)
        for (long n = 0; n < batch; ++n) {
            if (failed) continue;
            const float *xs = input, *sample_stats = stats + n * 4 * (size_t)channels;
            const float *grad_unit = grad + n * out_size;
            const float *block_input = expanding ? sample_rows(expand_x, n, sample, pixel, channel, hw, d_in, transposed)
                                                 : NULL;
            if (expanding) product(block_input, d_in, expand_t, input, channels, hw, expand_bias, 0, 1);
            else xs = x + n * in_size;
            convolve(xs, w_v, w_g, v, g, &geo);
            if (reducing) {
                const float *grad_reduced = grad + (size_t)n * reduced_size;
                if (reduce_norm != NULL) {
                    float *dest = grad_maps ? grad_maps_scratch : grad_rows;
                    /* r's gradient, gain * d - gain * mean(d) - gain / sigma * mean(d * r_hat) * (r - mean) */
                    norm_sample(NORM_BACKWARD, reduce_out + (size_t)n * reduced_size, grad_reduced, reduce_norm, dest,
                                NULL, d_out, hw_out, grad_maps);
                    grad_reduced = dest;
                }
                if (grad_maps) {
                    transpose(grad_reduced, hw_out, d_out, hw_out, grad_rows, d_out);
                    grad_reduced = grad_rows;
                }
                min_output(v, g, sample_stats, unit, hw_out, channels, channels);
                outer_sums(grad_reduced, d_out, unit, channels, mine + 2 * filter_size + expand_size, hw_out);
                product(grad_reduced, d_out, reduce, unit, channels, hw_out, NULL, 0, 0);
                grad_unit = unit;
            }
            norm_backward(grad_unit, v, g, sample_stats, hw_out, channels, sums, part, coef);
            convolve_backward(xs, v, g, w_v, w_g, expanding ? u : grad_x + n * in_size, dw, dw + filter_size, &geo,
                              rows, cols, input_is_relu || expanding);
            for (size_t i = 0; i < 2 * filter_size; ++i) mine[i] += dw[i];
            if (expanding) {
                outer_sums(block_input, d_in, u, channels, mine + 2 * filter_size, hw);
                column_sums(u, channels, hw, mine + 2 * filter_size + d_in * channels, part);
                product(u, channels, expand_folded, expand_grad_rows + (size_t)(n * hw * d_in), d_in, hw, NULL, 0, 0);
            }
        }
        free(scratch);
        free(sums);
    }
    sum_threads(partial, threads, per_thread, filter_size, grad_w_v, NULL);
    sum_threads(partial + filter_size, threads, per_thread, filter_size, grad_w_g, NULL);
    if (expanding) sum_threads(partial + 2 * filter_size, threads, per_thread, expand_size, NULL, expand_sums);
    if (reducing) sum_threads(partial + 2 * filter_size + expand_size, threads, per_thread, reduce_size, NULL, reduce_sums);
    free(partial);
    free(rows);
    return failed;
}

/* grad_rows (pixels x d_in per sample, channels-last) += x @ cross + bias, with x the block's
 * input as in the forward pass and cross (d_in x d_in): the part of the expansion's input
 * gradient that goes through its BatchNorm's batch statistics. With `maps` (or NULL) the result
 * is also written there as NCHW maps. With `addend` (or NULL: the identity shortcut's gradient,
 * laid out as the result) that is added too; with pooled_grad (or NULL: the gradient at a pooled
 * shortcut's output, grad_channels NCHW maps a sample, x being height x width), add_unpooled's. */
int minnets_expansion_input_grad(float *grad_rows, const float *x, long sample, long pixel, long channel,
                                 long batch, long hw, long d_in, const float *cross, const float *bias, float *maps,
                                 const float *addend, const float *pooled_grad, long grad_channels, long height,
                                 long width, int threads)
{
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *scratch = malloc(sizeof(float) * (size_t)(hw * d_in));
        failed = scratch == NULL;
        #pragma omp for schedule(static)
        for (long n = 0; n < batch; ++n) {
            if (failed) continue;
            const float *block_input = sample_rows(x, n, sample, pixel, channel, hw, d_in, scratch);
            float *rows = grad_rows + (size_t)(n * hw * d_in);
            product(block_input, d_in, cross, rows, d_in, hw, bias, 1, 0);
            float *result = rows;
            if (maps != NULL) {
                result = maps + (size_t)(n * hw * d_in);
                rows_to_maps(rows, hw, d_in, result);
            }
            if (addend != NULL) {
                const float *restrict more = addend + (size_t)(n * hw * d_in);
                for (long i = 0; i < hw * d_in; ++i) result[i] += more[i];
            }
            if (pooled_grad != NULL) {
                const long pooled = ((height + 1) / 2) * ((width + 1) / 2);
                add_unpooled(pooled_grad + (size_t)(n * grad_channels * pooled), result,
                             d_in < grad_channels ? d_in : grad_channels, height, width);
            }
        }
        free(scratch);
    }
    return failed;
}
