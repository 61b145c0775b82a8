/* Portable inference for a model exported by `qat export --format c-header`.
 * The model's op list in order: weight layers (RMS norm if the model uses it, fully connected
 * layers only; per-sample absmax quantization of the input to the layer's activation bits; dot
 * products or 3x3 convolutions with the dequantized weights), ReLU, 2x2 max-pooling and
 * residual adds. This is the training evaluation pass, step for step. C99, no allocation. */
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

/* 2x2 max-pooling, stride 2, of a side x side x channels HWC map x into y. */
static void qat_pool(const float *x, float *y, int side, int channels) {
    int i, j, r, half = side / 2;
    for (i = 0; i < half; i++)
        for (j = 0; j < half; j++)
            for (r = 0; r < channels; r++) {
                const float *w = x + ((2 * i) * side + 2 * j) * channels + r;
                float m = w[0];
                m = w[channels] > m ? w[channels] : m;
                m = w[side * channels] > m ? w[side * channels] : m;
                m = w[(side + 1) * channels] > m ? w[(side + 1) * channels] : m;
                y[(i * half + j) * channels + r] = m;
            }
}

/* One weight layer on x (left as it is) into y: RMS norm of fully connected inputs (if the
 * model uses it), absmax quantization to the layer's activation bits, then the dot products or
 * the 3x3 convolution (the whole output map, before any activation), times the layer's scales. */
static void qat_layer_forward(const qat_layer *L, const float *x, float *y) {
    static float q[QAT_MAX_WIDTH];
    int inputs = L->side ? L->side * L->side * L->in_channels : L->cols, r, c;
    float scale;
    for (c = 0; c < inputs; c++) q[c] = x[c];
    if (QAT_RMS_NORM && !L->side) { /* training normalises fully connected inputs only */
        float ms = 0.0f;
        for (c = 0; c < inputs; c++) ms += q[c] * q[c];
        ms = 1.0f / sqrtf(ms / (float)inputs + 1e-12f);
        for (c = 0; c < inputs; c++) q[c] *= ms;
    }
    scale = qat_quantize(q, inputs, L->activation_bits);
    if (L->side) {
        int py, px;
        for (py = 0; py < L->side; py++)
            for (px = 0; px < L->side; px++)
                for (r = 0; r < L->rows; r++)
                    y[(py * L->side + px) * L->rows + r] =
                        qat_conv_at(L, q, py, px, r) * L->scales[L->per_row_scales ? r : 0] / scale;
    } else {
        for (r = 0; r < L->rows; r++) {
            float acc = 0.0f;
            for (c = 0; c < L->cols; c++) acc += L->levels[qat_code(L, (long)r * L->cols + c)] * q[c];
            y[r] = acc * (L->scales[L->per_row_scales ? r : 0] / scale);
        }
    }
}

/* Writes the logits of one preprocessed input ((pixel/255 - QAT_PIXEL_MEAN) / QAT_PIXEL_STD
 * per pixel of the QAT_IMAGE_SIZE² resized image) and returns the predicted class. Runs the
 * model's op list; each value lives in a buffer ("slot") the export assigned to it. */
int qat_predict(const float *input, float *logits) {
    static float slots[QAT_SLOTS][QAT_MAX_WIDTH];
    const float *out;
    int i, c, best = 0;
    for (c = 0; c < QAT_INPUTS; c++) slots[0][c] = input[c];
    for (i = 0; i < QAT_OPS; i++) {
        const qat_op *op = &qat_ops[i];
        const float *x = slots[op->in];
        float *y = slots[op->out];
        switch (op->kind) {
        case QAT_OP_LAYER:
            qat_layer_forward(&qat_layers[op->layer], x, y);
            break;
        case QAT_OP_RELU:
            for (c = 0; c < op->width; c++) y[c] = x[c] < 0.0f ? 0.0f : x[c];
            break;
        case QAT_OP_MAX_POOL:
            qat_pool(x, y, op->side, op->channels);
            break;
        case QAT_OP_ADD:
            for (c = 0; c < op->width; c++) y[c] = x[c] + op->scale * slots[op->skip][c];
            break;
        }
    }
    out = slots[qat_ops[QAT_OPS - 1].out];
    for (c = 0; c < QAT_CLASSES; c++) {
        if (logits) logits[c] = out[c];
        if (out[c] > out[best]) best = c;
    }
    return best;
}
