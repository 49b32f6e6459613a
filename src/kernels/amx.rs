//! bf16 matrix products on Intel AMX (Sapphire Rapids and later), for `train.precision:
//! bf16` on the CPU: products of bf16 values summed in f32, as PyTorch's autocast gets from
//! oneDNN on the same CPUs.
//!
//! AMX multiplies 16 x 32 bf16 tiles of `A` by 32 x 16 tiles of `B` into 16 x 16 f32 tiles
//! of `C` (`tdpbf16ps`), with `B` in "VNNI" order: each row of a `B` tile holds 16 pairs of
//! consecutive `k` (`B[k][j]`, `B[k+1][j]`). `A` tiles load straight from a row-major matrix;
//! `B` is packed into that order a panel of columns and a block of `k` at a time, into a
//! buffer that stays in cache while every row of `A` passes over it. Each worker keeps 2 x 2
//! tiles of `C` in the eight tile registers (two of `A`, two of `B`, four of `C`).
//!
//! The instructions are written as inline assembly (Rust's AMX intrinsics are unstable), and
//! used only when the CPU reports AMX-BF16 and Linux grants the process the tile state
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`] says so, once. `HONE_AMX=0` turns it
//! off, so the portable path can be compared with it on one machine.

use half::bf16;
use rayon::prelude::*;

/// Rows and columns of `C` one tile-register block covers, and `k` per tile step.
const TILE: usize = 16;
const BLOCK: usize = 2 * TILE;
const K_STEP: usize = 32;
/// `k` packed at a time: a `B` panel of `K_BLOCK` x 256 columns is 1 MiB, which stays in L2
/// while the rows of `A` stream over it. Longer blocks store and reload the `C` tiles less
/// often: on a Sapphire Rapids core a 256 x 2048 x 8192 product ran at 640-690 GFLOP/s (both
/// cores) with blocks of 512, 830-1000 with 2048 (4096 was no better).
const K_BLOCK: usize = 2048;
const MAX_PANEL: usize = 256;

/// Whether this process can multiply on AMX tiles (checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| std::env::var("HONE_AMX").as_deref() != Ok("0") && imp::enable())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::asm;

    /// The tile configuration `ldtilecfg` reads: palette 1, every tile 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    pub fn enable() -> bool {
        // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        let cpu = leaf.edx & (1 << 22) != 0
            && leaf.edx & (1 << 24) != 0
            // The packing and rounding around the tiles (every AMX CPU has these).
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16");
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // The kernel hands out the 8 KiB of tile state only on request, for the whole process.
        cpu && unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    /// Loads the tile configuration on this thread (every worker does before its tiles).
    pub fn configure() {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            config.bytes_per_row[t] = 64;
            config.rows[t] = 16;
        }
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig) };
    }

    /// `values` rounded to bf16 into `out` (same length), 32 at a time.
    ///
    /// # Safety
    /// The CPU must have AVX512-BF16 (every AMX CPU does).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn round_to_bf16(values: &[f32], out: &mut [u16]) {
        use std::arch::x86_64::*;
        let whole = values.len() / 32 * 32;
        for i in (0..whole).step_by(32) {
            unsafe {
                let lo = _mm512_loadu_ps(values.as_ptr().add(i));
                let hi = _mm512_loadu_ps(values.as_ptr().add(i + 16));
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut __m512i, packed);
            }
        }
        for i in whole..values.len() {
            out[i] = half::bf16::from_f32(values[i]).to_bits();
        }
    }

    /// Packed `B` tiles from pairs of rows of `B`: for each of `pairs` pairs `p` and
    /// `tiles` tiles `t` of 16 columns, `out[(t half + p) 16 + j]` is `B[2p][16t + j] |
    /// B[2p + 1][16t + j] << 16`, row `r` of `B` read at `src + r * ld`. A pair's rows are
    /// read whole, left to right, so the weight streams from memory in order.
    ///
    /// # Safety
    /// AVX512F; `16 tiles` values readable at each row `src + r * ld` for `r < 2 pairs`;
    /// every `out` index above below `((tiles - 1) half + pairs) 16`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn interleave(
        src: *const u16,
        ld: usize,
        (pairs, tiles, half): (usize, usize, usize),
        out: *mut u32,
    ) {
        use std::arch::x86_64::*;
        for p in 0..pairs {
            for t in 0..tiles {
                unsafe {
                    let r0 = src.add(2 * p * ld + 16 * t) as *const __m256i;
                    let r1 = src.add((2 * p + 1) * ld + 16 * t) as *const __m256i;
                    let lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(r0));
                    let hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(r1));
                    let row = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                    _mm512_storeu_si512(out.add((t * half + p) * 16) as *mut __m512i, row);
                }
            }
        }
    }

    /// A 16 x 16 block of u32 transposed: row `i` read at `src + i * ld` (u32 units, any
    /// alignment), row `q` of the result written at `out + q * out_ld`.
    ///
    /// # Safety
    /// AVX512F; every row readable, and writable.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose16(src: *const u32, ld: usize, out: *mut u32, out_ld: usize) {
        use std::arch::x86_64::*;
        let mut rows = [_mm512_setzero_si512(); 16];
        for (i, row) in rows.iter_mut().enumerate() {
            *row = unsafe { _mm512_loadu_si512(src.add(i * ld) as *const __m512i) };
        }
        // Swap the off-diagonal d x d blocks, for d = 8, 4, 2, 1.
        for d in [8usize, 4, 2, 1] {
            let mut low = [0i32; 16];
            let mut high = [0i32; 16];
            for j in 0..16 {
                (low[j], high[j]) = match j & d == 0 {
                    true => (j as i32, (j + d) as i32),
                    false => ((16 + j - d) as i32, (16 + j) as i32),
                };
            }
            let (low, high) = unsafe {
                (
                    _mm512_loadu_si512(low.as_ptr() as *const __m512i),
                    _mm512_loadu_si512(high.as_ptr() as *const __m512i),
                )
            };
            for i in (0..16).filter(|i| i & d == 0) {
                let (a, b) = (rows[i], rows[i + d]);
                rows[i] = _mm512_permutex2var_epi32(a, low, b);
                rows[i + d] = _mm512_permutex2var_epi32(a, high, b);
            }
        }
        for (q, row) in rows.iter().enumerate() {
            unsafe { _mm512_storeu_si512(out.add(q * out_ld) as *mut __m512i, *row) };
        }
    }

    /// Gives the tile state back, so the thread's context switches are cheap again.
    pub fn release() {
        unsafe { asm!("tilerelease") };
    }

    /// The 2 x 2 tiles of `C` (f32, `ldc` floats a row) at `c`: zeroed when `fresh`, else
    /// loaded; then `steps` products of two `A` tiles (rows `a` and `a + 16 lda`, `lda`
    /// bf16 a row, advancing 32 columns a step) by two packed `B` tiles (`b0`, `b1`,
    /// advancing 1 KiB a step); stored back.
    ///
    /// # Safety
    /// The tiles must be configured on this thread, and every address the steps reach valid.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(
        c: *mut f32,
        ldc: usize,
        fresh: bool,
        a: *const u16,
        lda: usize,
        b0: *const u16,
        b1: *const u16,
        steps: usize,
    ) {
        let c_stride = ldc * 4;
        let a_stride = lda * 2;
        unsafe {
            let c_low = c.add(16 * ldc);
            if fresh {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3"
                );
            } else {
                asm!(
                    "tileloadd tmm0, [{c} + {s}*1]",
                    "tileloadd tmm1, [{c1} + {s}*1]",
                    "tileloadd tmm2, [{cl} + {s}*1]",
                    "tileloadd tmm3, [{cl1} + {s}*1]",
                    c = in(reg) c,
                    c1 = in(reg) c.add(16),
                    cl = in(reg) c_low,
                    cl1 = in(reg) c_low.add(16),
                    s = in(reg) c_stride,
                );
            }
            let a_low = a.add(16 * lda);
            for step in 0..steps {
                asm!(
                    "tileloadd tmm4, [{a} + {sa}*1]",
                    "tileloadd tmm5, [{al} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a = in(reg) a.add(step * 32),
                    al = in(reg) a_low.add(step * 32),
                    b0 = in(reg) b0.add(step * 512),
                    b1 = in(reg) b1.add(step * 512),
                    sa = in(reg) a_stride,
                    sb = in(reg) 64usize,
                );
            }
            asm!(
                "tilestored [{c} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{cl} + {s}*1], tmm2",
                "tilestored [{cl1} + {s}*1], tmm3",
                c = in(reg) c,
                c1 = in(reg) c.add(16),
                cl = in(reg) c_low,
                cl1 = in(reg) c_low.add(16),
                s = in(reg) c_stride,
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub fn enable() -> bool {
        false
    }
    pub unsafe fn round_to_bf16(_: &[f32], _: &mut [u16]) {
        unreachable!("AMX is only used where `available` says so")
    }
    pub unsafe fn interleave(_: *const u16, _: usize, _: (usize, usize, usize), _: *mut u32) {
        unreachable!("AMX is only used where `available` says so")
    }
    pub unsafe fn transpose16(_: *const u32, _: usize, _: *mut u32, _: usize) {
        unreachable!("AMX is only used where `available` says so")
    }
    pub fn configure() {}
    pub fn release() {}
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(
        _: *mut f32,
        _: usize,
        _: bool,
        _: *const u16,
        _: usize,
        _: *const u16,
        _: *const u16,
        _: usize,
    ) {
        unreachable!("AMX is only used where `available` says so")
    }
}

/// `n` rounded up to a multiple of `to`.
fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// `values` rounded to bf16 (to nearest, ties to even, as PyTorch casts; subnormals flush to
/// zero, as the tiles read them anyway). Needs [`available`].
pub fn to_bf16(values: &[f32]) -> Vec<bf16> {
    const GRAIN: usize = 1 << 15;
    let mut out = vec![bf16::ZERO; values.len()];
    out.par_chunks_mut(GRAIN)
        .zip(values.par_chunks(GRAIN))
        .for_each(|(out, values)| round_into(values, out));
    out
}

/// [`to_bf16`] into `out` (the same length), on this thread.
pub fn round_into(values: &[f32], out: &mut [bf16]) {
    assert!(available(), "AVX512-BF16 rounding on a machine without AMX");
    assert_eq!(values.len(), out.len());
    // SAFETY: bf16 is a `repr(transparent)` u16.
    let bits = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u16, out.len()) };
    // SAFETY: `available` checked AVX512-BF16.
    unsafe { imp::round_to_bf16(values, bits) }
}

/// Where `B` `[k, n]` is read from: a row-major `[k, n]` matrix, or the rows of `B^T`
/// (`[n, k]`, row-major), each `ld` elements apart.
#[derive(Clone, Copy)]
enum Source<'a> {
    Rows(&'a [bf16], usize),
    Columns(&'a [bf16], usize),
}

impl Source<'_> {
    /// Packs `B[k0..k0 + kc][j0..j0 + width]` (zeros past `k` rows and `n` columns) in VNNI
    /// order, a tile of 16 columns after another: `out[(t kc/2 + p) 16 + j]` holds the pair
    /// `B[k0 + 2p][j0 + 16t + j]`, `B[k0 + 2p + 1][..]` as one u32 (low half first).
    fn pack(
        &self,
        (k0, kc, k): (usize, usize, usize),
        (j0, width, n): (usize, usize, usize),
        out: &mut [u32],
    ) {
        let half = kc / 2;
        let bits = |v: bf16| v.to_bits() as u32;
        // The element `B[row][col]`, 0 outside the matrix.
        let at = |row: usize, col: usize| -> u32 {
            if row >= k || col >= n {
                return 0;
            }
            match *self {
                Source::Rows(data, ld) => bits(data[row * ld + col]),
                Source::Columns(data, ld) => bits(data[col * ld + row]),
            }
        };
        let slow = |p: usize, t: usize, out: &mut [u32]| {
            let (r0, base) = (k0 + 2 * p, (t * half + p) * TILE);
            for j in 0..TILE {
                let col = j0 + t * TILE + j;
                out[base + j] = at(r0, col) | at(r0 + 1, col) << 16;
            }
        };
        let tiles = width / TILE;
        if let Source::Rows(data, ld) = *self {
            // The pairs whose both rows lie inside `B` and the tiles whose columns do, in one
            // pass over whole rows; the rest (a last odd row, rows past `k`, columns past
            // `n`) element by element.
            let pairs = (k.saturating_sub(k0) / 2).min(half);
            let full = (n.saturating_sub(j0) / TILE).min(tiles);
            if pairs > 0 && full > 0 {
                let src = &data[k0 * ld + j0..];
                assert!(src.len() >= (2 * pairs - 1) * ld + full * TILE);
                assert!(out.len() >= ((full - 1) * half + pairs) * TILE);
                // SAFETY: `available` checked AVX512F; every row read lies in `src`, every
                // write in `out` (both asserted).
                unsafe {
                    imp::interleave(
                        src.as_ptr() as *const u16,
                        ld,
                        (pairs, full, half),
                        out.as_mut_ptr(),
                    )
                };
            }
            for t in 0..tiles {
                let done = if t < full { pairs } else { 0 };
                (done..half).for_each(|p| slow(p, t, out));
            }
            return;
        }
        for t in 0..tiles {
            let col = j0 + t * TILE;
            let full_columns = col + TILE <= n;
            match *self {
                Source::Rows(..) => unreachable!("packed above"),
                Source::Columns(data, ld) => {
                    for p0 in (0..half).step_by(TILE) {
                        let whole = p0 + TILE <= half && k0 + 2 * (p0 + TILE) <= k;
                        if !full_columns || !whole || ld % 2 != 0 {
                            (p0..(p0 + TILE).min(half)).for_each(|p| slow(p, t, out));
                            continue;
                        }
                        // Row `j` of the block: the pairs `p0..p0 + 16` of `B^T`'s row
                        // `col + j`, read as u32.
                        let first = &data[col * ld + k0 + 2 * p0..];
                        assert!(first.len() >= (TILE - 1) * ld + 2 * TILE);
                        let dst = &mut out[(t * half + p0) * TILE..][..TILE * TILE];
                        // SAFETY: `available` checked AVX512F; the 16 rows lie in `first`
                        // (asserted), the block's 256 u32 in `dst`.
                        unsafe {
                            imp::transpose16(
                                first.as_ptr() as *const u32,
                                ld / 2,
                                dst.as_mut_ptr(),
                                TILE,
                            )
                        };
                    }
                }
            }
        }
    }
}

/// A raw pointer handed to the workers, each of which writes its own columns.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// `C = A B`, f32 `[m_pad, n_pad]` (row-major, fully written), for `A` row-major with `lda`
/// elements a row, at least `m_pad` rows and `k_pad` columns readable (both multiples of
/// 32), and `B` `[k, n]` from `b`.
fn gemm(
    a: &[bf16],
    lda: usize,
    (m_pad, k_pad): (usize, usize),
    b: Source,
    (k, n): (usize, usize),
) -> Vec<f32> {
    // Also what asks Linux for the tile state: without it the first tile instruction faults.
    assert!(available(), "AMX products on a machine without AMX");
    assert!(m_pad % BLOCK == 0 && k_pad % K_STEP == 0 && k <= k_pad);
    assert!(
        a.len() >= m_pad.saturating_sub(1) * lda + k_pad,
        "A is too short for its tiles"
    );
    let n_pad = round_up(n, BLOCK);
    if m_pad == 0 || n_pad == 0 || k_pad == 0 {
        return vec![0f32; m_pad * n_pad];
    }
    // Every element is stored by the first block of `k` before anything reads it, so the
    // buffer is not zeroed first.
    let mut c = Vec::<f32>::with_capacity(m_pad * n_pad);
    let workers = rayon::current_num_threads().max(1);
    let panel = round_up(n_pad.div_ceil(workers), BLOCK).min(MAX_PANEL);
    // Too few panels to go round (a weight as `A` against a batch's packed activations):
    // the rows of `A` are split as well, so each worker streams its own share of the weight
    // instead of all of it.
    let splits = (2 * workers).div_ceil(n_pad.div_ceil(panel));
    let height = round_up(m_pad.div_ceil(splits), BLOCK);
    let tasks: Vec<(usize, usize)> = (0..m_pad)
        .step_by(height)
        .flat_map(|r0| (0..n_pad).step_by(panel).map(move |j0| (r0, j0)))
        .collect();
    let out = Shared(c.as_mut_ptr());
    let a_ptr = a.as_ptr() as usize;
    tasks.into_par_iter().for_each(move |(r0, j0)| {
        let out = out;
        let width = panel.min(n_pad - j0);
        let rows = r0..(r0 + height).min(m_pad);
        let mut packed = vec![0u32; K_BLOCK / 2 * width];
        imp::configure();
        for k0 in (0..k_pad).step_by(K_BLOCK) {
            let kc = K_BLOCK.min(k_pad - k0);
            b.pack((k0, kc, k), (j0, width, n), &mut packed);
            let tile_words = kc / 2 * TILE;
            for r in rows.clone().step_by(BLOCK) {
                for t in (0..width / TILE).step_by(2) {
                    // SAFETY: the tiles are configured; `A`'s rows `r..r + 32` and columns
                    // `k0..k0 + kc` lie inside `a` (asserted above), the two `B` tiles inside
                    // `packed`, and `C`'s 32 x 32 block inside `c`, in this worker's columns.
                    unsafe {
                        imp::block(
                            out.0.add(r * n_pad + j0 + t * TILE),
                            n_pad,
                            k0 == 0,
                            (a_ptr as *const u16).add(r * lda + k0),
                            lda,
                            packed.as_ptr().add(t * tile_words) as *const u16,
                            packed.as_ptr().add((t + 1) * tile_words) as *const u16,
                            kc / K_STEP,
                        );
                    }
                }
            }
        }
        imp::release();
    });
    // SAFETY: the workers stored all `m_pad` x `n_pad` elements (their tasks cover the rows
    // and the columns, and the first block of `k` stores fresh tiles).
    unsafe { c.set_len(m_pad * n_pad) };
    c
}

/// A bf16 matrix `[rows, cols]`, row-major with `ld` elements from one row to the next (a
/// block of columns of a wider matrix has `ld` > `cols`).
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    pub values: &'a [bf16],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl<'a> Matrix<'a> {
    /// A whole row-major matrix.
    pub fn dense(values: &'a [bf16], rows: usize, cols: usize) -> Matrix<'a> {
        Matrix {
            values,
            rows,
            cols,
            ld: cols,
        }
    }

    fn check(&self, what: &str) {
        assert!(
            self.cols <= self.ld
                && (self.rows == 0 || self.values.len() >= (self.rows - 1) * self.ld + self.cols),
            "{what}: {} x {} (ld {}) over {} values",
            self.rows,
            self.cols,
            self.ld,
            self.values.len()
        );
    }

    /// Its values laid out as `gemm`'s `A`: rows a multiple of 32 and as many columns
    /// readable from each row (borrowed when they are already, else a zero-padded copy), and
    /// the row stride.
    fn as_tiles(&self) -> (std::borrow::Cow<'a, [bf16]>, usize, usize, usize) {
        let (rows_pad, cols_pad) = (round_up(self.rows, BLOCK), round_up(self.cols, K_STEP));
        let fits = self.values.len() >= rows_pad.saturating_sub(1) * self.ld + cols_pad;
        if rows_pad == self.rows && cols_pad <= self.ld && fits {
            return (
                std::borrow::Cow::Borrowed(self.values),
                self.ld,
                rows_pad,
                cols_pad,
            );
        }
        let mut out = vec![bf16::ZERO; rows_pad * cols_pad];
        out.par_chunks_mut(cols_pad.max(1))
            .take(self.rows)
            .enumerate()
            .for_each(|(r, dst)| {
                dst[..self.cols].copy_from_slice(&self.values[r * self.ld..][..self.cols])
            });
        (std::borrow::Cow::Owned(out), cols_pad, rows_pad, cols_pad)
    }
}

/// The top-left `[rows, cols]` of a row-major matrix `cols_pad` wide.
fn cropped(c: Vec<f32>, cols_pad: usize, (rows, cols): (usize, usize)) -> Vec<f32> {
    if cols_pad == cols && c.len() == rows * cols {
        return c;
    }
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(cols.max(1))
        .zip(c.par_chunks(cols_pad))
        .for_each(|(dst, src)| dst.copy_from_slice(&src[..cols]));
    out
}

/// `a` `[m, k]` times `b` `[k, n]`: `[m, n]` f32. Needs [`available`].
pub fn matmul(a: Matrix, b: Matrix) -> Vec<f32> {
    a.check("matmul's left side");
    b.check("matmul's right side");
    assert_eq!(
        a.cols, b.rows,
        "matmul: {} x {} by {} x {}",
        a.rows, a.cols, b.rows, b.cols
    );
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (a, lda, m_pad, k_pad) = a.as_tiles();
    let c = gemm(
        &a,
        lda,
        (m_pad, k_pad),
        Source::Rows(b.values, b.ld),
        (k, n),
    );
    cropped(c, round_up(n, BLOCK), (m, n))
}

/// `a` `[m, k]` times the transpose of `b` `[n, k]`: `[m, n]` f32. Needs [`available`].
///
/// One operand has to be packed column-wise, which is slower per element than packing rows;
/// when `b` is the larger (a weight against a batch's activations), the product is taken as
/// `(b a^T)^T` so the weight loads straight into tiles and only `a` is packed.
pub fn matmul_transposed(a: Matrix, b: Matrix) -> Vec<f32> {
    a.check("matmul's left side");
    b.check("matmul's right side");
    assert_eq!(
        a.cols, b.cols,
        "matmul: {} x {} by ({} x {})^T",
        a.rows, a.cols, b.rows, b.cols
    );
    let (m, k, n) = (a.rows, a.cols, b.rows);
    if n <= m {
        let (a, lda, m_pad, k_pad) = a.as_tiles();
        let c = gemm(
            &a,
            lda,
            (m_pad, k_pad),
            Source::Columns(b.values, b.ld),
            (k, n),
        );
        return cropped(c, round_up(n, BLOCK), (m, n));
    }
    let (b, ldb, n_pad, k_pad) = b.as_tiles();
    let ct = gemm(
        &b,
        ldb,
        (n_pad, k_pad),
        Source::Columns(a.values, a.ld),
        (k, m),
    );
    transposed(&ct, round_up(m, BLOCK), (m, n))
}

/// `C` `[m, n]` from its transpose, row-major `[>= n, m_pad]`: 16 rows of `C` at a time,
/// whole 16 x 16 blocks transposed in registers, the edges element by element.
fn transposed(ct: &[f32], m_pad: usize, (m, n): (usize, usize)) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    c.par_chunks_mut(n.max(1) * TILE)
        .enumerate()
        .for_each(|(block, rows)| {
            let i0 = block * TILE;
            let height = rows.len() / n.max(1);
            let mut j = 0;
            while height == TILE && j + TILE <= n {
                let src = &ct[j * m_pad + i0..];
                assert!(src.len() >= (TILE - 1) * m_pad + TILE);
                let dst = &mut rows[j..];
                assert!(dst.len() >= (TILE - 1) * n + TILE);
                // SAFETY: `available` checked AVX512F; the 16 rows read lie in `src`, the 16
                // written in `dst` (both asserted).
                unsafe {
                    imp::transpose16(
                        src.as_ptr() as *const u32,
                        m_pad,
                        dst.as_mut_ptr() as *mut u32,
                        n,
                    )
                };
                j += TILE;
            }
            for j in j..n {
                let src = &ct[j * m_pad + i0..][..height];
                for (i, &v) in src.iter().enumerate() {
                    rows[i * n + j] = v;
                }
            }
        });
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        a: &[bf16],
        b: impl Fn(usize, usize) -> bf16,
        (m, k, n): (usize, usize, usize),
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a[i * k + p].to_f32() * b(p, j).to_f32())
                    .sum();
            }
        }
        c
    }

    fn values(len: usize, seed: u64) -> Vec<bf16> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bf16::from_f32(((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
                "{what}: [{i}] {g} vs {w}"
            );
        }
    }

    /// Both products equal f32 sums of the bf16 products, at shapes that are and are not
    /// multiples of the tiles, with `k` across several packed blocks, on both sides of
    /// `matmul_transposed`'s choice of which operand to pack.
    #[test]
    fn products_equal_f32_sums_of_bf16_products() {
        if !available() {
            eprintln!("no AMX on this machine: the portable path takes bf16 products instead");
            return;
        }
        for (m, k, n) in [
            (32, 32, 32),
            (5, 7, 3),
            (64, 1100, 96),
            (37, 600, 300),
            (300, 70, 45),
        ] {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let want = reference(&a, |p, j| b[p * n + j], (m, k, n));
            let got = matmul(Matrix::dense(&a, m, k), Matrix::dense(&b, k, n));
            assert_close(&got, &want, &format!("{m}x{k}x{n}"));
            let bt = values(n * k, 3);
            let want = reference(&a, |p, j| bt[j * k + p], (m, k, n));
            assert_close(
                &matmul_transposed(Matrix::dense(&a, m, k), Matrix::dense(&bt, n, k)),
                &want,
                &format!("transposed {m}x{k}x{n}"),
            );
        }
    }
}
