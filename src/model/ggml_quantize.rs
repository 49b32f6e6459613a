//! f32 values to ggml blocks, for writing GGUF files: F32, F16, Q8_0, Q5_0, Q4_K and Q6_K
//! (what `f16`, `q8_0` and `q4_k_m` exports are made of), and MXFP4 (gpt-oss's experts). Each follows ggml's reference
//! quantizer (`quantize_row_*_ref` in `ggml-quants.c`) step for step, in f32, so a hone file
//! holds the bytes llama.cpp's own `llama-quantize` would write without an importance matrix
//! (`tests/fixtures/ggml_quantize.json`); `ggml_quants` reads them back.

use super::ggml_quants::block_layout;
use super::ggml_quants::types::{F16, F32, MXFP4, Q4_K, Q5_0, Q6_K, Q8_0};

/// Elements per super-block of the K-quants.
const QK_K: usize = 256;

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it quantizes to zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// The ggml types hone writes.
pub const WRITABLE: [u32; 7] = [F32, F16, Q8_0, Q5_0, Q4_K, Q6_K, MXFP4];

/// `values` as blocks of type `t`; `None` when hone does not write `t` or `values` is not a
/// whole number of its blocks.
pub fn quantize(t: u32, values: &[f32]) -> Option<Vec<u8>> {
    let (bytes, per_block) = block_layout(t)?;
    if !WRITABLE.contains(&t) || !values.len().is_multiple_of(per_block) {
        return None;
    }
    let mut out = Vec::with_capacity(values.len() / per_block * bytes);
    for block in values.chunks_exact(per_block) {
        match t {
            F32 => out.extend(block[0].to_le_bytes()),
            F16 => out.extend(f16_bytes(block[0])),
            Q8_0 => q8_0(block, &mut out),
            Q5_0 => q5_0(block, &mut out),
            Q4_K => q4_k(block, &mut out),
            Q6_K => q6_k(block, &mut out),
            MXFP4 => mxfp4(block, &mut out),
            _ => unreachable!("checked above"),
        }
    }
    Some(out)
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// `v` as an f16 and back (what a block's stored scale is worth).
fn through_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// ggml's `nearest_int`: round half to even (its float trick), for the magnitudes quants use.
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16_bytes(d));
    // `roundf`: half away from zero.
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

/// ggml's MXFP4: the power of two that brings the block's largest magnitude within the codes'
/// reach (E8M0, biased by 127), then each value's nearest code, the first of equals (so 0 is
/// +0); element j in the low nibble of byte j, element j + 16 in its high one.
fn mxfp4(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    // `(uint8_t)(floorf(log2f(amax)) - 2 + 127)`, 0 for an all-zero block.
    let e = if amax > 0.0 {
        (amax.log2().floor() - 2.0 + 127.0) as u8
    } else {
        0
    };
    let d = super::ggml_quants::e8m0_half(e);
    let best = |v: f32| {
        let err = |i: usize| (super::ggml_quants::MXFP4_LEVELS[i] as f32 * d - v).abs();
        (1..16).fold(0, |best, i| if err(i) < err(best) { i } else { best }) as u8
    };
    out.push(e);
    out.extend((0..16).map(|j| best(x[j]) | (best(x[j + 16]) << 4)));
}

fn q5_0(x: &[f32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16_bytes(d));
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        // `(int8_t)(x + 16.5f)`: truncation, of a value that is never below 0.5.
        let q = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
        let (q0, q1) = (q(x[j]), q(x[j + 16]));
        qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
        qh |= (((q0 & 0x10) >> 4) as u32) << j;
        qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
    }
    out.extend(qh.to_le_bytes());
    out.extend(qs);
}

/// ggml's `make_qkx2_quants`: a scale and a minimum for `x` (levels `0..=nmax`) that minimise
/// the weighted squared error, searched over `nstep` + 1 candidate scales. Returns `(scale,
/// -min)` and leaves the levels in `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * diff * diff;
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let sub = &x[32 * j..32 * (j + 1)];
        let sum_x2: f32 = sub.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(sub) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            15,
            sub,
            &weights,
            &mut l[32 * j..32 * (j + 1)],
            &mut laux,
            -1.0,
            0.1,
            20,
        );
        scales[j] = scale;
        mins[j] = min;
        max_scale = max_scale.max(scale);
        max_min = max_min.max(min);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = through_f16(max_scale / 63.0);
    let dmin = through_f16(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dj = d * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
        }
    }
    out.extend(f16_bytes(max_scale / 63.0));
    out.extend(f16_bytes(max_min / 63.0));
    out.extend(packed);
    for j in (0..QK_K).step_by(64) {
        out.extend((0..32).map(|i| l[j + i] | (l[j + i + 32] << 4)));
    }
}

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and minimum.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// ggml's `make_qx_quants` with `rmse_type` 1 (weights x²) and no importance: a symmetric
/// scale for `x` (levels `-nmax..nmax`), refined over 18 nearby candidates. Levels (offset
/// by `nmax`) are left in `l`.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = level(iscale, v);
        l[i] = (q + nmax) as u8;
        let (w, q) = (v * v, q as f32);
        sumlx += w * v * q;
        suml2 += w * q * q;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let (w, q) = (v * v, level(iscale, v) as f32);
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (nmax + level(iscale, v)) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn q6_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * (ib + 1)],
            &mut l[16 * ib..16 * (ib + 1)],
        );
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out.extend(std::iter::repeat_n(0u8, 210));
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = through_f16(1.0 / iscale);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    for j in 0..16 {
        let dj = d * sc[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dj).clamp(-32, 31) + 32) as u8;
        }
    }
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for (half, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * half..], &mut qh[32 * half..]);
        for i in 0..32 {
            let q = |k: usize| l[j + i + 32 * k];
            ql[i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            ql[i + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            qh[i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.map(|s| s as u8));
    out.extend(f16_bytes(1.0 / iscale));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ggml_quants::dequantize;

    /// Every type hone writes reads back close to what went in (the exact bytes are checked
    /// against ggml's own quantizers in tests/it/ggml_quants.rs).
    #[test]
    fn blocks_read_back_close_to_their_values() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1)
            .collect();
        for (t, tolerance) in [
            (F32, 0.0),
            (F16, 1e-4),
            (Q8_0, 5e-4),
            (Q5_0, 3.5e-3),
            (Q4_K, 6e-3),
            (Q6_K, 1.5e-3),
        ] {
            let bytes = quantize(t, &x).unwrap();
            let back = dequantize(t, &bytes, x.len()).unwrap();
            let worst = x
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= tolerance, "type {t}: max error {worst}");
        }
        assert!(quantize(Q4_K, &x[..100]).is_none(), "not whole blocks");
    }
}
