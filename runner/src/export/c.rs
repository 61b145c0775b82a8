//! `qat export --format c-header`: the model as a C header of const arrays (codes bit-packed,
//! level sets and scales as floats, shapes as defines) plus a small portable C file that runs
//! it, for microcontrollers. No dynamic memory; C99 and `<math.h>` only.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use qatlab_deploy::format::{LayerSpec, ModelFile, NormKind};
use qatlab_deploy::graph::{self, Op, INPUT};
use qatlab_deploy::pack::{pack_bits, Packing};

use crate::error::{Error, Result};
use crate::run::write_atomic;

/// The portable inference code; it includes the header named `qat_model.h`.
const INFER_C: &str = include_str!("qat_infer.c");

/// Write `header` and, beside it, `qat_infer.c`; returns both paths.
pub fn write(model: &ModelFile, header: &Path) -> Result<Vec<PathBuf>> {
    let c_file = header.with_file_name("qat_infer.c");
    write_atomic(header, header_text(model)?.as_bytes())?;
    let include = header.file_name().map_or("qat_model.h".into(), |n| n.to_string_lossy().into_owned());
    write_atomic(&c_file, INFER_C.replace("\"qat_model.h\"", &format!("\"{include}\"")).as_bytes())?;
    Ok(vec![header.to_path_buf(), c_file])
}

/// The ops the portable C runtime implements.
const C_TAGS: [&str; 4] = ["layer", "relu", "max-pool", "add"];

/// The header's text; an error naming the first op the C runtime lacks (a language model's
/// embedding, norms, attention: token generation needs the Rust runtime, `qat generate`).
pub fn header_text(model: &ModelFile) -> Result<String> {
    let h = &model.header;
    let ops = h.graph();
    if let Some((i, op)) = ops.iter().enumerate().find(|(_, op)| !C_TAGS.contains(&op.tag())) {
        return Err(Error::Config(format!(
            "--format c-header: op {i} (`{}`) is `{}`, which the C runtime does not implement (it runs {}); \
             a language model runs with qat generate and qat infer",
            op.name(),
            op.tag(),
            C_TAGS.join(", ")
        )));
    }
    let input = h.image().map_err(|e| Error::Config(format!("--format c-header: {e}")))?;
    let mut s = String::new();
    let _ = writeln!(s, "/* {} (run {}), exported by qat. Generated file: do not edit. */", h.name, h.run_id);
    s += "#ifndef QAT_MODEL_H\n#define QAT_MODEL_H\n#include <stdint.h>\n\n";
    let _ = writeln!(s, "#define QAT_IMAGE_SIZE {}", input.image_size);
    let _ = writeln!(s, "#define QAT_INPUTS {}", input.image_size * input.image_size);
    let _ = writeln!(s, "#define QAT_PIXEL_MEAN {:?}f", input.mean);
    let _ = writeln!(s, "#define QAT_PIXEL_STD {:?}f", input.std);
    let _ = writeln!(s, "#define QAT_CLASSES {}", h.classes);
    let _ = writeln!(s, "#define QAT_RMS_NORM {}", u8::from(h.norm == NormKind::Rms));
    let _ = writeln!(s, "#define QAT_LAYERS {}", h.layers.len());
    let widths = graph::check(h, &ops).expect("a ModelFile is validated");
    let slots = assign_slots(&ops);
    // Buffers hold any value: the input, and every op's output.
    let widest = widths.iter().copied().chain([h.input_width()]).max().unwrap_or(0);
    let _ = writeln!(s, "#define QAT_MAX_WIDTH {widest}");
    let _ = writeln!(s, "#define QAT_OPS {}", ops.len());
    let _ = writeln!(
        s,
        "#define QAT_SLOTS {}\n",
        slots.iter().map(|s| s.out.max(s.input) + 1).max().unwrap_or(1)
    );
    s += "typedef struct {\n    int rows, cols, code_bits, activation_bits, per_row_scales;\n    \
          int side, in_channels, depthwise; /* a 3x3 convolution over a side x side HWC map; side 0: fully connected */\n    \
          const uint8_t *codes; /* code i at bit code_bits*i, little-endian */\n    \
          const float *levels;\n    const float *scales;\n} qat_layer;\n\n";
    s += "enum { QAT_OP_LAYER, QAT_OP_RELU, QAT_OP_MAX_POOL, QAT_OP_ADD };\n";
    s += "typedef struct {\n    int kind, layer; /* layer: index into qat_layers */\n    \
          int in, skip, out; /* value slots read and written */\n    \
          int width, side, channels; /* values written; a max-pool's input map */\n    \
          float scale; /* an add's skip scale */\n} qat_op;\n\n";
    for (spec, codes) in h.layers.iter().zip(&model.codes) {
        let name = spec.name.to_uppercase();
        let bits = code_bits(spec);
        let _ = writeln!(
            s,
            "/* {}: {}×{}, {}, {} levels, {bits}-bit codes */",
            spec.name,
            spec.rows,
            spec.cols,
            spec.quantizer,
            spec.levels.len()
        );
        let _ = writeln!(s, "#define QAT_{name}_ROWS {}\n#define QAT_{name}_COLS {}", spec.rows, spec.cols);
        let mut packed = pack_bits(codes, bits);
        packed.push(0); // the decoder reads one byte past a field's first byte
        let _ = write!(s, "static const uint8_t qat_{}_codes[{}] = {{", spec.name, packed.len());
        for (i, b) in packed.iter().enumerate() {
            let separator = match i {
                0 => "\n    ",
                _ if i % 24 == 0 => ",\n    ",
                _ => ",",
            };
            let _ = write!(s, "{separator}{b}");
        }
        s += "\n};\n";
        let floats = |v: &[f32]| v.iter().map(|x| format!("{x:?}f")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "static const float qat_{}_levels[{}] = {{{}}};",
            spec.name,
            spec.levels.len(),
            floats(&spec.levels)
        );
        let _ = writeln!(
            s,
            "static const float qat_{}_scales[{}] = {{{}}};\n",
            spec.name,
            spec.scales.len(),
            floats(&spec.scales)
        );
    }
    s += "static const qat_layer qat_layers[QAT_LAYERS] = {\n";
    for spec in &h.layers {
        let _ = writeln!(
            s,
            "    {{{}, {}, {}, {}, {}, {}, {}, {}, qat_{n}_codes, qat_{n}_levels, qat_{n}_scales}},",
            spec.rows,
            spec.cols,
            code_bits(spec),
            spec.activation_bits,
            u8::from(spec.scales.len() > 1),
            spec.conv.map_or(0, |c| c.side),
            spec.conv.map_or(0, |c| c.in_channels),
            u8::from(spec.conv.is_some_and(|c| c.depthwise)),
            n = spec.name
        );
    }
    s += "};\n\n";
    let _ = writeln!(s, "static const qat_op qat_ops[QAT_OPS] = {{");
    let layer_index = |name: &str| h.layers.iter().position(|l| l.name == name).expect("validated");
    for (i, op) in ops.iter().enumerate() {
        let OpSlots { input, skip, out } = slots[i];
        let (kind, layer, side, channels, scale) = match op {
            Op::Layer { layer, .. } => ("QAT_OP_LAYER", layer_index(layer), 0, 0, 0.0),
            Op::Relu { .. } => ("QAT_OP_RELU", 0, 0, 0, 0.0),
            Op::MaxPool { side, channels, .. } => ("QAT_OP_MAX_POOL", 0, *side, *channels, 0.0),
            Op::Add { scale, .. } => ("QAT_OP_ADD", 0, 0, 0, *scale),
            other => unreachable!("checked above: {} is not a C op", other.tag()),
        };
        let _ = writeln!(
            s,
            "    {{{kind}, {layer}, {input}, {}, {out}, {}, {side}, {channels}, {scale:?}f}}, /* {} */",
            skip.unwrap_or(0),
            widths[i],
            op.name()
        );
    }
    s += "};\n\n#endif\n";
    Ok(s)
}

/// Bits per code in the header's arrays: the fewest whole bits for the layer's levels.
fn code_bits(spec: &LayerSpec) -> u32 {
    match Packing::bits_for(spec.levels.len()) {
        Packing::Bits { bits } => bits,
        other => unreachable!("bits_for gives bits, not {other:?}"),
    }
}

/// The buffer slots one op reads and writes.
#[derive(Clone, Copy)]
struct OpSlots {
    input: usize,
    skip: Option<usize>,
    out: usize,
}

/// Buffer slots for the values of `ops`. Slot 0 holds the network input; a slot is reused once
/// the value in it has been read for the last time, and an op never writes a slot it reads.
fn assign_slots(ops: &[Op]) -> Vec<OpSlots> {
    let last_read = |name: &str| ops.iter().rposition(|o| o.inputs().contains(&name));
    // (value name, its slot, the op that reads it last)
    let mut live: Vec<(String, usize, Option<usize>)> = vec![(INPUT.to_string(), 0, last_read(INPUT))];
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let slot_of = |name: &str, live: &[(String, usize, Option<usize>)]| {
            live.iter().rev().find(|(n, _, _)| n == name).map(|(_, s, _)| *s).expect("validated graph")
        };
        let inputs = op.inputs();
        let input = slot_of(inputs[0], &live);
        let skip = inputs.get(1).map(|n| slot_of(n, &live));
        // values still needed after this op (or by it) keep their slots
        live.retain(|(_, _, last)| last.is_some_and(|l| l >= i));
        let busy: Vec<usize> = live.iter().map(|(_, s, _)| *s).collect();
        let free = (0..).find(|s| !busy.contains(s)).expect("unbounded");
        // the logits stay until the end: give the last op a slot of its own too
        live.push((op.name().to_string(), free, last_read(op.name()).or((i + 1 == ops.len()).then_some(i))));
        out.push(OpSlots { input, skip, out: free });
    }
    out
}
