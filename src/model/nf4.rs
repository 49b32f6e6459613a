//! NF4, the 4-bit NormalFloat type QLoRA stores frozen base weights in, as bitsandbytes does it
//! (`quantize_4bit` / `dequantize_4bit` with `quant_type="nf4"`, `compress_statistics=True`):
//!
//! - the flat weight (PyTorch's row-major `[out, in]`) is cut into blocks of 64; each value is
//!   divided by its block's absolute maximum and mapped to the index of the nearest of the 16
//!   NF4 values (bitsandbytes' `bucketize` on the midpoints: a value exactly on a midpoint
//!   takes the lower index), two indices per byte, the first in the high nibble;
//! - double quantisation: the absmax values, less their mean (the offset), are quantised again
//!   to 8 bits in blocks of 256, with bitsandbytes' signed dynamic map and a f32 scale per
//!   block;
//! - dequantisation is `NF4[index] * (code2[absmax code] * absmax2 + offset)`, in f32.
//!
//! About 4.13 bits per weight: 4, plus 8 per 64 for the absmax codes, plus 32 per 16,384 for
//! the second-level scales.
//!
//! `tests/fixtures/nf4.safetensors` (made by bitsandbytes, `scripts/make_nf4_fixture.py`) holds
//! the reference values.

/// Weights per block.
pub const BLOCK: usize = 64;
/// Absmax values per second-level block.
pub const STAT_BLOCK: usize = 256;

/// The 16 NF4 values (bitsandbytes' `get_4bit_type("nf4")`, sorted).
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// A tensor in NF4 with double-quantised statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4 {
    /// Number of values.
    pub len: usize,
    /// Two 4-bit indices per byte, the first in the high nibble.
    pub packed: Vec<u8>,
    /// Each block's absmax, less `offset`, as an index into [`dynamic_map`].
    pub absmax: Vec<u8>,
    /// The scale of each run of [`STAT_BLOCK`] absmax codes.
    pub absmax_scale: Vec<f32>,
    /// The mean of the absmax values.
    pub offset: f32,
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`): 256 sorted
/// values in [-1, 1], dense near zero; what the absmax codes index.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    MAP.get_or_init(|| {
        const EXPONENT_BITS: i32 = 7;
        let mut data: Vec<f32> = Vec::with_capacity(256);
        for i in 0..EXPONENT_BITS {
            // 2^i + 1 boundaries from 0.1 to 1, and the midpoints between them, at 10^(i - 6).
            let bounds = linspace(0.1, 1.0, (1usize << i) + 1);
            let scale = 10f64.powi(i - (EXPONENT_BITS - 1)) as f32;
            for pair in bounds.windows(2) {
                let mean = (pair[0] + pair[1]) / 2.0;
                data.push(scale * mean);
                data.push(-(scale * mean));
            }
        }
        data.push(0.0);
        data.push(1.0);
        data.resize(256, 0.0);
        data.sort_by(f32::total_cmp);
        let mut map = [0f32; 256];
        map.copy_from_slice(&data);
        map
    })
}

/// `torch.linspace(start, end, steps)` of f32 on the CPU: an f32 step, each half computed from
/// its own end with a fused multiply-add (torch's vectorised kernel), so the values are torch's
/// bit for bit.
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| match i < half {
            true => step.mul_add(i as f32, start),
            false => (-step).mul_add((steps - 1 - i) as f32, end),
        })
        .collect()
}

/// The index of the first midpoint of `sorted` that `v` does not exceed: bucketize on the
/// midpoints, so the nearest value, the lower one on a tie.
fn nearest(sorted: &[f32], v: f32) -> u8 {
    // The midpoints rise with the sorted values, so "midpoints below v" is a prefix: a binary
    // search for its end.
    let (mut lo, mut hi) = (0, sorted.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if v > (sorted[mid] + sorted[mid + 1]) / 2.0 {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo as u8
}

/// The absolute maximum of each `block`-sized run of `values` (the last may be short).
fn absmax(values: &[f32], block: usize) -> Vec<f32> {
    use rayon::prelude::*;
    values
        .par_chunks(block)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect()
}

/// `values` divided by their block's absmax (clamped to 1e-38, as bitsandbytes does) and
/// clamped to [-1, 1], each mapped to its nearest entry of `map`.
fn quantize_blocks(values: &[f32], scales: &[f32], block: usize, map: &[f32]) -> Vec<u8> {
    use rayon::prelude::*;
    let mut codes = vec![0u8; values.len()];
    codes
        .par_chunks_mut(block)
        .zip(values.par_chunks(block))
        .zip(scales)
        .for_each(|((out, b), &m)| {
            // bitsandbytes divides by max(absmax, 1e-38); 1e-38 is subnormal, which the
            // training threads flush to zero (`backend::init_cpu`), so a block of zeros would
            // divide by 0 and turn into NaN. Its reciprocal, written out, is a normal number.
            let inverse = if m >= f32::MIN_POSITIVE {
                1.0 / m
            } else {
                1.0e38
            };
            for (o, v) in out.iter_mut().zip(b) {
                *o = nearest(map, (v * inverse).clamp(-1.0, 1.0));
            }
        });
    codes
}

impl Nf4 {
    /// `values` (a weight in PyTorch's row-major layout) in NF4.
    pub fn quantize(values: &[f32]) -> Nf4 {
        let block_max = absmax(values, BLOCK);
        let mut codes = quantize_blocks(values, &block_max, BLOCK, &NF4);
        if codes.len() % 2 == 1 {
            codes.push(nearest(&NF4, 0.0));
        }
        let packed = codes.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
        // Double quantisation of the block maxima, around their mean.
        let offset = mean(&block_max);
        let centred: Vec<f32> = block_max.iter().map(|m| m - offset).collect();
        let absmax_scale = absmax(&centred, STAT_BLOCK);
        let absmax = quantize_blocks(&centred, &absmax_scale, STAT_BLOCK, dynamic_map());
        Nf4 {
            len: values.len(),
            packed,
            absmax,
            absmax_scale,
            offset,
        }
    }

    /// The absmax of block `b`, from its double-quantised code.
    fn block_scale(&self, b: usize) -> f32 {
        dynamic_map()[self.absmax[b] as usize] * self.absmax_scale[b / STAT_BLOCK] + self.offset
    }

    /// Values `start..start + out.len()` dequantised into `out`.
    pub fn dequantize_into(&self, start: usize, out: &mut [f32]) {
        let code = |i: usize| {
            let byte = self.packed[i / 2];
            NF4[if i.is_multiple_of(2) {
                byte >> 4
            } else {
                byte & 0xF
            } as usize]
        };
        // A block (one scale) at a time, its whole bytes two values at a time: the loop a
        // QLoRA step spends its dequantising in, with no per-value division or branch.
        let end = start + out.len();
        let mut i = start;
        while i < end {
            let block_end = ((i / BLOCK + 1) * BLOCK).min(end);
            let scale = self.block_scale(i / BLOCK);
            if !i.is_multiple_of(2) {
                out[i - start] = code(i) * scale;
                i += 1;
            }
            let pairs = (block_end - i) / 2;
            let dst = &mut out[i - start..i - start + 2 * pairs];
            for (pair, &byte) in dst
                .chunks_exact_mut(2)
                .zip(&self.packed[i / 2..i / 2 + pairs])
            {
                pair[0] = NF4[(byte >> 4) as usize] * scale;
                pair[1] = NF4[(byte & 0xF) as usize] * scale;
            }
            i += 2 * pairs;
            if i < block_end {
                out[i - start] = code(i) * scale;
                i += 1;
            }
        }
    }

    /// Bytes held: codes, absmax codes and scales.
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.absmax.len() + 4 * self.absmax_scale.len() + 4
    }
}

/// The f32 mean, summed in f64 so it does not depend on the order.
fn mean(values: &[f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    (values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture's tensors: (name -> (shape, bytes)).
    fn fixture() -> Vec<(String, Vec<usize>, Vec<u8>)> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nf4.safetensors");
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
            .collect()
    }

    fn get<'a>(all: &'a [(String, Vec<usize>, Vec<u8>)], name: &str) -> &'a [u8] {
        &all.iter().find(|(n, _, _)| n == name).unwrap().2
    }

    /// The first index where `a` and `b` differ, for a short failure message.
    fn first_difference<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T]) -> Option<String> {
        if a.len() != b.len() {
            return Some(format!("lengths {} and {}", a.len(), b.len()));
        }
        let i = a.iter().zip(b).position(|(x, y)| x != y)?;
        let n = a.iter().zip(b).filter(|(x, y)| x != y).count();
        Some(format!(
            "{n} differ, first at {i}: {:?} vs {:?}",
            a[i], b[i]
        ))
    }

    fn floats(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Any range, odd or even, inside one block or across several, dequantises to the same
    /// values as the whole tensor does there (tiles and rows start anywhere).
    #[test]
    fn any_range_dequantises_as_the_whole_does() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
            .collect();
        let q = Nf4::quantize(&values);
        let mut whole = vec![0f32; values.len()];
        q.dequantize_into(0, &mut whole);
        for (start, len) in [
            (0, 1),
            (1, 1),
            (3, 60),
            (63, 2),
            (64, 64),
            (5, 995),
            (127, 130),
            (999, 1),
        ] {
            let mut part = vec![f32::NAN; len];
            q.dequantize_into(start, &mut part);
            assert_eq!(part, whole[start..start + len], "{start}+{len}");
        }
    }

    #[test]
    fn the_dynamic_map_is_bitsandbytes() {
        let all = fixture();
        let code2 = floats(get(&all, "linear.code2"));
        assert_eq!(first_difference(&code2, &dynamic_map()[..]), None);
    }

    /// bitsandbytes' own quantisation, dequantised by hone, gives bitsandbytes' values bit for
    /// bit; and hone's quantisation of the same weights gives bitsandbytes' codes, also on the
    /// training threads, which flush subnormal floats to zero (a block of zeros).
    #[test]
    fn matches_bitsandbytes() {
        crate::backend::init_cpu();
        let all = fixture();
        for case in ["linear", "ragged", "outliers"] {
            let at = |part: &str| get(&all, &format!("{case}.{part}"));
            let weight = floats(at("weight"));
            let theirs = Nf4 {
                len: weight.len(),
                packed: at("packed").to_vec(),
                absmax: at("absmax").to_vec(),
                absmax_scale: floats(at("absmax2")),
                offset: floats(at("offset"))[0],
            };
            let blocks = weight.len().div_ceil(BLOCK);
            assert_eq!(theirs.packed.len(), weight.len().div_ceil(2), "{case}");
            assert_eq!(theirs.absmax.len(), blocks, "{case}");
            assert_eq!(
                theirs.absmax_scale.len(),
                blocks.div_ceil(STAT_BLOCK),
                "{case}"
            );
            let mut out = vec![0f32; weight.len()];
            theirs.dequantize_into(0, &mut out);
            let want = floats(at("dequantized"));
            assert_eq!(
                first_difference(&out, &want),
                None,
                "{case}: dequantised values"
            );

            let ours = Nf4::quantize(&weight);
            let codes = first_difference(&ours.packed, &theirs.packed);
            assert_eq!(codes, None, "{case}: 4-bit codes");
            let absmax = first_difference(&ours.absmax, &theirs.absmax);
            assert_eq!(absmax, None, "{case}: absmax codes");
            let scales = first_difference(&ours.absmax_scale, &theirs.absmax_scale);
            assert_eq!(scales, None, "{case}: absmax scales");
            assert!(
                (ours.offset - theirs.offset).abs() <= 1e-7 * theirs.offset.abs(),
                "{case}: offset"
            );
            // Any window dequantises as the whole does.
            let mut part = vec![0f32; 37.min(weight.len() - 5)];
            ours.dequantize_into(5, &mut part);
            let mut whole = vec![0f32; weight.len()];
            ours.dequantize_into(0, &mut whole);
            assert_eq!(part, whole[5..5 + part.len()]);
        }
    }
}
