//! Training checkpoints: the trainable weights (with their parameter ids), the optimizer state,
//! and the loop's position, written atomically so a SIGKILL at any instant leaves either the
//! previous checkpoint or the new one, never half of one.
//!
//! ```text
//! <dir>/current/   params.bin   trainable tensors in module order: id, require_grad, shape, f32
//!                  best.bin     the best model so far (early stopping), when there is one
//!                  optim.bpk    burn's optimizer record (burnpack), keyed by parameter id
//!                  state.json   step, epoch, data position, summary, metric log
//!                  digests.json BLAKE3 of each file above; written last
//! ```
//! A checkpoint whose files do not match their digests (a truncated write, a flipped bit) is
//! discarded with a warning, and the stage trains from the start: never from damaged weights.
//! Frozen parameters (a LoRA base) are not saved: the stage rebuilds them from the same inputs.
//! Loading gives each trainable parameter back the id it had, so the optimizer record (keyed by
//! id) attaches to the right tensors.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::store::sealed::{check_digests, write_digests};

const MAGIC: &[u8; 8] = b"HONECKP1";

/// One saved tensor.
struct Saved {
    id: u64,
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// Collects the trainable float parameters in module order.
struct Collect(Vec<Saved>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if p.is_require_grad() {
            let t = p.val();
            let shape = t.dims().to_vec();
            let data = t
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 data");
            self.0.push(Saved {
                id: p.id.val(),
                shape,
                data,
            });
        }
    }
}

/// Puts saved tensors back into the trainable parameters, in module order.
struct Restore {
    saved: std::vec::IntoIter<Saved>,
    error: Option<String>,
}

impl ModuleMapper for Restore {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !p.is_require_grad() || self.error.is_some() {
            return p;
        }
        let Some(s) = self.saved.next() else {
            self.error = Some("the checkpoint has fewer trainable tensors than the model".into());
            return p;
        };
        let shape = p.shape().dims::<D>().to_vec();
        if s.shape != shape {
            self.error = Some(format!(
                "checkpoint tensor shape {:?} does not match the model's {shape:?}",
                s.shape
            ));
            return p;
        }
        let device = p.val().device();
        let t = Tensor::<D>::from_data(TensorData::new(s.data, s.shape), &device);
        Param::initialized(ParamId::from(s.id), t).set_require_grad(true)
    }
}

fn write_params<M: Module>(model: &M, path: &Path) -> Result<()> {
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    let mut out = std::io::BufWriter::new(fs::File::create(path)?);
    out.write_all(MAGIC)?;
    out.write_all(&(c.0.len() as u64).to_le_bytes())?;
    for s in &c.0 {
        out.write_all(&s.id.to_le_bytes())?;
        out.write_all(&(s.shape.len() as u64).to_le_bytes())?;
        for d in &s.shape {
            out.write_all(&(*d as u64).to_le_bytes())?;
        }
        for x in &s.data {
            out.write_all(&x.to_le_bytes())?;
        }
    }
    out.into_inner()?.sync_all()?;
    Ok(())
}

fn read_params(path: &Path) -> Result<Vec<Saved>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.read_to_end(&mut bytes)?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = at
            .checked_add(n)
            .and_then(|end| bytes.get(at..end))
            .with_context(|| format!("{} is truncated", path.display()))?;
        at += n;
        Ok(s)
    };
    if take(8)? != MAGIC {
        bail!("{} is not a hone checkpoint", path.display());
    }
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let too_big = || anyhow::anyhow!("{} is damaged (a size past its end)", path.display());
    let n = usize::try_from(u64_of(take(8)?)).map_err(|_| too_big())?;
    // Each tensor takes at least 16 bytes: a count beyond that is damage, not a reservation.
    let mut out = Vec::with_capacity(n.min(bytes.len() / 16));
    for _ in 0..n {
        let id = u64_of(take(8)?);
        let rank = usize::try_from(u64_of(take(8)?)).map_err(|_| too_big())?;
        let mut shape = Vec::with_capacity(rank.min(8));
        for _ in 0..rank {
            shape.push(usize::try_from(u64_of(take(8)?)).map_err(|_| too_big())?);
        }
        let bytes_len = shape
            .iter()
            .try_fold(4usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(too_big)?;
        let data = take(bytes_len)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        out.push(Saved { id, shape, data });
    }
    Ok(out)
}

fn restore<M: Module>(model: M, path: &Path) -> Result<M> {
    let saved = read_params(path)?;
    let n = saved.len();
    let mut r = Restore {
        saved: saved.into_iter(),
        error: None,
    };
    let model = model.map(&mut r);
    if let Some(e) = r.error {
        bail!("{}: {e}", path.display());
    }
    if r.saved.len() != 0 {
        bail!(
            "{}: the checkpoint has {n} trainable tensors, more than the model",
            path.display()
        );
    }
    Ok(model)
}

/// Where checkpoints go and how often.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    pub dir: PathBuf,
    /// Every N optimizer steps; `None`: every `every_secs` seconds of training.
    pub every_steps: Option<usize>,
    pub every_secs: f64,
}

/// A checkpoint read back: the model and optimizer with their saved state, the best model and
/// the loop position (`state.json`, deserialised by the trainer).
pub struct Loaded<M> {
    pub model: M,
    pub optim: ModuleOptimizer,
    pub best: Option<M>,
    pub state: serde_json::Value,
}

/// Where a checkpoint directory goes while it is deleted (see [`Checkpointing::save`]).
const DISCARDED: &str = "discarded";

impl Checkpointing {
    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// Writes a checkpoint: into `next/`, then swapped in for `current/` by renames.
    pub fn save<M: Module>(
        &self,
        model: &M,
        optim: &ModuleOptimizer,
        best: Option<&M>,
        state: &serde_json::Value,
    ) -> Result<()> {
        let next = self.dir.join("next");
        if next.exists() {
            fs::remove_dir_all(&next)?;
        }
        fs::create_dir_all(&next)?;
        write_params(model, &next.join("params.bin"))?;
        if let Some(b) = best {
            write_params(b, &next.join("best.bin"))?;
        }
        optim
            .save(next.join("optim.bpk"))
            .map_err(|e| anyhow::anyhow!("cannot save the optimizer state: {e}"))?;
        let mut f = fs::File::create(next.join("state.json"))?;
        f.write_all(serde_json::to_string(state)?.as_bytes())?;
        f.sync_all()?;
        let mut files = vec!["params.bin", "optim.bpk", "state.json"];
        if best.is_some() {
            files.push("best.bin");
        }
        write_digests(&next, &files)?;
        let step = state["step"].as_u64().unwrap_or(0);
        crate::store::fault_point(&format!("checkpoint-{step}-written"));
        // `current` -> `old`, `next` -> `current`: a crash in between leaves `old` complete.
        let (current, old) = (self.current(), self.dir.join("old"));
        self.discard(&old)?;
        if current.exists() {
            fs::rename(&current, &old)?;
        }
        fs::rename(&next, &current)?;
        self.discard(&old)?;
        crate::store::fault_point(&format!("checkpoint-{step}"));
        Ok(())
    }

    /// Removes checkpoint directory `dir` without ever leaving it half-removed: renamed out
    /// of the way first (one step), then deleted. A kill during the deletion leaves only the
    /// renamed directory, which nothing reads and the next save removes.
    fn discard(&self, dir: &Path) -> Result<()> {
        let trash = self.dir.join(DISCARDED);
        if trash.exists() {
            fs::remove_dir_all(&trash)?;
        }
        if dir.exists() {
            fs::rename(dir, &trash)?;
            fs::remove_dir_all(&trash)?;
        }
        Ok(())
    }

    /// The newest complete, undamaged checkpoint: `current`, or `old` when a crash fell
    /// between the two renames. A damaged one is removed with a warning, so the stage
    /// recomputes instead of resuming from it (or failing on it for good).
    fn intact(&self) -> Option<PathBuf> {
        let mut damaged = None;
        for dir in [self.current(), self.dir.join("old")] {
            if !dir.exists() {
                continue;
            }
            match check_digests(&dir) {
                Ok(()) => return Some(dir),
                Err(why) => damaged = Some(why),
            }
        }
        if let Some(why) = damaged {
            tracing::warn!("discarding a damaged checkpoint ({why}); training starts again");
            let _ = fs::remove_dir_all(&self.dir);
        }
        None
    }

    /// The step of the newest intact checkpoint, without loading it.
    pub fn saved_step(&self) -> Option<u64> {
        self.intact()
            .and_then(|d| fs::read(d.join("state.json")).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["step"].as_u64())
    }

    /// The newest intact checkpoint, if any, loaded into `model` and `optim`.
    pub fn load<M: Module>(&self, model: M, optim: ModuleOptimizer) -> Result<Option<Loaded<M>>> {
        let Some(dir) = self.intact() else {
            return Ok(None);
        };
        let state: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("state.json"))?)
                .with_context(|| format!("{} is damaged", dir.join("state.json").display()))?;
        let best = if dir.join("best.bin").is_file() {
            Some(restore(model.clone(), &dir.join("best.bin"))?)
        } else {
            None
        };
        let model = restore(model, &dir.join("params.bin"))?;
        let optim = optim
            .load(dir.join("optim.bpk"))
            .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", dir.display()))?;
        Ok(Some(Loaded {
            model,
            optim,
            best,
            state,
        }))
    }
}
