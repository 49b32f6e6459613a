//! Frozen projection weights kept quantised in memory (QLoRA's base): NF4 as bitsandbytes
//! stores it, or ggml blocks (Q4_K, Q8_0 made by hone, or whatever a GGUF file holds, kept as
//! the file has them). Nothing here makes a whole f32 copy: [`QuantWeight::dequantize_rows`]
//! gives a run of rows, which `kernels::quant_linear` multiplies with and drops, a tile at a
//! time, in forward and for the input gradient in backward.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ggml_quants::{self, types};
use super::nf4::Nf4;

/// What a QLoRA stage quantises its frozen base to (`peft: { method: qlora, quant: ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum QuantFormat {
    /// 4-bit NormalFloat, blocks of 64, double-quantised absmax (bitsandbytes' `nf4`): about
    /// 4.1 bits per weight.
    #[default]
    #[serde(rename = "nf4")]
    Nf4,
    /// ggml's Q4_K (super-blocks of 256, 4.5 bits per weight); rows must be a multiple of 256.
    #[serde(rename = "q4_k")]
    Q4K,
    /// ggml's Q8_0 (blocks of 32, 8.5 bits per weight); rows must be a multiple of 32.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl QuantFormat {
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Nf4 => "nf4",
            QuantFormat::Q4K => "q4_k",
            QuantFormat::Q8_0 => "q8_0",
        }
    }
}

/// Why a weight cannot be held quantised.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error(
        "{format} quantises rows in blocks of {block} values, and this weight's rows have {d_in}; use `quant: nf4`, which takes any size"
    )]
    RowsNotBlocks {
        format: String,
        block: usize,
        d_in: usize,
    },
    #[error("ggml type {0} cannot be kept quantised (hone reads it only as floats)")]
    Unsupported(String),
    #[error("{0} bytes of quantised data, {1} expected")]
    WrongLength(usize, usize),
}

#[derive(Debug, Clone)]
enum Blocks {
    Nf4(Nf4),
    /// Rows of ggml blocks, `row_bytes` each.
    Ggml {
        ggml_type: u32,
        data: Vec<u8>,
        row_bytes: usize,
    },
}

/// A `[out, in]` weight (PyTorch's layout), quantised.
#[derive(Debug, Clone)]
pub struct QuantWeight {
    pub d_out: usize,
    pub d_in: usize,
    blocks: Blocks,
    /// Row `r` of the weight is stored row `rows[r]` (GGUF stores Llama's q/k projections
    /// with their rows permuted); `None`: in order.
    rows: Option<Vec<u32>>,
}

impl QuantWeight {
    /// `values` (`[d_out, d_in]`, row-major) quantised to `format`.
    pub fn quantize(
        values: &[f32],
        d_out: usize,
        d_in: usize,
        format: QuantFormat,
    ) -> Result<QuantWeight, QuantError> {
        debug_assert_eq!(values.len(), d_out * d_in);
        let blocks = match format {
            QuantFormat::Nf4 => Blocks::Nf4(Nf4::quantize(values)),
            QuantFormat::Q4K | QuantFormat::Q8_0 => {
                let ggml_type = match format {
                    QuantFormat::Q4K => types::Q4_K,
                    _ => types::Q8_0,
                };
                let row_bytes = row_bytes(ggml_type, d_in, format.name())?;
                use rayon::prelude::*;
                let rows: Vec<Vec<u8>> = values
                    .par_chunks(d_in.max(1))
                    .map(|row| ggml_quantize(ggml_type, row))
                    .collect();
                Blocks::Ggml {
                    ggml_type,
                    data: rows.concat(),
                    row_bytes,
                }
            }
        };
        Ok(QuantWeight {
            d_out,
            d_in,
            blocks,
            rows: None,
        })
    }

    /// A weight as a GGUF file stores it: `data` holds `d_out` rows of `d_in` values in ggml
    /// type `ggml_type`; row `r` of the weight is stored row `rows[r]` when given.
    pub fn from_ggml(
        ggml_type: u32,
        data: Vec<u8>,
        d_out: usize,
        d_in: usize,
        rows: Option<Vec<u32>>,
    ) -> Result<QuantWeight, QuantError> {
        let name = ggml_quants::type_name(ggml_type);
        if !KEPT_GGML.contains(&ggml_type) {
            return Err(QuantError::Unsupported(name));
        }
        let row_bytes = row_bytes(ggml_type, d_in, &name)?;
        if data.len() != row_bytes * d_out {
            return Err(QuantError::WrongLength(data.len(), row_bytes * d_out));
        }
        if let Some(r) = &rows
            && (r.len() != d_out || r.iter().any(|&i| i as usize >= d_out))
        {
            return Err(QuantError::WrongLength(r.len(), d_out));
        }
        Ok(QuantWeight {
            d_out,
            d_in,
            blocks: Blocks::Ggml {
                ggml_type,
                data,
                row_bytes,
            },
            rows,
        })
    }

    /// Rows `start..start + out.len() / d_in` in f32, into `out` (row-major).
    pub fn dequantize_rows(&self, start: usize, out: &mut [f32]) {
        use rayon::prelude::*;
        let d_in = self.d_in.max(1);
        out.par_chunks_mut(d_in)
            .enumerate()
            .for_each(|(i, row)| self.dequantize_row_into(start + i, row));
    }

    /// Row `r` (in the weight's own order) in f32, into `out` (`d_in` values), on this thread.
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        let stored = self.rows.as_ref().map_or(r, |rows| rows[r] as usize);
        self.dequantize_row(stored, out);
    }

    fn dequantize_row(&self, stored: usize, out: &mut [f32]) {
        match &self.blocks {
            Blocks::Nf4(q) => q.dequantize_into(stored * self.d_in, out),
            Blocks::Ggml {
                ggml_type,
                data,
                row_bytes,
            } => {
                let bytes = &data[stored * row_bytes..(stored + 1) * row_bytes];
                let values = ggml_quants::dequantize(*ggml_type, bytes, self.d_in)
                    .expect("row length checked when the weight was made");
                out.copy_from_slice(&values);
            }
        }
    }

    /// Output rows per tile when the weight is used a tile at a time: about 16 MiB of f32.
    pub fn tile_rows(&self) -> usize {
        const TILE_VALUES: usize = 4 << 20;
        (TILE_VALUES / self.d_in.max(1)).max(1)
    }

    /// Rows `start..start + rows` in f32, as a `[rows, d_in]` tensor on `device`.
    pub fn rows_tensor(
        &self,
        start: usize,
        rows: usize,
        device: &burn::tensor::Device,
    ) -> burn::tensor::Tensor<2> {
        let mut values = vec![0f32; rows * self.d_in];
        self.dequantize_rows(start, &mut values);
        burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(values, [rows, self.d_in]),
            device,
        )
    }

    /// `(start, rows)` of each tile of output rows.
    pub fn tiles(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (total, step) = (self.d_out, self.tile_rows());
        (0..total)
            .step_by(step)
            .map(move |s| (s, step.min(total - s)))
    }

    /// The whole weight in f32, `[d_out, d_in]` (export and merging only).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.d_out * self.d_in];
        self.dequantize_rows(0, &mut out);
        out
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let rows = self.rows.as_ref().map_or(0, |r| 4 * r.len());
        rows + match &self.blocks {
            Blocks::Nf4(q) => q.bytes(),
            Blocks::Ggml { data, .. } => data.len(),
        }
    }

    /// The format's name: `nf4`, or the ggml type's (`Q4_K`, `Q8_0`...).
    pub fn format(&self) -> String {
        match &self.blocks {
            Blocks::Nf4(_) => "nf4".into(),
            Blocks::Ggml { ggml_type, .. } => ggml_quants::type_name(*ggml_type),
        }
    }
}

/// The ggml types a GGUF base keeps as its blocks under QLoRA: the quantised ones hone can
/// dequantise a row at a time (the float types load as floats).
pub const KEPT_GGML: [u32; 11] = [
    types::Q4_0,
    types::Q4_1,
    types::Q5_0,
    types::Q5_1,
    types::Q8_0,
    types::Q2_K,
    types::Q3_K,
    types::Q4_K,
    types::Q5_K,
    types::Q6_K,
    types::MXFP4,
];

/// Bytes per row of `d_in` values of `ggml_type`, if rows are whole blocks.
fn row_bytes(ggml_type: u32, d_in: usize, name: &str) -> Result<usize, QuantError> {
    let (bytes, per_block) = ggml_quants::block_layout(ggml_type)
        .ok_or_else(|| QuantError::Unsupported(name.to_owned()))?;
    if !d_in.is_multiple_of(per_block) {
        return Err(QuantError::RowsNotBlocks {
            format: name.to_owned(),
            block: per_block,
            d_in,
        });
    }
    Ok(d_in / per_block * bytes)
}

fn ggml_quantize(ggml_type: u32, row: &[f32]) -> Vec<u8> {
    super::ggml_quantize::quantize(ggml_type, row).expect("row length checked above")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(d_out: usize, d_in: usize) -> Vec<f32> {
        (0..d_out * d_in)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1)
            .collect()
    }

    /// Every format dequantises close to the input (within its own precision), any run of rows
    /// equals the same rows of the whole, and holds far fewer bytes than f32.
    #[test]
    fn formats_round_trip_a_row_at_a_time() {
        let (d_out, d_in) = (8, 512);
        let w = weight(d_out, d_in);
        for (format, tolerance, max_bytes) in [
            (QuantFormat::Nf4, 0.012, d_out * d_in * 5 / 8 + 64),
            (QuantFormat::Q4K, 0.008, d_out * d_in * 5 / 8),
            (QuantFormat::Q8_0, 0.0004, d_out * d_in * 9 / 8),
        ] {
            let q = QuantWeight::quantize(&w, d_out, d_in, format).unwrap();
            let whole = q.dequantize();
            let worst = whole
                .iter()
                .zip(&w)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < tolerance, "{format:?}: {worst}");
            assert!(q.bytes() <= max_bytes, "{format:?}: {} bytes", q.bytes());
            let mut rows = vec![0f32; 3 * d_in];
            q.dequantize_rows(2, &mut rows);
            assert_eq!(rows, whole[2 * d_in..5 * d_in], "{format:?}");
        }
    }

    #[test]
    fn ggml_formats_need_whole_blocks_per_row() {
        let w = weight(2, 100);
        let err = QuantWeight::quantize(&w, 2, 100, QuantFormat::Q4K).unwrap_err();
        assert!(err.to_string().contains("use `quant: nf4`"), "{err}");
        assert!(QuantWeight::quantize(&w, 2, 100, QuantFormat::Nf4).is_ok());
    }

    /// A GGUF weight with permuted rows reads back in the model's order.
    #[test]
    fn stored_row_order_is_undone() {
        let (d_out, d_in) = (4, 32);
        let w = weight(d_out, d_in);
        let order = [2u32, 0, 3, 1];
        let mut stored = Vec::new();
        for r in 0..d_out {
            // Stored row s holds model row r where order[r] == s.
            let model_row = order.iter().position(|&s| s as usize == r).unwrap();
            stored.extend(ggml_quantize(
                types::Q8_0,
                &w[model_row * d_in..(model_row + 1) * d_in],
            ));
        }
        let q =
            QuantWeight::from_ggml(types::Q8_0, stored, d_out, d_in, Some(order.to_vec())).unwrap();
        let direct = QuantWeight::quantize(&w, d_out, d_in, QuantFormat::Q8_0).unwrap();
        assert_eq!(q.dequantize(), direct.dequantize());
        assert!(QuantWeight::from_ggml(types::Q8_0, vec![0; 5], d_out, d_in, None).is_err());
    }
}
