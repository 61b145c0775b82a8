/* Portable inference for a model exported by `qat export --format c-header`.
 * Per layer: RMS norm (if the model uses it; fully connected layers), per-sample absmax
 * quantization of the input to the layer's activation bits, dot products or 3x3 convolutions
 * with the dequantized weights, ReLU between layers, 2x2 max-pooling where a convolution asks.
 * This is the training evaluation pass, step for step. C99, no allocation. */
#include <math.h>
#include <stdint.h>
#include "qat_model.h"

static unsigned qat_code(const qat_layer *l, long i) {
    long bit = (long)l->code_bits * i;
    unsigned word = (unsigned)l->codes[bit / 8] | ((unsigned)l->codes[bit / 8 + 1] << 8);
    return (word >> (bit % 8)) & ((1u << l->code_bits) - 1u);
}

/* Quantize x[0..n) in place to its codes (as floats); returns the scale (value = code / scale). */
static float qat_quantize(float *x, int n, int bits) {
    float max = 1e-5f, qp = (float)((1 << (bits - 1)) - 1);
    int i;
    for (i = 0; i < n; i++) max = fabsf(x[i]) > max ? fabsf(x[i]) : max;
    for (i = 0; i < n; i++) {
        float q = nearbyintf(x[i] * (qp / max)); /* ties to even in the default rounding mode */
        x[i] = q > qp ? qp : (q < -qp - 1.0f ? -qp - 1.0f : q);
    }
    return qp / max;
}

/* One output of a 3x3 convolution (stride 1, zero padding 1) at pixel (py, px), filter r,
 * over the HWC map x; before the output scale. */
static float qat_conv_at(const qat_layer *L, const float *x, int py, int px, int r) {
    int taps = L->depthwise ? 1 : L->in_channels, k, ci;
    float acc = 0.0f;
    for (k = 0; k < 9; k++) {
        int sy = py + k / 3 - 1, sx = px + k % 3 - 1;
        if (sy < 0 || sx < 0 || sy >= L->side || sx >= L->side) continue;
        for (ci = 0; ci < taps; ci++) {
            float v = x[(sy * L->side + sx) * L->in_channels + (L->depthwise ? r : ci)];
            acc += L->levels[qat_code(L, (long)r * L->cols + k * taps + ci)] * v;
        }
    }
    return acc;
}

/* 2x2 max-pooling, stride 2, of a side x side x channels map, in place (each output lies at or
 * before every input it has not yet read). */
static void qat_pool(float *y, int side, int channels) {
    int i, j, r, half = side / 2;
    for (i = 0; i < half; i++)
        for (j = 0; j < half; j++)
            for (r = 0; r < channels; r++) {
                const float *w = y + ((2 * i) * side + 2 * j) * channels + r;
                float m = w[0];
                m = w[channels] > m ? w[channels] : m;
                m = w[side * channels] > m ? w[side * channels] : m;
                m = w[(side + 1) * channels] > m ? w[(side + 1) * channels] : m;
                y[(i * half + j) * channels + r] = m;
            }
}

/* Writes the logits of one preprocessed input ((pixel/255 - QAT_PIXEL_MEAN) / QAT_PIXEL_STD
 * per pixel of the QAT_IMAGE_SIZE² resized image) and returns the predicted class. */
int qat_predict(const float *input, float *logits) {
    static float a[QAT_MAX_WIDTH], b[QAT_MAX_WIDTH];
    float *x = a, *y = b, *t;
    int l, r, c, best = 0;
    for (c = 0; c < QAT_INPUTS; c++) x[c] = input[c];
    for (l = 0; l < QAT_LAYERS; l++) {
        const qat_layer *L = &qat_layers[l];
        int inputs = L->side ? L->side * L->side * L->in_channels : L->cols;
        float scale;
        if (QAT_RMS_NORM && !L->side) { /* training normalises fully connected inputs only */
            float ms = 0.0f;
            for (c = 0; c < inputs; c++) ms += x[c] * x[c];
            ms = 1.0f / sqrtf(ms / (float)inputs + 1e-12f);
            for (c = 0; c < inputs; c++) x[c] *= ms;
        }
        scale = qat_quantize(x, inputs, L->activation_bits);
        if (L->side) {
            int py, px;
            for (py = 0; py < L->side; py++)
                for (px = 0; px < L->side; px++)
                    for (r = 0; r < L->rows; r++) {
                        float acc = qat_conv_at(L, x, py, px, r) * L->scales[L->per_row_scales ? r : 0] / scale;
                        y[(py * L->side + px) * L->rows + r] = acc < 0.0f ? 0.0f : acc;
                    }
            if (L->pool) qat_pool(y, L->side, L->rows);
        } else {
            for (r = 0; r < L->rows; r++) {
                float acc = 0.0f;
                for (c = 0; c < L->cols; c++) acc += L->levels[qat_code(L, (long)r * L->cols + c)] * x[c];
                acc *= L->scales[L->per_row_scales ? r : 0] / scale;
                y[r] = (l + 1 < QAT_LAYERS && acc < 0.0f) ? 0.0f : acc;
            }
        }
        t = x; x = y; y = t;
    }
    for (r = 0; r < QAT_CLASSES; r++) {
        if (logits) logits[r] = x[r];
        if (x[r] > x[best]) best = r;
    }
    return best;
}
