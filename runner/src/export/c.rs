//! `qat export --format c-header`: the model as a C header of const arrays (codes bit-packed,
//! level sets and scales as floats, shapes as defines) plus a small portable C file that runs
//! it, for microcontrollers. No dynamic memory; C99 and `<math.h>` only.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use qatlab_deploy::format::{ModelFile, NormKind};
use qatlab_deploy::pack::{pack_bits, Packing};

use crate::error::Result;
use crate::run::write_atomic;

/// The portable inference code; it includes the header named `qat_model.h`.
const INFER_C: &str = include_str!("qat_infer.c");

/// Write `header` and, beside it, `qat_infer.c`; returns both paths.
pub fn write(model: &ModelFile, header: &Path) -> Result<Vec<PathBuf>> {
    let c_file = header.with_file_name("qat_infer.c");
    write_atomic(header, header_text(model).as_bytes())?;
    let include = header.file_name().map_or("qat_model.h".into(), |n| n.to_string_lossy().into_owned());
    write_atomic(&c_file, INFER_C.replace("\"qat_model.h\"", &format!("\"{include}\"")).as_bytes())?;
    Ok(vec![header.to_path_buf(), c_file])
}

/// The header's text.
pub fn header_text(model: &ModelFile) -> String {
    let h = &model.header;
    let mut s = String::new();
    let _ = writeln!(s, "/* {} (run {}), exported by qat. Generated file: do not edit. */", h.name, h.run_id);
    s += "#ifndef QAT_MODEL_H\n#define QAT_MODEL_H\n#include <stdint.h>\n\n";
    let _ = writeln!(s, "#define QAT_IMAGE_SIZE {}", h.input.image_size);
    let _ = writeln!(s, "#define QAT_INPUTS {}", h.input.image_size * h.input.image_size);
    let _ = writeln!(s, "#define QAT_PIXEL_MEAN {:?}f", h.input.mean);
    let _ = writeln!(s, "#define QAT_PIXEL_STD {:?}f", h.input.std);
    let _ = writeln!(s, "#define QAT_CLASSES {}", h.classes);
    let _ = writeln!(s, "#define QAT_RMS_NORM {}", u8::from(h.norm == NormKind::Rms));
    let _ = writeln!(s, "#define QAT_LAYERS {}", h.layers.len());
    // Buffers hold any layer's input and its output map before pooling.
    let widest = h.layers.iter().map(|l| l.input_features().max(l.map_features())).max().unwrap_or(0);
    let _ = writeln!(s, "#define QAT_MAX_WIDTH {widest}\n");
    s += "typedef struct {\n    int rows, cols, code_bits, activation_bits, per_row_scales;\n    \
          int side, in_channels, depthwise, pool; /* a 3x3 convolution over a side x side HWC map; side 0: fully connected */\n    \
          const uint8_t *codes; /* code i at bit code_bits*i, little-endian */\n    \
          const float *levels;\n    const float *scales;\n} qat_layer;\n\n";
    for (spec, codes) in h.layers.iter().zip(&model.codes) {
        let name = spec.name.to_uppercase();
        let Packing::Bits { bits } = Packing::bits_for(spec.levels.len()) else {
            unreachable!("bits_for gives bits")
        };
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
        let Packing::Bits { bits } = Packing::bits_for(spec.levels.len()) else {
            unreachable!("bits_for gives bits")
        };
        let _ = writeln!(
            s,
            "    {{{}, {}, {bits}, {}, {}, {}, {}, {}, {}, qat_{n}_codes, qat_{n}_levels, qat_{n}_scales}},",
            spec.rows,
            spec.cols,
            spec.activation_bits,
            u8::from(spec.scales.len() > 1),
            spec.conv.map_or(0, |c| c.side),
            spec.conv.map_or(0, |c| c.in_channels),
            u8::from(spec.conv.is_some_and(|c| c.depthwise)),
            u8::from(spec.conv.is_some_and(|c| c.pool)),
            n = spec.name
        );
    }
    s += "};\n\n#endif\n";
    s
}
