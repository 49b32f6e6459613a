//! Checkpoint tensors in and out: safetensors files read into tensors by name (f32, or the
//! stored dtype for the weights a stage keeps low; with the checks that turn a wrong file into
//! a clear error), and named tensors written back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::{DType, TensorData, bf16, f16};
use safetensors::{Dtype, SafeTensors};

use super::quantized::QuantFormat;

/// What can go wrong turning files into a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // Not `source`: the message says the cause once, also under `{:#}`.
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file (truncated or corrupt?): {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("unknown architecture `{found}` in {path}; hone loads: {supported}")]
    UnknownArchitecture {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("tensor `{name}` is missing from {path}")]
    MissingTensor { path: PathBuf, name: String },
    #[error("tensor `{name}` in {path} has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` in {path} has dtype {dtype}, which hone does not read")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: {reason}")]
    BadGguf { path: PathBuf, reason: String },
}

/// The index of a sharded checkpoint: which shard file holds each tensor.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// The shard index `index` of a sharded checkpoint, and the shard files it names (sorted, each
/// once), each checked to be a plain file name beside the index.
fn read_shard_index(index: &Path) -> Result<(ShardIndex, Vec<String>), ModelError> {
    let text = std::fs::read_to_string(index).map_err(|error| ModelError::Io {
        path: index.to_path_buf(),
        error,
    })?;
    let bad = |reason: String| ModelError::BadConfig {
        path: index.to_path_buf(),
        reason,
    };
    let parsed: ShardIndex =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid index: {e}")))?;
    let mut shards: Vec<String> = parsed.weight_map.values().cloned().collect();
    shards.sort_unstable();
    shards.dedup();
    // The index names files beside it; anything else is not a shard of this model.
    if let Some(odd) = shards
        .iter()
        .find(|s| s.is_empty() || s.contains(['/', '\\']) || *s == "..")
    {
        return Err(bad(format!(
            "`{}` is not a shard file name",
            odd.escape_debug()
        )));
    }
    Ok((parsed, shards))
}

/// The files of HF checkpoint directory `dir` that hold its weights: `model.safetensors`, or
/// the shard index and the shards it names.
pub fn weight_files(dir: &Path) -> Result<Vec<String>, ModelError> {
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Ok(vec!["model.safetensors".to_owned()]);
    }
    let (_, shards) = read_shard_index(&index)?;
    Ok(std::iter::once(INDEX_FILE.to_owned())
        .chain(shards)
        .collect())
}

/// A tensor's values in the dtype its file stores them in (f64 is read as f32): a bf16
/// checkpoint costs half of an f32 copy while it is read, and weights a stage keeps in that
/// dtype ([`WeightMap::keep_as_stored`]) never exist in f32.
pub enum Stored {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Stored {
    pub fn dtype(&self) -> DType {
        match self {
            Stored::F32(_) => DType::F32,
            Stored::Bf16(_) => DType::BF16,
            Stored::F16(_) => DType::F16,
        }
    }

    /// The values as f32.
    pub fn into_f32(self) -> Vec<f32> {
        use rayon::prelude::*;
        match self {
            Stored::F32(v) => v,
            Stored::Bf16(v) => v.par_iter().map(|x| x.to_f32()).collect(),
            Stored::F16(v) => v.par_iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Rows of `cols` values put in order: row `r` is row `order[r]` of these.
    fn reorder_rows(self, order: &[u32], cols: usize) -> Stored {
        fn pick<T: Copy>(v: &[T], order: &[u32], cols: usize) -> Vec<T> {
            order
                .iter()
                .flat_map(|&r| &v[r as usize * cols..(r as usize + 1) * cols])
                .copied()
                .collect()
        }
        match self {
            Stored::F32(v) => Stored::F32(pick(&v, order, cols)),
            Stored::Bf16(v) => Stored::Bf16(pick(&v, order, cols)),
            Stored::F16(v) => Stored::F16(pick(&v, order, cols)),
        }
    }

    /// These values followed by `more`'s: in their dtype when both share it, else as f32.
    fn followed_by(self, more: Stored) -> Stored {
        match (self, more) {
            (Stored::F32(mut a), Stored::F32(b)) => Stored::F32({
                a.extend(b);
                a
            }),
            (Stored::Bf16(mut a), Stored::Bf16(b)) => Stored::Bf16({
                a.extend(b);
                a
            }),
            (Stored::F16(mut a), Stored::F16(b)) => Stored::F16({
                a.extend(b);
                a
            }),
            (a, b) => Stored::F32({
                let mut a = a.into_f32();
                a.extend(b.into_f32());
                a
            }),
        }
    }

    /// The values as a `rows` x `cols` matrix, transposed.
    fn transposed(self, rows: usize, cols: usize) -> Stored {
        match self {
            Stored::F32(v) => Stored::F32(transpose(&v, rows, cols)),
            Stored::Bf16(v) => Stored::Bf16(transpose(&v, rows, cols)),
            Stored::F16(v) => Stored::F16(transpose(&v, rows, cols)),
        }
    }

    /// The values as tensor data of `shape`, in their stored dtype.
    fn into_data(self, shape: Vec<usize>) -> TensorData {
        match self {
            Stored::F32(v) => TensorData::new(v, shape),
            Stored::Bf16(v) => TensorData::new(v, shape),
            Stored::F16(v) => TensorData::new(v, shape),
        }
    }
}

/// Bytes tensors are read from when a model takes them: a memory-mapped file, or a file held
/// in memory.
pub type SharedBytes = Arc<FileBytes>;

/// A checkpoint file's bytes: memory-mapped (pages come in as tensors are read, and are handed
/// back once read, [`release`](FileBytes::release)), or owned.
pub enum FileBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

impl FileBytes {
    /// Maps `path` read-only.
    pub fn map(path: &Path) -> std::io::Result<FileBytes> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is only read, while hone holds the file open; a checkpoint rewritten
        // under a running load is outside what any loader can promise (transformers and
        // llama.cpp map the same way).
        Ok(FileBytes::Mapped(unsafe { memmap2::Mmap::map(&file) }?))
    }

    /// Hands the whole pages of `range` back to the kernel once a tensor has been read from
    /// them: a mapping kept for the tensors still to come would otherwise count every page
    /// read so far in the process's memory until the load ends (the file itself is unchanged,
    /// so a page touched again is read again).
    pub fn release(&self, range: std::ops::Range<usize>) {
        let FileBytes::Mapped(map) = self else {
            return;
        };
        // SAFETY: sysconf only reads a constant of the system.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(1);
        let start = range.start.div_ceil(page) * page;
        let end = (range.end.min(map.len()) / page) * page;
        if end > start {
            // SAFETY: the range lies inside the mapping, which is private and read-only; the
            // kernel drops its pages and refills them from the file if they are read again.
            unsafe {
                libc::madvise(
                    map.as_ptr().add(start) as *mut libc::c_void,
                    end - start,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

/// Where a tensor's values come from. Files stay mapped and each tensor is read only when the
/// model takes it, in the form it takes it in (f32, its stored dtype, or quantised), so
/// loading never holds a second copy of the weights beside the model.
pub enum Source {
    /// In memory already.
    Ready(Stored),
    /// A safetensors tensor: its bytes and dtype (F32, F16, BF16 or F64; U8 for packed
    /// weights, read by the loader that knows their format).
    Safetensors {
        bytes: SharedBytes,
        range: std::ops::Range<usize>,
        dtype: Dtype,
    },
    /// A GGUF tensor in ggml type `ggml_type` at `start`, already in HF's shape; row `r` of the
    /// HF tensor is stored row `rows[r]` when given (llama.cpp's q/k order).
    Ggml {
        bytes: SharedBytes,
        start: usize,
        ggml_type: u32,
        rows: Option<Vec<u32>>,
    },
}

impl Source {
    /// The values, read now: floats in their stored dtype (GGUF F16/BF16 too), anything
    /// quantised as f32. `None` if the bytes do not hold `shape`'s values of their type.
    fn read(self, shape: &[usize]) -> Option<Stored> {
        let n: usize = shape.iter().product();
        match self {
            Source::Ready(s) => Some(s),
            Source::Safetensors {
                bytes,
                range,
                dtype,
            } => {
                let values = decode(dtype, bytes.get(range.clone())?);
                bytes.release(range);
                values
            }
            Source::Ggml {
                bytes,
                start,
                ggml_type,
                rows,
            } => {
                use super::ggml_quants::{block_layout, dequantize, types};
                let (block_bytes, block_len) = block_layout(ggml_type)?;
                let len = n.checked_div(block_len)?.checked_mul(block_bytes)?;
                let data = bytes.get(start..start.checked_add(len)?)?;
                let values = match ggml_type {
                    types::F16 => decode(Dtype::F16, data)?,
                    types::BF16 => decode(Dtype::BF16, data)?,
                    _ => Stored::F32(dequantize(ggml_type, data, n)?),
                };
                bytes.release(start..start + len);
                let cols = shape.get(1..).map_or(1, |s| s.iter().product());
                Some(match rows {
                    Some(rows) => values.reorder_rows(&rows, cols),
                    None => values,
                })
            }
        }
    }
}

impl Source {
    /// The source cut into `parts` consecutive pieces of `n` values each, along its outermost
    /// dimension (a stack of experts), each still read only when taken; `None` where the
    /// bytes do not cut so, or the rows are reordered.
    fn split_outer(self, parts: usize, n: usize) -> Option<Vec<Source>> {
        fn chunks<T: Clone>(v: Vec<T>, n: usize) -> Vec<Vec<T>> {
            v.chunks(n.max(1)).map(<[T]>::to_vec).collect()
        }
        let pieces: Vec<Source> = match self {
            Source::Ready(s) => {
                let stored: Vec<Stored> = match s {
                    Stored::F32(v) => chunks(v, n).into_iter().map(Stored::F32).collect(),
                    Stored::Bf16(v) => chunks(v, n).into_iter().map(Stored::Bf16).collect(),
                    Stored::F16(v) => chunks(v, n).into_iter().map(Stored::F16).collect(),
                };
                stored.into_iter().map(Source::Ready).collect()
            }
            Source::Safetensors {
                bytes,
                range,
                dtype,
            } => {
                let size = range.len().checked_div(parts)?;
                (size * parts == range.len()).then_some(())?;
                (0..parts)
                    .map(|i| Source::Safetensors {
                        bytes: bytes.clone(),
                        range: range.start + i * size..range.start + (i + 1) * size,
                        dtype,
                    })
                    .collect()
            }
            Source::Ggml {
                bytes,
                start,
                ggml_type,
                rows: None,
            } => {
                let (block_bytes, block_len) = super::ggml_quants::block_layout(ggml_type)?;
                n.is_multiple_of(block_len).then_some(())?;
                let len = n / block_len * block_bytes;
                (0..parts)
                    .map(|i| Source::Ggml {
                        bytes: bytes.clone(),
                        start: start + i * len,
                        ggml_type,
                        rows: None,
                    })
                    .collect()
            }
            Source::Ggml { rows: Some(_), .. } => return None,
        };
        (pieces.len() == parts).then_some(pieces)
    }
}

/// Little-endian values of `dtype` (f64 read as f32); `None` for another dtype.
fn decode(dtype: Dtype, data: &[u8]) -> Option<Stored> {
    Some(match dtype {
        Dtype::F32 => Stored::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Stored::F16(
            data.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        Dtype::BF16 => Stored::Bf16(
            data.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        Dtype::F64 => Stored::F32(
            data.chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
        ),
        _ => return None,
    })
}

/// Adds the float tensors of safetensors file `path` to `tensors`, read when taken in the
/// dtype the file stores them in (f64 converted to f32). The file is memory-mapped, not read
/// into memory.
fn read_safetensors(
    path: &Path,
    tensors: &mut HashMap<String, (Vec<usize>, Source)>,
) -> Result<(), ModelError> {
    let io = |error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    };
    let bytes: SharedBytes = Arc::new(FileBytes::map(path).map_err(io)?);
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::BadSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let base = bytes.as_ptr() as usize;
    for (name, view) in st.tensors() {
        match view.dtype() {
            // Bytes are packed weights (MXFP4's blocks and scales, WeightMap::unstack_mxfp4).
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 | Dtype::U8 => {}
            // Integer tensors are buffers (e.g. BERT's `position_ids`), not weights.
            Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::BOOL => {
                tracing::debug!(tensor = %name, "skipping integer buffer");
                continue;
            }
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{other:?}"),
                });
            }
        }
        // The view borrows the mapped bytes: its place in them is the range to read later.
        let start = view.data().as_ptr() as usize - base;
        let source = Source::Safetensors {
            bytes: bytes.clone(),
            range: start..start + view.data().len(),
            dtype: view.dtype(),
        };
        tensors.insert(name, (view.shape().to_vec(), source));
    }
    Ok(())
}

/// A `rows` x `cols` row-major matrix, transposed: in square tiles (so reads and writes both
/// stay within a few cache lines) and bands of output rows in parallel. A naive loop writes
/// with a stride of `rows` and took an eighth of loading a 1B model.
pub(crate) fn transpose<T: Copy + Default + Send + Sync>(
    values: &[T],
    rows: usize,
    cols: usize,
) -> Vec<T> {
    use rayon::prelude::*;
    const TILE: usize = 64;
    let mut out = vec![T::default(); values.len()];
    if rows == 0 || cols == 0 {
        return out;
    }
    // Band `b` of the output holds input columns `b * TILE ..`, each an output row of `rows`.
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, chunk)| {
            let c0 = band * TILE;
            let width = chunk.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                for c in 0..width {
                    let dst = &mut chunk[c * rows..(c + 1) * rows];
                    for r in r0..(r0 + TILE).min(rows) {
                        dst[r] = values[r * cols + c0 + c];
                    }
                }
            }
        });
    out
}

/// Every tensor of these safetensors files (a checkpoint's shards) as f32, by name.
pub fn read_f32_tensors(paths: &[PathBuf]) -> Result<HashMap<String, Shaped>, ModelError> {
    let mut tensors = HashMap::new();
    for p in paths {
        read_safetensors(p, &mut tensors)?;
    }
    tensors
        .into_iter()
        .map(|(name, (shape, source))| match source.read(&shape) {
            Some(values) => Ok((name, (shape, values.into_f32()))),
            None => Err(ModelError::BadSafetensors {
                path: paths.first().cloned().unwrap_or_default(),
                reason: format!("tensor `{name}` does not hold its shape's values"),
            }),
        })
        .collect()
}

/// A tensor's PyTorch shape and values.
pub type Shaped = (Vec<usize>, Vec<f32>);

/// Tensors of a checkpoint by name, in the dtype the file stores them in, consumed as the
/// model takes them: as f32, or, for the weights a stage keeps low
/// ([`keep_as_stored`](Self::keep_as_stored)), as stored.
pub struct WeightMap {
    path: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Source)>,
    device: Device,
    keep: Vec<DType>,
    /// Block projections taken with [`take_proj`](WeightMap::take_proj) are held quantised.
    quantize: Option<QuantFormat>,
}

impl WeightMap {
    /// Reads every tensor of a safetensors file (f32, f16 and bf16 as stored; f64 as f32).
    pub fn from_safetensors(path: &Path, device: &Device) -> Result<WeightMap, ModelError> {
        let mut tensors = HashMap::new();
        read_safetensors(path, &mut tensors)?;
        Ok(WeightMap::from_sources(path.to_path_buf(), tensors, device))
    }

    /// Projection weights, token embedding tables and LM heads stored in one of `dtypes` are
    /// taken in it, not as f32: a stage that keeps its frozen base in the training precision
    /// (LoRA under `train.precision`) then never holds an f32 copy of them. Everything else
    /// (norms, biases) is f32 whatever the file stores.
    pub fn keep_as_stored(&mut self, dtypes: &[DType]) {
        self.keep = dtypes.to_vec();
    }

    /// The weights of an HF model directory: `model.safetensors`, or the shards that
    /// `model.safetensors.index.json` lists (as transformers saves checkpoints above
    /// `max_shard_size`). Each shard is memory-mapped and read in turn, so loading holds one
    /// f32 copy of the weights, not also the files.
    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<WeightMap, ModelError> {
        let index = dir.join(INDEX_FILE);
        if !index.is_file() {
            return WeightMap::from_safetensors(&dir.join("model.safetensors"), device);
        }
        let (parsed, shards) = read_shard_index(&index)?;
        let mut tensors = HashMap::new();
        for shard in shards {
            read_safetensors(&dir.join(shard), &mut tensors)?;
        }
        for (name, shard) in &parsed.weight_map {
            if !tensors.contains_key(name) {
                return Err(ModelError::MissingTensor {
                    path: dir.join(shard),
                    name: name.clone(),
                });
            }
        }
        Ok(WeightMap::from_sources(index, tensors, device))
    }

    /// A map built in memory (GGUF loading, tests).
    pub fn from_tensors(
        path: PathBuf,
        tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
        device: &Device,
    ) -> WeightMap {
        let tensors = tensors
            .into_iter()
            .map(|(name, (shape, values))| (name, (shape, Source::Ready(Stored::F32(values)))))
            .collect();
        WeightMap::from_sources(path, tensors, device)
    }

    /// A map of tensors read when taken (a GGUF file's).
    pub fn from_sources(
        path: PathBuf,
        tensors: HashMap<String, (Vec<usize>, Source)>,
        device: &Device,
    ) -> WeightMap {
        WeightMap {
            path,
            tensors,
            device: device.clone(),
            keep: Vec::new(),
            quantize: None,
        }
    }

    /// Holds the frozen weights as `frozen` says ([`keep_as_stored`](Self::keep_as_stored),
    /// [`quantize_projections`](Self::quantize_projections)).
    pub fn hold_frozen(&mut self, frozen: &super::Frozen) {
        self.keep_as_stored(&frozen.keep);
        self.quantize_projections(frozen.quantize);
    }

    /// Block projections taken with [`take_proj`](Self::take_proj) are held quantised from now
    /// on (QLoRA's frozen base): each is read, quantised and dropped, so the dense weights never
    /// exist together. A GGUF tensor already in a ggml block type keeps its blocks.
    pub fn quantize_projections(&mut self, format: Option<QuantFormat>) {
        self.quantize = format;
    }

    /// The projection of HF module `module` (`layers.0.self_attn.q_proj`): its `.weight`,
    /// and its `.bias` where `bias` says it has one (see [`take_proj`](Self::take_proj)).
    pub fn take_module(
        &mut self,
        module: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<super::layers::Proj, ModelError> {
        let bias = match bias {
            true => Some(self.take(&format!("{module}.bias"), [d_out])?),
            false => None,
        };
        self.take_proj(&format!("{module}.weight"), d_in, d_out, bias)
    }

    /// A block projection `[out, in]` with its bias: quantised when
    /// [`quantize_projections`](Self::quantize_projections) asks for it, else as
    /// [`take_linear`](Self::take_linear) reads it.
    pub fn take_proj(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: Option<Tensor<1>>,
    ) -> Result<super::layers::Proj, ModelError> {
        use super::quantized::{KEPT_GGML, QuantWeight};
        let Some(format) = self.quantize else {
            return Ok(super::layers::Proj::new(
                self.take_linear(name, d_in, d_out)?,
                bias,
            ));
        };
        let bad = |path: &Path, e: super::quantized::QuantError| ModelError::BadConfig {
            path: path.to_path_buf(),
            reason: format!("cannot quantise `{name}`: {e}"),
        };
        self.check_shape(name, &[d_out, d_in])?;
        let (_, source) = self.tensors.remove(name).expect("checked above");
        let weight = match source {
            Source::Ggml {
                bytes,
                start,
                ggml_type,
                rows,
            } if KEPT_GGML.contains(&ggml_type) => {
                let (block_bytes, block_len) =
                    super::ggml_quants::block_layout(ggml_type).expect("a kept type has a layout");
                let len = d_out * d_in / block_len * block_bytes;
                let data = bytes
                    .get(start..start + len)
                    .ok_or_else(|| self.unreadable(name))?
                    .to_vec();
                bytes.release(start..start + len);
                QuantWeight::from_ggml(ggml_type, data, d_out, d_in, rows)
                    .map_err(|e| bad(&self.path, e))?
            }
            source => {
                let values = source
                    .read(&[d_out, d_in])
                    .ok_or_else(|| self.unreadable(name))?
                    .into_f32();
                QuantWeight::quantize(&values, d_out, d_in, format)
                    .map_err(|e| bad(&self.path, e))?
            }
        };
        Ok(super::layers::Proj::from_quantized(
            weight,
            bias,
            &self.device,
        ))
    }

    /// A block projection stored as burn holds it, `[in, out]` (gpt-oss's fused experts), with
    /// its bias: quantised when [`quantize_projections`](Self::quantize_projections) asks for
    /// it, else as [`take_matrix`](Self::take_matrix) reads it.
    pub fn take_proj_in_out(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: Option<Tensor<1>>,
    ) -> Result<super::layers::Proj, ModelError> {
        let Some(format) = self.quantize else {
            let weight = self.take_matrix(name, [d_in, d_out])?;
            return Ok(super::layers::Proj::new(weight, bias));
        };
        // The formats quantise PyTorch's `[out, in]` by rows.
        let values = self
            .take_values(name, &[d_in, d_out])?
            .transposed(d_in, d_out)
            .into_f32();
        let weight = super::quantized::QuantWeight::quantize(&values, d_out, d_in, format)
            .map_err(|e| ModelError::BadConfig {
                path: self.path.clone(),
                reason: format!("cannot quantise `{name}`: {e}"),
            })?;
        Ok(super::layers::Proj::from_quantized(
            weight,
            bias,
            &self.device,
        ))
    }

    fn unreadable(&self, name: &str) -> ModelError {
        ModelError::BadConfig {
            path: self.path.clone(),
            reason: format!("tensor `{name}` does not hold the values its shape and type need"),
        }
    }

    /// Shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|(s, _)| s.clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes `prefix` from every name that has it (`transformer.h.0` -> `h.0`), so one loader
    /// reads both a bare base model and one saved under a task head.
    pub fn strip_prefix(&mut self, prefix: &str) {
        self.replace_prefix(prefix, "");
    }

    /// Renames every tensor whose name starts with `from` to start with `to` instead.
    pub fn replace_prefix(&mut self, from: &str, to: &str) {
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(from))
            .cloned()
            .collect();
        for name in names {
            if let Some(t) = self.tensors.remove(&name) {
                self.tensors
                    .insert(format!("{to}{}", &name[from.len()..]), t);
            }
        }
    }

    /// The tensor `name` with exactly `shape`, in f32.
    pub fn take<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<D>, ModelError> {
        let values = self.take_values(name, &shape)?.into_f32();
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    /// A weight matrix read as it lies (a token embedding table `[vocab, d]`, a GPT-2 Conv1D
    /// weight, already `[in, out]`): in its stored dtype when the stage keeps it so
    /// ([`keep_as_stored`](Self::keep_as_stored)), else f32.
    pub fn take_matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>, ModelError> {
        let values = self.take_values(name, &shape)?;
        Ok(self.tensor(values, shape.to_vec()))
    }

    /// `values` as a tensor of `shape`: in their stored dtype when it is kept, else f32.
    fn tensor<const D: usize>(&self, values: Stored, shape: Vec<usize>) -> Tensor<D> {
        let dtype = values.dtype();
        match self.keep.contains(&dtype) {
            true => Tensor::from_data(values.into_data(shape), (&self.device, dtype)),
            false => Tensor::from_data(TensorData::new(values.into_f32(), shape), &self.device),
        }
    }

    fn take_values(&mut self, name: &str, shape: &[usize]) -> Result<Stored, ModelError> {
        self.check_shape(name, shape)?;
        let (_, source) = self.tensors.remove(name).expect("checked above");
        source.read(shape).ok_or_else(|| self.unreadable(name))
    }

    /// Tensor `name` is present with exactly `shape`.
    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<(), ModelError> {
        let (found, _) = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })?;
        if found != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        Ok(())
    }

    /// A PyTorch `nn.Linear` weight `[out, in]`, as burn's `[in, out]`, laid out contiguously:
    /// a transposed view would be copied by every matmul it enters (for a frozen LoRA base,
    /// on every step), with the same values. In its stored dtype when the stage keeps it so
    /// ([`keep_as_stored`](Self::keep_as_stored)), else f32.
    pub fn take_linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Tensor<2>, ModelError> {
        let values = self.take_values(name, &[d_out, d_in])?;
        Ok(self.tensor(values.transposed(d_out, d_in), vec![d_in, d_out]))
    }

    /// PyTorch `nn.Linear` weights `[d_out, d_in]` side by side as one burn weight
    /// `[d_in, d_out * names.len()]`, in the order given (an expert's gate and up projections,
    /// fused): the rows stacked, then transposed once, with no concatenation of tensors after.
    /// Stored and kept as [`take_linear`](Self::take_linear) keeps each.
    pub fn take_linears_side_by_side(
        &mut self,
        names: &[String],
        d_in: usize,
        d_out: usize,
    ) -> Result<Tensor<2>, ModelError> {
        let mut rows: Option<Stored> = None;
        for name in names {
            let values = self.take_values(name, &[d_out, d_in])?;
            rows = Some(match rows {
                Some(stacked) => stacked.followed_by(values),
                None => values,
            });
        }
        let outs = d_out * names.len();
        let rows = rows.unwrap_or(Stored::F32(Vec::new()));
        Ok(self.tensor(rows.transposed(outs, d_in), vec![d_in, outs]))
    }

    /// A decoder's own LM head, `lm_head.weight` `[vocab, d]`: `None` when the head is tied to
    /// the embedding (a tied copy saved anyway is dropped) or when a `score` head stands in its
    /// place (a sequence classifier's checkpoint); an error when it is neither tied nor there.
    pub fn take_lm_head(
        &mut self,
        d: usize,
        vocab: usize,
        tied: bool,
    ) -> Result<Option<super::layers::Proj>, ModelError> {
        const HEAD: &str = "lm_head.weight";
        if tied {
            self.discard(HEAD);
            return Ok(None);
        }
        if self.contains(HEAD) {
            let weight = self.take_linear(HEAD, d, vocab)?;
            return Ok(Some(super::layers::Proj::new(weight, None)));
        }
        if self.contains("score.weight") {
            return Ok(None);
        }
        Err(ModelError::MissingTensor {
            path: self.path.clone(),
            name: HEAD.into(),
        })
    }

    /// Drops `name` (a tied duplicate nobody needs).
    pub fn discard(&mut self, name: &str) {
        self.tensors.remove(name);
    }

    /// Replaces the stacked tensor `name` (`[parts, ...]`: experts as a GGUF stacks them) by
    /// its `parts` slices, `name_of(i)` each, as HF checkpoints store experts one by one. Each
    /// slice is read only when taken, quantised blocks and all. Nothing happens without `name`.
    pub fn unstack(
        &mut self,
        name: &str,
        name_of: impl Fn(usize) -> String,
    ) -> Result<(), ModelError> {
        let Some((shape, source)) = self.tensors.remove(name) else {
            return Ok(());
        };
        let parts = shape.first().copied().unwrap_or(0);
        let inner = shape[1.min(shape.len())..].to_vec();
        let n = inner.iter().product();
        let pieces = source
            .split_outer(parts, n)
            .ok_or_else(|| self.unreadable(name))?;
        for (i, piece) in pieces.into_iter().enumerate() {
            self.tensors.insert(name_of(i), (inner.clone(), piece));
        }
        Ok(())
    }

    /// Replaces an MXFP4 stack as HF stores it (gpt-oss's experts) by one ggml MXFP4 source per
    /// part: `{name}_blocks` `[parts, out, in / 32, 16]` (two E2M1 codes a byte, the even
    /// element in the low nibble) and `{name}_scales` `[parts, out, in / 32]` (E8M0 exponents)
    /// become `name_of(i)`, each `[out, in]` as PyTorch lays out a linear weight, in ggml's
    /// blocks (the scale byte, then 16 bytes holding element j low and j + 16 high). The values
    /// are the same; they read as a GGUF tensor does (dequantised to f32, or kept as blocks
    /// under QLoRA, [`take_proj`](Self::take_proj)). `Ok(false)` without `{name}_blocks`.
    pub fn unstack_mxfp4(
        &mut self,
        name: &str,
        name_of: impl Fn(usize) -> String,
    ) -> Result<bool, ModelError> {
        use super::ggml_quants::types::MXFP4;
        let blocks_name = format!("{name}_blocks");
        let Some((shape, _)) = self.tensors.get(&blocks_name) else {
            return Ok(false);
        };
        let &[parts, out, groups, 16] = &shape[..] else {
            return Err(ModelError::BadConfig {
                path: self.path.clone(),
                reason: format!(
                    "`{blocks_name}` is {shape:?}; MXFP4 blocks are [parts, out, in / 32, 16]"
                ),
            });
        };
        let blocks = self.take_bytes(&blocks_name, &[parts, out, groups, 16])?;
        let scales = self.take_bytes(&format!("{name}_scales"), &[parts, out, groups])?;
        let mut ggml = Vec::with_capacity(scales.len() * 17);
        for (&scale, codes) in scales.iter().zip(blocks.chunks_exact(16)) {
            let code = |m: usize| (codes[m / 2] >> (4 * (m % 2))) & 0x0F;
            ggml.push(scale);
            ggml.extend((0..16).map(|j| code(j) | (code(j + 16) << 4)));
        }
        let bytes: SharedBytes = Arc::new(FileBytes::Owned(ggml));
        let part_bytes = out * groups * 17;
        for i in 0..parts {
            let source = Source::Ggml {
                bytes: bytes.clone(),
                start: i * part_bytes,
                ggml_type: MXFP4,
                rows: None,
            };
            self.tensors
                .insert(name_of(i), (vec![out, groups * 32], source));
        }
        Ok(true)
    }

    /// The bytes of U8 tensor `name`, which has exactly `shape`.
    fn take_bytes(&mut self, name: &str, shape: &[usize]) -> Result<Vec<u8>, ModelError> {
        self.check_shape(name, shape)?;
        let (_, source) = self.tensors.remove(name).expect("checked above");
        let Source::Safetensors {
            bytes,
            range,
            dtype: Dtype::U8,
        } = source
        else {
            return Err(self.unreadable(name));
        };
        let values = bytes.get(range.clone()).map(<[u8]>::to_vec);
        bytes.release(range);
        values.ok_or_else(|| self.unreadable(name))
    }

    /// Gives tensor `from` the name `to` (nothing happens without `from`).
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(t) = self.tensors.remove(from) {
            self.tensors.insert(to.to_owned(), t);
        }
    }

    /// Replaces GGUF tensors `first` and `second` (`[rows, ...]` each, the same ggml type) by
    /// one, `into`, whose rows alternate: `first`'s row 0, `second`'s row 0, `first`'s row 1...
    /// (gpt-oss's gate and up projections, which HF interleaves and llama.cpp keeps apart).
    /// Quantised rows move whole, as they are stored.
    pub fn interleave_rows(
        &mut self,
        first: &str,
        second: &str,
        into: &str,
    ) -> Result<(), ModelError> {
        let mut parts = Vec::with_capacity(2);
        for name in [first, second] {
            let missing = || ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            };
            match self.tensors.remove(name).ok_or_else(missing)? {
                (
                    shape,
                    Source::Ggml {
                        bytes,
                        start,
                        ggml_type,
                        rows: None,
                    },
                ) => parts.push((shape, bytes, start, ggml_type)),
                _ => return Err(self.unreadable(name)),
            }
        }
        let Ok([(shape, a, a_start, t), (shape_b, b, b_start, t_b)]) = <[_; 2]>::try_from(parts)
        else {
            unreachable!("one part per name");
        };
        let (block_bytes, block_len) =
            super::ggml_quants::block_layout(t).ok_or_else(|| self.unreadable(first))?;
        let rows = shape.first().copied().unwrap_or(0);
        let cols: usize = shape.iter().skip(1).product();
        if shape != shape_b || t != t_b || !cols.is_multiple_of(block_len) {
            return Err(self.unreadable(second));
        }
        let row = cols / block_len * block_bytes;
        let (a, b) = (
            a.get(a_start..a_start + rows * row),
            b.get(b_start..b_start + rows * row),
        );
        let (Some(a), Some(b)) = (a, b) else {
            return Err(self.unreadable(first));
        };
        let mut both = Vec::with_capacity(2 * rows * row);
        for (ra, rb) in a.chunks_exact(row).zip(b.chunks_exact(row)) {
            both.extend_from_slice(ra);
            both.extend_from_slice(rb);
        }
        let source = Source::Ggml {
            bytes: Arc::new(FileBytes::Owned(both)),
            start: 0,
            ggml_type: t,
            rows: None,
        };
        let shape = [vec![2 * rows], shape[1..].to_vec()].concat();
        self.tensors.insert(into.to_owned(), (shape, source));
        Ok(())
    }

    /// Names nobody took (reported as unused weights).
    pub fn remaining(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Named tensors on their way to a safetensors file.
///
/// A tensor put from the model is read back only when the file is written, one tensor at a
/// time: saving a model costs one tensor's copy on top of the model, never a second copy of
/// all its weights (on a 270M model with a 262k vocabulary, the difference is a gigabyte).
#[derive(Default)]
pub struct WeightWriter {
    tensors: BTreeMap<String, Entry>,
}

struct Entry {
    shape: Vec<usize>,
    values: Values,
}

/// Receives a tensor's values, in one or more consecutive pieces.
type Visit<'a> = &'a mut dyn FnMut(&[f32]);

enum Values {
    Ready(Vec<f32>),
    /// Hands the tensor's values to a visitor, in pieces, when the file is written (a transposed or
    /// merged weight is computed then; a loaded one is read where it lies).
    Deferred(Box<dyn Fn(Visit<'_>)>),
}

impl Entry {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// `visit` of the values in consecutive pieces, read now for a deferred tensor.
    fn for_each_piece(&self, visit: &mut dyn FnMut(&[f32])) {
        match &self.values {
            Values::Ready(v) => visit(v),
            Values::Deferred(read) => {
                let mut seen = 0;
                read(&mut |piece| {
                    seen += piece.len();
                    visit(piece);
                });
                assert_eq!(seen, self.len(), "a tensor reads back in its shape");
            }
        }
    }

    /// The values, whole.
    fn to_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        self.for_each_piece(&mut |piece| out.extend_from_slice(piece));
        out
    }
}

impl WeightWriter {
    pub fn put<const D: usize>(&mut self, name: impl Into<String>, t: Tensor<D>) {
        let shape = t.dims().to_vec();
        let read = move |visit: Visit<'_>| crate::kernels::for_f32_pieces(t.clone(), visit);
        self.tensors.insert(
            name.into(),
            Entry {
                shape,
                values: Values::Deferred(Box::new(read)),
            },
        );
    }

    /// Stores a burn `[in, out]` weight as PyTorch's `[out, in]`.
    pub fn put_linear(&mut self, name: impl Into<String>, w: Tensor<2>) {
        self.put(name, w.transpose());
    }
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// Every tensor by name, in name order: its shape and values, each read as it is reached.
    pub fn into_tensors(self) -> impl Iterator<Item = (String, (Vec<usize>, Vec<f32>))> {
        self.tensors.into_iter().map(|(name, entry)| {
            let values = entry.to_vec();
            (name, (entry.shape, values))
        })
    }

    /// A tensor given by its PyTorch shape and values.
    pub fn put_values(&mut self, name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "values fill the shape"
        );
        self.tensors.insert(
            name.into(),
            Entry {
                shape,
                values: Values::Ready(values),
            },
        );
    }

    /// Writes the file in f32 (tensors sorted by name; metadata `format: pt` as transformers
    /// expects).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let names: Vec<&String> = self.tensors.keys().collect();
        self.write_file(path, &names, StoredDtype::F32)
    }

    /// Streams the file to disk tensor by tensor, each read (and converted to `dtype`) only
    /// when it is written. The bytes are those of safetensors' own serialiser: its header
    /// (`Metadata`, padded with spaces to 8 bytes), then the data in the order it sorts tensors
    /// in, by name here since all have one dtype (a test holds the two to the same bytes).
    fn write_file(&self, path: &Path, names: &[&String], dtype: StoredDtype) -> anyhow::Result<()> {
        use std::io::Write;
        let mut names = names.to_vec();
        names.sort();
        let mut offset = 0;
        let infos = names
            .iter()
            .map(|n| {
                let entry = &self.tensors[*n];
                let len = entry.len() * dtype.bytes();
                let info = safetensors::tensor::TensorInfo {
                    dtype: dtype.safetensors(),
                    shape: entry.shape.clone(),
                    data_offsets: (offset, offset + len),
                };
                offset += len;
                ((*n).clone(), info)
            })
            .collect();
        let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let header = safetensors::tensor::Metadata::new(Some(meta), infos)?;
        let mut header = serde_json::to_string(&header)?.into_bytes();
        header.resize(header.len().next_multiple_of(8), b' ');
        crate::store::write_atomic_file(path, |tmp| {
            let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp)?);
            f.write_all(&(header.len() as u64).to_le_bytes())?;
            f.write_all(&header)?;
            for n in &names {
                let mut written = Ok(());
                self.tensors[*n].for_each_piece(&mut |values| {
                    if written.is_ok() {
                        written = match dtype.is_f32_in_place() {
                            true => f.write_all(f32_bytes(values)),
                            false => f.write_all(&dtype.encode(values)),
                        };
                    }
                });
                written?;
            }
            f.into_inner().map_err(|e| e.into_error())?;
            Ok(())
        })
    }

    /// Writes the weights into `dir` in `dtype` as transformers saves them:
    /// `model.safetensors`, or, above `max_shard_bytes`, shards of at most that size
    /// (`model-00001-of-00003.safetensors`, a tensor larger than the limit alone in its shard)
    /// and `model.safetensors.index.json`. Returns the names of the files written.
    pub fn write_dir(
        &self,
        dir: &Path,
        dtype: StoredDtype,
        max_shard_bytes: u64,
    ) -> anyhow::Result<Vec<String>> {
        let size = |n: &String| (self.tensors[n].len() * dtype.bytes()) as u64;
        let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
        let mut current = 0u64;
        for name in self.tensors.keys() {
            let last = shards.last_mut().expect("one shard");
            if !last.is_empty() && current + size(name) > max_shard_bytes {
                shards.push(Vec::new());
                current = 0;
            }
            shards.last_mut().expect("one shard").push(name);
            current += size(name);
        }
        if shards.len() == 1 {
            self.write_file(&dir.join("model.safetensors"), &shards[0], dtype)?;
            return Ok(vec!["model.safetensors".into()]);
        }
        let n = shards.len();
        let mut files = Vec::with_capacity(n + 1);
        let mut weight_map = serde_json::Map::new();
        for (i, names) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            self.write_file(&dir.join(&file), names, dtype)?;
            for name in names {
                weight_map.insert((*name).clone(), file.clone().into());
            }
            files.push(file);
        }
        let total: u64 = self.tensors.keys().map(size).sum();
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let index_name = "model.safetensors.index.json";
        crate::store::write_atomic(
            &dir.join(index_name),
            serde_json::to_string_pretty(&index)?.as_bytes(),
        )?;
        files.push(index_name.into());
        Ok(files)
    }
}

/// The floating types hone writes checkpoints in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    BF16,
    F16,
}

impl StoredDtype {
    /// From a config's `dtype` / `torch_dtype` name.
    pub fn from_config_name(name: &str) -> Option<StoredDtype> {
        match name {
            "float32" => Some(StoredDtype::F32),
            "bfloat16" => Some(StoredDtype::BF16),
            "float16" => Some(StoredDtype::F16),
            _ => None,
        }
    }

    pub fn config_name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "float32",
            StoredDtype::BF16 => "bfloat16",
            StoredDtype::F16 => "float16",
        }
    }

    fn bytes(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::BF16 | StoredDtype::F16 => 2,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            StoredDtype::F32 => Dtype::F32,
            StoredDtype::BF16 => Dtype::BF16,
            StoredDtype::F16 => Dtype::F16,
        }
    }

    /// Values as little-endian bytes of this type (rounded to nearest even).
    /// Whether f32 values can be written as they lie in memory (little-endian f32).
    fn is_f32_in_place(self) -> bool {
        self == StoredDtype::F32 && cfg!(target_endian = "little")
    }

    fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            StoredDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StoredDtype::BF16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
            StoredDtype::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }
}

/// The bytes of `v` as they lie in memory (little-endian on the targets that write them so).
fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialised bytes; u8 has alignment 1; the length covers exactly
    // the slice's memory and the borrow ties the bytes to `v`'s lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod transpose_tests {
    /// Every shape, tiles and bands partial or whole, gives the plain transpose.
    #[test]
    fn tiled_transpose_is_the_transpose() {
        for (rows, cols) in [
            (1, 1),
            (3, 5),
            (64, 64),
            (65, 130),
            (200, 7),
            (7, 200),
            (0, 4),
        ] {
            let v: Vec<u32> = (0..(rows * cols) as u32).collect();
            let t = super::transpose(&v, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], v[r * cols + c], "{rows}x{cols} at {r},{c}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// The streaming writer produces the bytes safetensors' own serialiser does, for tensors
    /// put as values and as (transposed) tensors, in f32 and converted.
    #[test]
    fn streamed_files_are_the_bytes_safetensors_writes() {
        let d = Device::flex();
        let linear: Vec<f32> = (0..6).map(|v| v as f32 * 0.5 - 1.0).collect();
        let vector = vec![0.25f32, -3.0, 7.5];
        let mut w = WeightWriter::default();
        w.put_linear(
            "b.linear.weight",
            Tensor::<2>::from_data(TensorData::new(linear.clone(), [2, 3]), &d),
        );
        w.put_values("a.norm.weight", vec![3], vector.clone());
        w.put(
            "c.scalar",
            Tensor::<1>::from_data(TensorData::new(vec![9.0f32], [1]), &d),
        );
        let dir = tempfile::tempdir().unwrap();
        for dtype in [StoredDtype::F32, StoredDtype::BF16, StoredDtype::F16] {
            // PyTorch's [out, in] = the transpose of burn's [in, out] = [2, 3].
            let expected = [
                ("a.norm.weight", vec![3], dtype.encode(&vector)),
                (
                    "b.linear.weight",
                    vec![3, 2],
                    dtype.encode(&transpose(&linear, 2, 3)),
                ),
                ("c.scalar", vec![1], dtype.encode(&[9.0])),
            ];
            let views: Vec<(&str, TensorView)> = expected
                .iter()
                .map(|(n, shape, bytes)| {
                    (
                        *n,
                        TensorView::new(dtype.safetensors(), shape.clone(), bytes).unwrap(),
                    )
                })
                .collect();
            let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
            let reference = safetensors::serialize(views, Some(meta)).unwrap();
            let names: Vec<String> = w.names().cloned().collect();
            let names: Vec<&String> = names.iter().collect();
            let path = dir.path().join("w.safetensors");
            w.write_file(&path, &names, dtype).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), reference, "{dtype:?}");
        }
    }
}
