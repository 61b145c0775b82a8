/* Portable inference for a model exported by `qat export --format c-header`.
 * Per layer: RMS norm (if the model uses it), per-sample absmax quantization of the input to
 * the layer's activation bits, dot products with the dequantized weights, ReLU between layers.
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

/* Writes the logits of one preprocessed input ((pixel/255 - QAT_PIXEL_MEAN) / QAT_PIXEL_STD
 * per pixel of the QAT_IMAGE_SIZE² resized image) and returns the predicted class. */
int qat_predict(const float *input, float *logits) {
    static float a[QAT_MAX_WIDTH], b[QAT_MAX_WIDTH];
    float *x = a, *y = b, *t;
    int l, r, c, best = 0;
    for (c = 0; c < QAT_INPUTS; c++) x[c] = input[c];
    for (l = 0; l < QAT_LAYERS; l++) {
        const qat_layer *L = &qat_layers[l];
        float scale;
        if (QAT_RMS_NORM) {
            float ms = 0.0f;
            for (c = 0; c < L->cols; c++) ms += x[c] * x[c];
            ms = 1.0f / sqrtf(ms / (float)L->cols + 1e-12f);
            for (c = 0; c < L->cols; c++) x[c] *= ms;
        }
        scale = qat_quantize(x, L->cols, L->activation_bits);
        for (r = 0; r < L->rows; r++) {
            float acc = 0.0f;
            for (c = 0; c < L->cols; c++) acc += L->levels[qat_code(L, (long)r * L->cols + c)] * x[c];
            acc *= L->scales[L->per_row_scales ? r : 0] / scale;
            y[r] = (l + 1 < QAT_LAYERS && acc < 0.0f) ? 0.0f : acc;
        }
        t = x; x = y; y = t;
    }
    for (r = 0; r < QAT_CLASSES; r++) {
        if (logits) logits[r] = x[r];
        if (x[r] > x[best]) best = r;
    }
    return best;
}
