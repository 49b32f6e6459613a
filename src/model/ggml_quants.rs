//! ggml's tensor types as GGUF files store them: block layouts and dequantisation to f32 for
//! the float types, the legacy quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), the K-quants (Q2_K to
//! Q6_K, what `Q4_K_M` and its siblings are made of), IQ4_NL and MXFP4 (gpt-oss's experts).
//! Layouts and arithmetic
//! follow `ggml-common.h` and `ggml-quants.c` operation for operation (scale times quant, in
//! f32, in ggml's order), so the values are exactly those of llama.cpp and of the `gguf`
//! package's dequantisers (`tests/fixtures/ggml_quants.json`).

/// Elements per super-block of the K-quants.
const QK_K: usize = 256;

/// ggml type ids (`enum ggml_type`).
pub mod types {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q5_0: u32 = 6;
    pub const Q5_1: u32 = 7;
    pub const Q8_0: u32 = 8;
    pub const Q2_K: u32 = 10;
    pub const Q3_K: u32 = 11;
    pub const Q4_K: u32 = 12;
    pub const Q5_K: u32 = 13;
    pub const Q6_K: u32 = 14;
    pub const IQ4_NL: u32 = 20;
    pub const BF16: u32 = 30;
    pub const MXFP4: u32 = 39;
}
use types::*;

/// Bytes per block and elements per block of a ggml type hone reads.
pub fn block_layout(t: u32) -> Option<(usize, usize)> {
    Some(match t {
        F32 => (4, 1),
        F16 | BF16 => (2, 1),
        Q4_0 => (18, 32),    // f16 d, 16 bytes of nibbles
        Q4_1 => (20, 32),    // f16 d, f16 m, 16 bytes of nibbles
        Q5_0 => (22, 32),    // f16 d, 4 bytes of fifth bits, 16 bytes of nibbles
        Q5_1 => (24, 32),    // f16 d, f16 m, fifth bits, nibbles
        Q8_0 => (34, 32),    // f16 d, 32 i8
        Q2_K => (84, QK_K),  // 16 scale/min nibble pairs, 64 bytes of 2-bit quants, f16 d, dmin
        Q3_K => (110, QK_K), // 32 bytes high bits, 64 bytes 2-bit quants, 12 bytes scales, f16 d
        Q4_K => (144, QK_K), // f16 d, dmin, 12 bytes 6-bit scales/mins, 128 bytes nibbles
        Q5_K => (176, QK_K), // as Q4_K, plus 32 bytes of fifth bits before the nibbles
        Q6_K => (210, QK_K), // 128 bytes low nibbles, 64 bytes high 2 bits, 16 i8 scales, f16 d
        IQ4_NL => (18, 32),  // f16 d, 16 bytes of indices into a non-linear table
        MXFP4 => (17, 32),   // E8M0 scale byte, 16 bytes of E2M1 codes
        _ => return None,
    })
}

/// The name ggml gives type `t`.
pub fn type_name(t: u32) -> String {
    let name = match t {
        F32 => "F32",
        F16 => "F16",
        Q4_0 => "Q4_0",
        Q4_1 => "Q4_1",
        Q5_0 => "Q5_0",
        Q5_1 => "Q5_1",
        Q8_0 => "Q8_0",
        9 => "Q8_1",
        Q2_K => "Q2_K",
        Q3_K => "Q3_K",
        Q4_K => "Q4_K",
        Q5_K => "Q5_K",
        Q6_K => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        IQ4_NL => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        29 => "IQ1_M",
        BF16 => "BF16",
        MXFP4 => "MXFP4",
        34 => "TQ1_0",
        35 => "TQ2_0",
        other => return format!("ggml type {other}"),
    };
    name.into()
}

/// The types [`dequantize`] reads, for messages.
pub const SUPPORTED: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, MXFP4";

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// IQ4_NL's 16 levels.
const IQ4_NL_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// MXFP4's 16 codes (E2M1) doubled, as ggml holds them (`kvalues_mxfp4`); the block's scale
/// is halved to make up for it.
pub(crate) const MXFP4_LEVELS: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half of the power of two an E8M0 byte `e` stands for, `2^(e - 128)`, built from its bits
/// as ggml's `ggml_e8m0_to_fp32_half` does (subnormal for `e` < 2).
pub(crate) fn e8m0_half(e: u8) -> f32 {
    match e {
        0 | 1 => f32::from_bits(0x0020_0000 << e),
        e => f32::from_bits(((e - 1) as u32) << 23),
    }
}

/// Scale and min `j` (0..8) of a Q4_K/Q5_K block: 6 bits each, packed in 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantises `n` elements of type `t` from `data`; `None` for a type hone does not read
/// or data too short for `n` elements.
pub fn dequantize(t: u32, data: &[u8], n: usize) -> Option<Vec<f32>> {
    let (block_bytes, block_len) = block_layout(t)?;
    if !n.is_multiple_of(block_len) || data.len() < n / block_len * block_bytes {
        return None;
    }
    let blocks = data.chunks_exact(block_bytes).take(n / block_len);
    let mut out = Vec::with_capacity(n);
    match t {
        F32 => out.extend(blocks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        F16 => out.extend(blocks.map(f16)),
        BF16 => out.extend(blocks.map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        Q4_0 => {
            for b in blocks {
                let d = f16(&b[0..2]);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        Q4_1 => {
            for b in blocks {
                let (d, m) = (f16(&b[0..2]), f16(&b[2..4]));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
            }
        }
        Q5_0 | Q5_1 => {
            let with_min = t == Q5_1;
            for b in blocks {
                let d = f16(&b[0..2]);
                let (m, rest) = if with_min {
                    (f16(&b[2..4]), &b[4..])
                } else {
                    (0.0, &b[2..])
                };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                let value = |low: u8, high_bit: u32| {
                    let q = (low as u32 | (high_bit << 4)) as i32;
                    match with_min {
                        true => d * q as f32 + m,
                        false => d * (q - 16) as f32,
                    }
                };
                out.extend((0..16).map(|j| value(qs[j] & 0x0F, (qh >> j) & 1)));
                out.extend((0..16).map(|j| value(qs[j] >> 4, (qh >> (j + 16)) & 1)));
            }
        }
        Q8_0 => {
            for b in blocks {
                let d = f16(&b[0..2]);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        Q2_K => {
            for b in blocks {
                let (scales, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16(&b[80..82]), f16(&b[82..84]));
                // 16 groups of 16: group g reads bits 2*(g/2 % 4) of the 16 bytes from
                // 32*(g/8) + 16*(g%2).
                for (g, &sc) in scales.iter().enumerate() {
                    let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                    let shift = 2 * ((g / 2) % 4);
                    let base = 32 * (g / 8) + 16 * (g % 2);
                    out.extend(
                        qs[base..base + 16]
                            .iter()
                            .map(|q| dl * ((q >> shift) & 3) as f32 - ml),
                    );
                }
            }
        }
        Q3_K => {
            for b in blocks {
                let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
                let d = f16(&b[108..110]);
                // 16 scales of 6 bits: low 4 bits from bytes 0..8, high 2 bits from 8..12.
                let scale = |g: usize| {
                    let low = (packed[g % 8] >> (4 * (g / 8))) & 0x0F;
                    let high = (packed[8 + g % 4] >> (2 * (g / 4))) & 0x03;
                    ((low | (high << 4)) as i8 - 32) as f32
                };
                for g in 0..16 {
                    let dl = d * scale(g);
                    let shift = 2 * ((g / 2) % 4);
                    let base = 32 * (g / 8) + 16 * (g % 2);
                    // The high bits: 32 bytes read by both halves, bit g/2 of each.
                    let (bit, hbase) = (1u8 << (g / 2), 16 * (g % 2));
                    out.extend((0..16).map(|l| {
                        let low = ((qs[base + l] >> shift) & 3) as i8;
                        let q = low - if hmask[hbase + l] & bit != 0 { 0 } else { 4 };
                        dl * q as f32
                    }));
                }
            }
        }
        Q4_K | Q5_K => {
            let fifth = t == Q5_K;
            for b in blocks {
                let (d, dmin) = (f16(&b[0..2]), f16(&b[2..4]));
                let scales = &b[4..16];
                let (qh, ql) = if fifth {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                // 4 chunks of 64: the low nibbles of 32 bytes, then their high nibbles.
                for chunk in 0..4 {
                    let bytes = &ql[32 * chunk..32 * chunk + 32];
                    for half in 0..2 {
                        let (sc, m) = scale_min_k4(2 * chunk + half, scales);
                        let (dl, ml) = (d * sc as f32, dmin * m as f32);
                        let bit = 1u8 << (2 * chunk + half);
                        out.extend(bytes.iter().enumerate().map(|(l, q)| {
                            let mut v = (q >> (4 * half)) & 0x0F;
                            if fifth && qh[l] & bit != 0 {
                                v += 16;
                            }
                            dl * v as f32 - ml
                        }));
                    }
                }
            }
        }
        Q6_K => {
            for b in blocks {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16(&b[208..210]);
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                    // Four runs of 32: low or high nibbles of ql[0..32] or ql[32..64], with
                    // bits 0-1, 2-3, 4-5 or 6-7 of qh.
                    for run in 0..4 {
                        out.extend((0..32).map(|l| {
                            let low = (ql[l + 32 * (run % 2)] >> (4 * (run / 2))) & 0x0F;
                            let high = (qh[l] >> (2 * run)) & 3;
                            let q = (low | (high << 4)) as i8 - 32;
                            d * sc[l / 16 + 2 * run] as i8 as f32 * q as f32
                        }));
                    }
                }
            }
        }
        IQ4_NL => {
            for b in blocks {
                let d = f16(&b[0..2]);
                let qs = &b[2..18];
                out.extend(
                    qs.iter()
                        .map(|q| d * IQ4_NL_LEVELS[(q & 0x0F) as usize] as f32),
                );
                out.extend(
                    qs.iter()
                        .map(|q| d * IQ4_NL_LEVELS[(q >> 4) as usize] as f32),
                );
            }
        }
        MXFP4 => {
            // Byte j holds element j (low nibble) and j + 16 (high nibble).
            for b in blocks {
                let d = e8m0_half(b[0]);
                let qs = &b[1..17];
                out.extend(
                    qs.iter()
                        .map(|q| MXFP4_LEVELS[(q & 0x0F) as usize] as f32 * d),
                );
                out.extend(
                    qs.iter()
                        .map(|q| MXFP4_LEVELS[(q >> 4) as usize] as f32 * d),
                );
            }
        }
        _ => return None,
    }
    (out.len() == n).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_blocks_by_hand() {
        // Q8_0: d=0.5, q = -16..16
        let mut q8 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(Q8_0, &q8, 32).unwrap();
        assert_eq!(v[0], -8.0);
        assert_eq!(v[31], 7.5);
        // Q4_0: byte j holds element j (low nibble) and j+16 (high nibble), minus 8.
        let mut q4 = half::f16::from_f32(2.0).to_le_bytes().to_vec();
        q4.extend(std::iter::repeat_n(0x9F, 16));
        let v = dequantize(Q4_0, &q4, 32).unwrap();
        assert_eq!((v[0], v[16]), (14.0, 2.0));
        // Too short, or not whole blocks: no values rather than garbage.
        assert_eq!(dequantize(Q4_0, &q4[..17], 32), None);
        assert_eq!(dequantize(Q4_0, &q4, 31), None);
        assert_eq!(dequantize(99, &q4, 32), None);
    }
}
