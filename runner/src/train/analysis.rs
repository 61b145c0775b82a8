//! What a finished run learned, beyond its accuracy: per-class scores and the confusion matrix,
//! calibration, per-layer code statistics, how close the quantized weights are to the latent
//! ones, and how much each layer's quantization alone costs. Written to `run.json` at the end
//! of every run and by `qat analyze <run>`.

use serde::{Deserialize, Serialize};

use crate::data::Samples;
use crate::error::Result;
use crate::nn::model::Layer;
use crate::train::Trainer;

/// Bins of the expected calibration error (the usual choice since Guo et al., 2017).
pub const ECE_BINS: usize = 15;

/// Precision, recall and F1 of one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// Correct among the samples predicted as this class.
    pub precision: f64,
    /// Correct among the samples of this class.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Samples of this class.
    pub support: usize,
}

/// Classification quality on the test set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// Share of correct predictions.
    pub accuracy: f64,
    /// Unweighted mean F1 over the classes.
    pub macro_f1: f64,
    /// Per class, in label order.
    pub classes: Vec<ClassScores>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Expected calibration error over [`ECE_BINS`] equal-width confidence bins: Σ_b (n_b/N)·
    /// |accuracy_b − mean confidence_b|.
    pub ece: f64,
}

/// One layer's quantized weights against its latent weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerAnalysis {
    /// `fc1`, ...
    pub name: String,
    /// Unscaled level set (empty for float).
    pub levels: Vec<f32>,
    /// Weights per level.
    pub histogram: Vec<usize>,
    /// Share of weights on the zero level.
    pub sparsity: f64,
    /// Entropy of the level histogram, bits.
    pub entropy: f64,
    /// Entropy over log2(levels): how much of the code's capacity the weights use.
    pub capacity_used: f64,
    /// Signal-to-quantization-noise ratio 10·log10(Σw² / Σ(w − ŵ)²), dB; absent when the
    /// weights are exact (float), since JSON has no infinity.
    pub sqnr_db: Option<f64>,
    /// Cosine similarity of the latent and quantized weights.
    pub cosine: f64,
    /// Test accuracy lost when this layer alone is quantized and the others stay float.
    pub sensitivity: f64,
}

/// Everything [`analyze`] measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Test-set classification quality of the quantized network.
    pub test: ClassReport,
    /// Test accuracy with every layer float (the baseline of the sensitivities).
    pub float_test_acc: f64,
    /// Per layer.
    pub layers: Vec<LayerAnalysis>,
}

/// Analyse the trainer's network on `test`. Leaves the network quantized for evaluation.
pub fn analyze(trainer: &mut Trainer, test: &Samples) -> Result<Analysis> {
    let classes = trainer.task().classes;
    let phases: Vec<bool> = trainer.net.layers().map(|l| l.float_phase).collect();
    let mut layers: Vec<LayerAnalysis> = Vec::new();
    let quantized = trainer.test_logits(test)?;
    for layer in trainer.net.layers() {
        layers.push(layer_analysis(layer));
    }
    set_float(trainer, |_| true);
    let float_test_acc = class_report(&trainer.test_logits(test)?, &test.labels, classes).accuracy;
    for l in 0..layers.len() {
        set_float(trainer, |i| i != l);
        layers[l].sensitivity =
            float_test_acc - class_report(&trainer.test_logits(test)?, &test.labels, classes).accuracy;
    }
    trainer.net.layers_mut().zip(phases).for_each(|(layer, phase)| layer.float_phase = phase);
    trainer.test_logits(test)?;
    Ok(Analysis { test: class_report(&quantized, &test.labels, classes), float_test_acc, layers })
}

fn set_float(trainer: &mut Trainer, float: impl Fn(usize) -> bool) {
    trainer.net.layers_mut().enumerate().for_each(|(i, layer)| layer.float_phase = float(i));
}

/// Code statistics and latent-vs-quantized error of one layer's current quantization.
pub fn layer_analysis(layer: &Layer) -> LayerAnalysis {
    let q = &layer.quantized;
    let mut histogram = vec![0usize; q.levels.len()];
    q.codes.iter().for_each(|&c| histogram[c as usize] += 1);
    let n = q.codes.len().max(1) as f64;
    let entropy: f64 =
        histogram.iter().filter(|&&h| h > 0).map(|&h| -(h as f64 / n) * (h as f64 / n).log2()).sum();
    let zero = q.levels.iter().position(|&l| l == 0.0).map_or(0, |z| histogram[z]);
    let (mut signal, mut noise, mut dot, mut quantized_norm) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&w, &v) in layer.weight.iter().zip(&q.values) {
        let (w, v) = (w as f64, v as f64);
        signal += w * w;
        noise += (w - v) * (w - v);
        dot += w * v;
        quantized_norm += v * v;
    }
    let capacity = (q.levels.len() as f64).log2();
    LayerAnalysis {
        name: layer.name.clone(),
        levels: q.levels.clone(),
        sparsity: zero as f64 / n,
        entropy,
        capacity_used: if capacity > 0.0 { entropy / capacity } else { 0.0 },
        sqnr_db: (noise > 0.0).then(|| 10.0 * (signal / noise).log10()),
        cosine: dot / (signal.sqrt() * quantized_norm.sqrt()).max(f64::MIN_POSITIVE),
        histogram,
        sensitivity: 0.0,
    }
}

/// Per-class scores, confusion matrix and calibration of `logits` (`n × classes`).
pub fn class_report(logits: &[f32], labels: &[u8], classes: usize) -> ClassReport {
    let mut confusion = vec![vec![0usize; classes]; classes];
    let mut bins = vec![(0usize, 0usize, 0.0f64); ECE_BINS]; // (count, correct, Σ confidence)
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let (predicted, confidence) = softmax_top(row);
        confusion[label as usize][predicted] += 1;
        let bin = ((confidence * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        bins[bin].0 += 1;
        bins[bin].1 += usize::from(predicted == label as usize);
        bins[bin].2 += confidence;
    }
    let n = labels.len().max(1) as f64;
    let per_class: Vec<ClassScores> = (0..classes)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted: usize = confusion.iter().map(|row| row[c]).sum();
            let support: usize = confusion[c].iter().sum();
            let precision = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
            let recall = if support > 0 { tp / support as f64 } else { 0.0 };
            let f1 =
                if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassScores { precision, recall, f1, support }
        })
        .collect();
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let ece = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(count, right, confidence)| {
            (count as f64 / n) * (right as f64 / count as f64 - confidence / count as f64).abs()
        })
        .sum();
    ClassReport {
        accuracy: correct as f64 / n,
        macro_f1: per_class.iter().map(|c| c.f1).sum::<f64>() / classes as f64,
        classes: per_class,
        confusion,
        ece,
    }
}

/// Arg-max and its softmax probability.
fn softmax_top(row: &[f32]) -> (usize, f64) {
    let (best, max) =
        row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    let total: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (best, 1.0 / total)
}

/// A terminal summary of `analysis`.
pub fn summary(analysis: &Analysis) -> String {
    let t = &analysis.test;
    let mut out = format!(
        "test accuracy {:.2}%, macro F1 {:.4}, ECE ({ECE_BINS} bins) {:.4}; all layers float: {:.2}%\n\n",
        100.0 * t.accuracy,
        t.macro_f1,
        t.ece,
        100.0 * analysis.float_test_acc
    );
    out += "class  precision  recall      F1  support\n";
    for (c, s) in t.classes.iter().enumerate() {
        out += &format!("{c:>5}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n", s.precision, s.recall, s.f1, s.support);
    }
    out += "\nconfusion (rows: true class, columns: predicted)\n";
    for row in &t.confusion {
        out += &row.iter().map(|v| format!("{v:>5}")).collect::<String>();
        out += "\n";
    }
    out += "\nlayer  levels  sparsity  entropy  capacity  SQNR dB  cosine  sensitivity\n";
    for l in &analysis.layers {
        out += &format!(
            "{:<5}  {:>6}  {:>8.3}  {:>7.3}  {:>8.3}  {:>7}  {:>6.4}  {:>+10.2}%\n",
            l.name,
            l.levels.len(),
            l.sparsity,
            l.entropy,
            l.capacity_used,
            l.sqnr_db.map_or("exact".into(), |v| format!("{v:.2}")),
            l.cosine,
            100.0 * l.sensitivity
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Classes of the digit sets the tests score.
    const TEN: usize = 10;

    fn one_hot(class: usize, margin: f32) -> Vec<f32> {
        (0..TEN).map(|c| if c == class { margin } else { 0.0 }).collect()
    }

    #[test]
    fn scores_and_confusion_of_known_predictions() {
        // Three of class 0 (two right, one predicted 1), one of class 1 (right).
        let logits: Vec<f32> = [one_hot(0, 9.0), one_hot(0, 9.0), one_hot(1, 9.0), one_hot(1, 9.0)].concat();
        let report = class_report(&logits, &[0, 0, 0, 1], TEN);
        assert_eq!(report.accuracy, 0.75);
        assert_eq!(report.confusion[0][0], 2);
        assert_eq!(report.confusion[0][1], 1);
        assert_eq!(report.confusion[1][1], 1);
        assert_eq!(report.classes[0].precision, 1.0);
        assert!((report.classes[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(report.classes[1].precision, 0.5);
        assert_eq!(report.classes[1].recall, 1.0);
        assert!((report.classes[1].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(report.classes[2].support, 0);
    }

    #[test]
    fn calibration_error_of_known_confidences() {
        // Uniform logits: confidence 0.1 in bin 1; one right of two → |0.5 − 0.1| = 0.4.
        let logits = vec![0.0f32; 2 * TEN];
        let report = class_report(&logits, &[0, 3], TEN);
        assert!((report.ece - 0.4).abs() < 1e-9, "{}", report.ece);
        // Confident and right: confidence e^20/(e^20 + 9) ≈ 1, ECE ≈ 0.
        let report = class_report(&one_hot(4, 20.0), &[4], TEN);
        assert!(report.ece < 1e-6, "{}", report.ece);
    }
}
