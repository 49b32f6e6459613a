//! LoRA adapters following PEFT's conventions, so adapters saved by hone load in PEFT:
//! `y = W x + s * B(A(dropout(x)))` with `s = alpha / r` (or `alpha / sqrt(r)` with rsLoRA),
//! A kaiming-uniform (bound `1/sqrt(in)`), B zeros so the adapted model starts equal to the base.
//!
//! DoRA (`use_dora`) splits the adapted weight into a direction and a trained magnitude per
//! output: `W' = m * (W + s B A) / ||W + s B A||`, the norm taken over each output's inputs and
//! treated as a constant in backward (PEFT detaches it), `m` initialised to `||W||`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;

use super::precision::in_f32;
use serde::{Deserialize, Serialize};

/// LoRA settings (the recipe's `peft:` block and PEFT's `adapter_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r` (`alpha / sqrt(r)` with rslora).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// Module names to adapt (`q_proj`, `c_attn`, `query`...); default per model family.
    /// `all-linear` (PEFT's shorthand) adapts every linear layer but the output head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_modules: Option<Vec<String>>,
    /// Fused expert weights to adapt, by parameter name (PEFT's `target_parameters`):
    /// `mlp.experts.gate_up_proj` and `mlp.experts.down_proj` in a mixture of experts. Each
    /// expert gets its own rank-`r` update. `target_modules` (`all-linear` too) never reaches
    /// the experts, as in PEFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_parameters: Option<Vec<String>>,
    /// Rank-stabilised scaling `alpha / sqrt(r)` (PEFT's `use_rslora`).
    #[serde(default, alias = "use_rslora")]
    pub rslora: bool,
    /// DoRA: a trained magnitude per output on top of the low-rank direction update (PEFT's
    /// `use_dora`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_dora: bool,
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: None,
            target_parameters: None,
            rslora: false,
            use_dora: false,
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// The trainable low-rank update of one projection. `a` is `[in, r]` and `b` is `[r, out]`
/// (PEFT stores `lora_A.weight` as `[r, in]` and `lora_B.weight` as `[out, r]`).
#[derive(Module, Debug)]
pub struct LoraAdapter {
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
    /// DoRA's magnitude per output, `[out]` (PEFT `lora_magnitude_vector`); `None`: plain LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
    pub scaling: f64,
    pub dropout: Dropout,
    /// Off: the projection behaves as the base model (e.g. DPO's reference model).
    pub enabled: bool,
    /// Folded into the base weight (`merge`); `unmerge` takes it out again.
    pub merged: bool,
    /// DoRA's `m / ||W + s B A||` at merge time, which `unmerge` divides out again.
    #[module(skip)]
    merged_dora_scale: Option<Tensor<1>>,
}

impl LoraAdapter {
    pub fn new(d_in: usize, d_out: usize, cfg: &LoraConfig, device: &Device) -> LoraAdapter {
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Tensor::random(
            [d_in, cfg.r],
            burn::tensor::Distribution::Uniform(-bound, bound),
            device,
        );
        let b = Tensor::zeros([cfg.r, d_out], device);
        Self::from_tensors(a, b, cfg, device)
    }

    pub fn from_tensors(
        a: Tensor<2>,
        b: Tensor<2>,
        cfg: &LoraConfig,
        _device: &Device,
    ) -> LoraAdapter {
        LoraAdapter {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            magnitude: None,
            scaling: cfg.scaling(),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            enabled: true,
            merged: false,
            merged_dora_scale: None,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.low_rank(self.dropout.forward(x))
    }

    /// `s * B(A(x))`, without dropout.
    fn low_rank<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let h = burn::tensor::module::linear(x, self.a.val(), None);
        burn::tensor::module::linear(h, self.b.val(), None).mul_scalar(self.scaling)
    }

    /// What this adapter adds to the base projection's output `y = x W + bias`, as PEFT's
    /// `Linear.forward` computes it: `s B A x` for LoRA; for DoRA
    /// `(m/n - 1) x W + (m/n) s B A x` with `n = ||W + s B A||` per output (`norms`, detached),
    /// where with dropout active `x` is the dropped-out input in both terms (`project` gives
    /// its `x W`, without bias).
    pub fn update<const D: usize>(
        &self,
        x: Tensor<D>,
        y: &Tensor<D>,
        bias: Option<Tensor<1>>,
        norms: impl FnOnce() -> Tensor<1>,
        project: impl FnOnce(Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        let Some(magnitude) = &self.magnitude else {
            return self.forward(x);
        };
        let scale = (magnitude.val() / norms().detach()).unsqueeze::<D>();
        let (x, base) = if self.dropout.prob == 0.0 {
            // The base projection's own output, less its bias.
            let base = match bias {
                Some(b) => y.clone() - b.unsqueeze::<D>(),
                None => y.clone(),
            };
            (x, base)
        } else {
            let dropped = self.dropout.forward(x);
            (dropped.clone(), project(dropped))
        };
        base * (scale.clone() - 1.0) + self.low_rank(x) * scale
    }

    /// `||W + s A B||` per output of the dense weight `weight` (`[in, out]`), without gradient.
    pub fn adapted_norms(&self, weight: Tensor<2>) -> Tensor<1> {
        column_norms(in_f32(weight) + self.delta()).detach()
    }

    /// Rows `start..start + rows` of `(s A B)^T` (`[rows, in]`, PyTorch's layout of the
    /// update), without gradient: DoRA's norms over a quantised weight, a tile at a time.
    pub fn delta_rows(&self, start: usize, rows: usize) -> Tensor<2> {
        let b = self.b.val().detach().narrow(1, start, rows);
        self.a
            .val()
            .detach()
            .matmul(b)
            .transpose()
            .mul_scalar(self.scaling)
    }

    /// `W` with this adapter folded in: `W + s A B`, or for DoRA `(m / n) (W + s A B)`.
    pub fn merged_weight(&self, weight: Tensor<2>) -> Tensor<2> {
        let w = in_f32(weight) + self.delta();
        match self.dora_scale(&w) {
            Some(scale) => w * scale.unsqueeze(),
            None => w,
        }
    }

    /// DoRA's `m / ||w||` per output of the adapted weight `w`.
    fn dora_scale(&self, adapted: &Tensor<2>) -> Option<Tensor<1>> {
        let m = self.magnitude.as_ref()?;
        Some(m.val() / column_norms(adapted.clone()))
    }

    /// `s * A B` as an `[in, out]` weight update.
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scaling)
    }
}

/// The L2 norm of each column of `w` (`[in, out]` -> `[out]`): PEFT's `||W||` per output row of
/// its `[out, in]` layout.
fn column_norms(w: Tensor<2>) -> Tensor<1> {
    let d_out = w.dims()[1];
    w.square().sum_dim(0).sqrt().reshape([d_out])
}

/// PEFT's shorthand target for every linear layer except the output layer (`lm_head`, a
/// classifier): in hone's models, every projection of every block.
pub const ALL_LINEAR: &str = "all-linear";

/// Whether module `path` is targeted: PEFT matches a target against the whole path or its
/// last components (`q_proj` matches `model.layers.0.self_attn.q_proj`). Every path the
/// backbone offers for adapters is a block's linear layer, so [`ALL_LINEAR`] takes them all,
/// but an expert's projection, which only `parameters` (PEFT's `target_parameters`) reaches
/// by its fused parameter's name.
fn targeted(path: &str, modules: &[String], parameters: &[String]) -> bool {
    let matches = |name: &str, t: &String| name == t || name.ends_with(&format!(".{t}"));
    match super::moe::expert_parameter(path) {
        Some((parameter, _)) => parameters.iter().any(|t| matches(&parameter, t)),
        None => modules.iter().any(|t| t == ALL_LINEAR || matches(path, t)),
    }
}

/// Why LoRA adapters cannot be added to a model: a setting is out of range, or
/// `target_modules` names no module of the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraError {
    #[error("LoRA rank `r` must be at least 1")]
    ZeroRank,
    #[error("LoRA `dropout` must be at least 0 and below 1, got {0}")]
    Dropout(f64),
    #[error(
        "no module matches target_modules {targets:?}; this model has: {}",
        .available.join(", ")
    )]
    NoTargetMatch {
        targets: Vec<String>,
        /// The model's projection names (last path component), sorted, without repeats.
        available: Vec<String>,
    },
    #[error(
        "no expert parameter matches target_parameters {targets:?}; {}",
        match .available.is_empty() {
            true => "this model has no experts".to_owned(),
            false => format!("this model has: {}", .available.join(", ")),
        }
    )]
    NoParameterMatch {
        targets: Vec<String>,
        /// The model's fused expert parameters (`mlp.experts.down_proj`), without repeats.
        available: Vec<String>,
    },
    #[error("target_parameters adapters take no {0}, as in PEFT; set it off or adapt modules only")]
    ParameterAdapterSetting(&'static str),
}

/// Whether `p` is a dropout probability burn accepts (it panics on any other).
fn valid_dropout(p: f64) -> bool {
    (0.0..1.0).contains(&p)
}

/// Adds fresh adapters to the targeted projections and freezes everything else of the
/// backbone. Returns the backbone and the adapted module paths.
pub fn apply(
    backbone: super::Backbone,
    cfg: &LoraConfig,
    device: &Device,
) -> Result<(super::Backbone, Vec<String>), LoraError> {
    let targets: Vec<String> = match &cfg.target_modules {
        Some(t) => t.clone(),
        None => backbone
            .family()
            .default_lora_targets()
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    if cfg.r == 0 {
        return Err(LoraError::ZeroRank);
    }
    if !valid_dropout(cfg.dropout) {
        return Err(LoraError::Dropout(cfg.dropout));
    }
    let parameters = cfg.target_parameters.clone().unwrap_or_default();
    if !parameters.is_empty() {
        // PEFT's `ParamWrapper` refuses both; an adapter with them would not load there.
        if cfg.dropout > 0.0 {
            return Err(LoraError::ParameterAdapterSetting("dropout"));
        }
        if cfg.use_dora {
            return Err(LoraError::ParameterAdapterSetting("DoRA (use_dora)"));
        }
    }
    let mut backbone = backbone.no_grad();
    let mut adapted = Vec::new();
    let mut names = Vec::new();
    let (mut expert_params, mut experts_adapted) = (Vec::new(), false);
    for (path, proj) in backbone.projections_mut() {
        let expert = super::moe::expert_parameter(&path);
        if let Some((parameter, _)) = &expert {
            let short = super::moe::within_layer(parameter).to_owned();
            if !expert_params.contains(&short) {
                expert_params.push(short);
            }
        }
        if targeted(&path, &targets, &parameters) {
            experts_adapted |= expert.is_some();
            let mut adapter = LoraAdapter::new(proj.d_in(), proj.d_out(), cfg, device);
            if cfg.use_dora {
                // DoRA starts at the base: its magnitudes are the weight's norms.
                let norm = column_norms(in_f32(proj.dense_weight()));
                adapter.magnitude = Some(Param::from_tensor(norm));
            }
            proj.lora = Some(adapter);
            adapted.push(path);
        } else if expert.is_none() {
            names.push(path.rsplit('.').next().unwrap_or_default().to_owned());
        }
    }
    if !parameters.is_empty() && !experts_adapted {
        return Err(LoraError::NoParameterMatch {
            targets: parameters,
            available: expert_params,
        });
    }
    if adapted.is_empty() {
        names.sort();
        names.dedup();
        return Err(LoraError::NoTargetMatch {
            targets,
            available: names,
        });
    }
    Ok((backbone, adapted))
}

/// Turns every adapter on or off (off: the model computes as its frozen base).
pub fn set_enabled(backbone: &mut super::Backbone, enabled: bool) {
    for (_, proj) in backbone.projections_mut() {
        if let Some(l) = proj.lora.as_mut() {
            l.enabled = enabled;
        }
    }
}

/// Folds every active adapter into its base weight (`W += s A B`; DoRA
/// `W = m (W + s A B) / ||W + s A B||`), as PEFT's `merge` does; the adapter stays, marked
/// merged, so `unmerge` can take it out again.
pub fn merge(backbone: &mut super::Backbone) {
    for (_, proj) in backbone.projections_mut() {
        let Some(l) = proj.lora.as_ref().filter(|l| l.enabled && !l.merged) else {
            continue;
        };
        let adapted = in_f32(proj.dense_weight()) + l.delta();
        let scale = l.dora_scale(&adapted);
        let merged = match &scale {
            Some(s) => adapted * s.clone().unsqueeze(),
            None => adapted,
        };
        proj.replace_weight(merged);
        if let Some(l) = proj.lora.as_mut() {
            l.merged = true;
            l.merged_dora_scale = scale;
        }
    }
}

/// Undoes `merge`: `W -= s A B` (DoRA: `W = W' / (m / n) - s A B`, with the merge's `m / n`).
pub fn unmerge(backbone: &mut super::Backbone) {
    for (_, proj) in backbone.projections_mut() {
        let Some(l) = proj.lora.as_ref().filter(|l| l.merged) else {
            continue;
        };
        let mut w = in_f32(proj.dense_weight());
        if let Some(s) = &l.merged_dora_scale {
            w = w / s.clone().unsqueeze();
        }
        let base = w - l.delta();
        proj.replace_weight(base);
        if let Some(l) = proj.lora.as_mut() {
            l.merged = false;
            l.merged_dora_scale = None;
        }
    }
}

/// Merges and drops the adapters: a plain model for export.
pub fn merge_and_unload(backbone: &mut super::Backbone) {
    merge(backbone);
    for (_, proj) in backbone.projections_mut() {
        proj.lora = None;
    }
}

/// Every adapter's factors under PEFT's names (without `base_model.model.`) and in its
/// layouts, `factors` giving hone's `[in, r]` and `[r, out]` for an adapter (its weights, or
/// their gradients): `<module>.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]` for a
/// module; for a fused expert parameter, the experts' factors stacked as PEFT's
/// `target_parameters` wrapper holds them ([`stack_experts`]), under the wrapped module's name.
pub fn peft_factors(
    backbone: &mut super::Backbone,
    factors: impl Fn(&LoraAdapter) -> (Tensor<2>, Tensor<2>),
) -> Vec<(String, Tensor<2>)> {
    let mut out = Vec::new();
    // Per fused parameter, in the order the model holds them, each expert's factors in turn.
    let mut experts: Vec<(String, Vec<(Tensor<2>, Tensor<2>)>)> = Vec::new();
    for (path, proj) in backbone.projections_mut() {
        let Some(l) = &proj.lora else { continue };
        let (a, b) = factors(l);
        match super::moe::expert_parameter(&path) {
            None => {
                out.push((format!("{path}.lora_A.weight"), a.transpose()));
                out.push((format!("{path}.lora_B.weight"), b.transpose()));
            }
            Some((parameter, _)) => match experts.iter_mut().find(|(p, _)| *p == parameter) {
                Some((_, f)) => f.push((a, b)),
                None => experts.push((parameter, vec![(a, b)])),
            },
        }
    }
    let modules = parameter_modules(experts.iter().map(|(p, _)| p.as_str()));
    for ((_, f), module) in experts.into_iter().zip(modules) {
        let (a, b) = stack_experts(f);
        out.push((format!("{module}.lora_A.weight"), a));
        out.push((format!("{module}.lora_B.weight"), b));
    }
    out
}

/// The module names PEFT's adapters of fused parameters live under, for `parameters` (full
/// paths, in the order the model registers them). PEFT wraps each parameter of a module in
/// one more `ParamWrapper`, the first innermost: with `gate_up_proj` and `down_proj` adapted,
/// `experts.base_layer` holds `gate_up_proj`'s and `experts` `down_proj`'s.
fn parameter_modules<'a>(parameters: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
    let module = |p: &'a str| p.rsplit_once('.').map_or("", |(m, _)| m);
    parameters
        .clone()
        .enumerate()
        .map(|(i, p)| {
            let siblings = parameters.clone().filter(|q| module(q) == module(p));
            let (n, at) = (
                siblings.clone().count(),
                parameters
                    .clone()
                    .take(i)
                    .filter(|q| module(q) == module(p))
                    .count(),
            );
            format!("{}{}", module(p), ".base_layer".repeat(n - 1 - at))
        })
        .collect()
}

/// PEFT's `ParamWrapper` layout of per-expert factors (`a_e` `[in, r]`, `b_e` `[r, out]`):
/// `lora_A` `[E * r, in]` with expert `e`'s rows at `e * r..`, and `lora_B` `[out, r * E]`
/// with expert `e`'s `j`-th column at `j * E + e` (PEFT reshapes it `[out, r, E]`).
pub fn stack_experts(factors: Vec<(Tensor<2>, Tensor<2>)>) -> (Tensor<2>, Tensor<2>) {
    let (a, b): (Vec<_>, Vec<_>) = factors
        .into_iter()
        .map(|(a, b)| (a.transpose(), b.transpose()))
        .unzip();
    let [out, r] = b[0].dims();
    let e = b.len();
    let b = Tensor::stack::<3>(b, 2).reshape([out, r * e]);
    (Tensor::cat(a, 0), b)
}

/// [`stack_experts`] undone: each expert's `a_e` `[in, r]` and `b_e` `[r, out]`.
fn unstack_experts(a: Tensor<2>, b: Tensor<2>, e: usize) -> Vec<(Tensor<2>, Tensor<2>)> {
    let r = a.dims()[0] / e;
    let out = b.dims()[0];
    let b = b.reshape([out, r, e]);
    (0..e)
        .map(|x| {
            let a_x = a.clone().narrow(0, x * r, r).transpose();
            let b_x = b.clone().narrow(2, x, 1).reshape([out, r]).transpose();
            (a_x, b_x)
        })
        .collect()
}

/// The files of a PEFT adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Writes a PEFT adapter directory: `adapter_config.json` + `adapter_model.safetensors`.
pub fn save_peft(
    backbone: &mut super::Backbone,
    cfg: &LoraConfig,
    base_model: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let family = backbone.family();
    let mut w = super::weights::WeightWriter::default();
    let (mut targets, mut parameters) = (std::collections::BTreeSet::new(), Vec::new());
    for (path, proj) in backbone.projections_mut() {
        let Some(l) = &proj.lora else { continue };
        match super::moe::expert_parameter(&path) {
            Some((parameter, _)) => {
                let short = super::moe::within_layer(&parameter);
                if !parameters.iter().any(|p| p == short) {
                    parameters.push(short.to_owned());
                }
            }
            None => {
                targets.insert(path.rsplit('.').next().unwrap_or_default().to_owned());
            }
        }
        if let Some(m) = &l.magnitude {
            w.put(
                format!("base_model.model.{path}.lora_magnitude_vector"),
                m.val(),
            );
        }
    }
    for (name, t) in peft_factors(backbone, |l| (l.a.val(), l.b.val())) {
        w.put(format!("base_model.model.{name}"), t);
    }
    let mut config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": if family.is_encoder() { serde_json::Value::Null } else { "CAUSAL_LM".into() },
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora,
        "target_modules": targets,
        "bias": "none",
        // GPT-2's Conv1D stores weights [in, out]; PEFT needs to know when it merges.
        "fan_in_fan_out": family.fan_in_fan_out(),
        "inference_mode": true,
        "modules_to_save": serde_json::Value::Null,
    });
    if cfg.use_dora {
        // Only when set (PEFT's default is off), so plain LoRA adapters keep their bytes.
        config["use_dora"] = true.into();
    }
    if !parameters.is_empty() {
        config["target_parameters"] = parameters.into();
    }
    crate::store::write_atomic(
        &dir.join(ADAPTER_CONFIG),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    w.write(&dir.join(ADAPTER_WEIGHTS))
}

/// Reads a PEFT adapter directory onto `backbone` (which must be the adapter's base model).
pub fn load_peft(
    backbone: &mut super::Backbone,
    dir: &std::path::Path,
    device: &Device,
) -> Result<LoraConfig, super::ModelError> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&cfg_path).map_err(|error| super::ModelError::Io {
        path: cfg_path.clone(),
        error,
    })?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| super::ModelError::BadConfig {
            path: cfg_path.clone(),
            reason: e.to_string(),
        })?;
    let get_f = |k: &str, d: f64| raw.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let cfg = LoraConfig {
        r: raw.get("r").and_then(|v| v.as_u64()).unwrap_or(8) as usize,
        alpha: get_f("lora_alpha", 8.0),
        dropout: get_f("lora_dropout", 0.0),
        target_modules: raw
            .get("target_modules")
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
        rslora: raw
            .get("use_rslora")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        use_dora: raw
            .get("use_dora")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        target_parameters: raw
            .get("target_parameters")
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
    };
    if !valid_dropout(cfg.dropout) {
        return Err(super::ModelError::BadConfig {
            path: cfg_path,
            reason: format!(
                "`lora_dropout` must be at least 0 and below 1, got {}",
                cfg.dropout
            ),
        });
    }
    let mut w = super::weights::WeightMap::from_safetensors(&dir.join(ADAPTER_WEIGHTS), device)?;
    w.strip_prefix("base_model.model.");
    let mut experts = expert_adapters(backbone, &cfg, &mut w)?;
    for (path, proj) in backbone.projections_mut() {
        if let Some((parameter, x)) = super::moe::expert_parameter(&path) {
            if let Some((_, factors)) = experts.iter_mut().find(|(p, _)| *p == parameter) {
                let (a, b) = factors[x].take().expect("each expert is read once");
                proj.lora = Some(LoraAdapter::from_tensors(a, b, &cfg, device));
            }
            continue;
        }
        let a_name = format!("{path}.lora_A.weight");
        if !w.contains(&a_name) {
            continue;
        }
        let a = w.take::<2>(&a_name, [cfg.r, proj.d_in()])?.transpose();
        let b = w
            .take::<2>(&format!("{path}.lora_B.weight"), [proj.d_out(), cfg.r])?
            .transpose();
        let mut adapter = LoraAdapter::from_tensors(a, b, &cfg, device);
        if cfg.use_dora {
            let name = format!("{path}.lora_magnitude_vector");
            adapter.magnitude = Some(Param::from_tensor(w.take::<1>(&name, [proj.d_out()])?));
        }
        proj.lora = Some(adapter);
    }
    // An adapter for modules this model lacks is an adapter for another model.
    let unused = w.remaining();
    if !unused.is_empty() {
        return Err(super::ModelError::BadConfig {
            path: dir.join(ADAPTER_WEIGHTS),
            reason: format!(
                "{} adapter tensor(s) match no module of the model (e.g. `{}`): is this the adapter of another base?",
                unused.len(),
                unused[0]
            ),
        });
    }
    Ok(cfg)
}

/// The experts' factors of an adapter with `target_parameters`, per fused parameter of
/// `backbone` the adapter targets: each expert's `a` `[in, r]` and `b` `[r, out]`, taken from
/// `w` where [`peft_factors`] puts them.
#[allow(clippy::type_complexity)]
fn expert_adapters(
    backbone: &mut super::Backbone,
    cfg: &LoraConfig,
    w: &mut super::weights::WeightMap,
) -> Result<Vec<(String, Vec<Option<(Tensor<2>, Tensor<2>)>>)>, super::ModelError> {
    let targets = cfg.target_parameters.clone().unwrap_or_default();
    // Each targeted fused parameter with its experts' count and each expert's shape.
    let mut shapes: Vec<(String, usize, usize, usize)> = Vec::new();
    for (path, proj) in backbone.projections_mut() {
        let Some((parameter, _)) = super::moe::expert_parameter(&path) else {
            continue;
        };
        if !targeted(&path, &[], &targets) {
            continue;
        }
        match shapes.iter_mut().find(|(p, ..)| *p == parameter) {
            Some((_, e, ..)) => *e += 1,
            None => shapes.push((parameter, 1, proj.d_in(), proj.d_out())),
        }
    }
    let modules = parameter_modules(shapes.iter().map(|(p, ..)| p.as_str()));
    let mut out = Vec::new();
    for ((parameter, e, d_in, d_out), module) in shapes.into_iter().zip(modules) {
        let a = w.take::<2>(&format!("{module}.lora_A.weight"), [e * cfg.r, d_in])?;
        let b = w.take::<2>(&format!("{module}.lora_B.weight"), [d_out, cfg.r * e])?;
        let factors = unstack_experts(a, b, e).into_iter().map(Some).collect();
        out.push((parameter, factors));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::Proj;
    use crate::model::to_vec;

    fn t2(v: &[f32], shape: [usize; 2], d: &Device) -> Tensor<2> {
        Tensor::from_data(burn::tensor::TensorData::new(v.to_vec(), shape), d)
    }

    /// algorithms.md section 7: W=[[1,2,3],[4,5,6]], A=[[0.1,-0.2,0.3]], B=[[0.5],[-1]],
    /// alpha 2, r 1, x=[1,1,2] -> y=[9.5, 20.0]; merged W=[[1.1,1.8,3.3],[3.8,5.4,5.4]].
    #[test]
    fn peft_test_vector() {
        let d = Device::flex();
        let cfg = LoraConfig {
            r: 1,
            alpha: 2.0,
            ..LoraConfig::default()
        };
        // PyTorch layouts: W [out, in], A [r, in], B [out, r]; hone keeps [in, out].
        let w = t2(&[1., 2., 3., 4., 5., 6.], [2, 3], &d).transpose();
        let a = t2(&[0.1, -0.2, 0.3], [1, 3], &d).transpose();
        let b = t2(&[0.5, -1.0], [2, 1], &d).transpose();
        let mut proj = Proj::new(w, None);
        proj.lora = Some(LoraAdapter::from_tensors(a, b, &cfg, &d));
        let x = t2(&[1., 1., 2.], [1, 3], &d);
        let y = to_vec(proj.forward(x.clone()));
        assert!(
            (y[0] - 9.5).abs() < 1e-5 && (y[1] - 20.0).abs() < 1e-5,
            "{y:?}"
        );
        let merged = to_vec(proj.merged_weight().transpose());
        let want = [1.1, 1.8, 3.3, 3.8, 5.4, 5.4];
        for (m, w) in merged.iter().zip(want) {
            assert!((m - w).abs() < 1e-5, "{merged:?}");
        }
        // Disabled: the base projection.
        if let Some(l) = proj.lora.as_mut() {
            l.enabled = false;
        }
        let base = to_vec(proj.forward(x));
        assert!(
            (base[0] - 9.0).abs() < 1e-5 && (base[1] - 21.0).abs() < 1e-5,
            "{base:?}"
        );
    }

    /// `all-linear` adapts every projection of every block of each family (PEFT's shorthand,
    /// the output head left out), and the adapter directory names them one by one, as PEFT
    /// resolves the shorthand before it saves.
    #[test]
    fn all_linear_adapts_every_block_projection() {
        let d = Device::flex();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        let cfg = LoraConfig {
            target_modules: Some(vec![ALL_LINEAR.into()]),
            ..LoraConfig::default()
        };
        // Projections per block, and their distinct names (GPT-2's attention and MLP both have
        // a `c_proj`; BERT's three output layers are each a `dense`).
        for (name, per_layer, names) in [("gpt2", 4, 3), ("llama", 7, 7), ("bert", 6, 4)] {
            let model = crate::model::load_hf_dir(&dir.join(name), &d).unwrap();
            let mut base = model.model.backbone;
            let all = base.projections_mut().len();
            assert_eq!(all % per_layer, 0, "{name}: {all}");
            let (mut adapted, paths) = apply(base, &cfg, &d).unwrap();
            assert_eq!(paths.len(), all, "{name}: {paths:?}");
            assert!(paths.iter().all(|p| !p.contains("lm_head")), "{paths:?}");
            let out = tempfile::tempdir().unwrap();
            save_peft(&mut adapted, &cfg, "base", out.path()).unwrap();
            let config: serde_json::Value = serde_json::from_slice(
                &std::fs::read(out.path().join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            let targets = config["target_modules"].as_array().unwrap();
            assert_eq!(targets.len(), names, "{name}: {targets:?}");
            assert!(!targets.iter().any(|t| t == ALL_LINEAR), "{targets:?}");
        }
    }

    /// `all-linear` leaves a mixture's experts alone, as PEFT does; `target_parameters` that
    /// reach no expert, or come with dropout or DoRA (which PEFT's wrapper refuses), are
    /// refused with the reason.
    #[test]
    fn expert_targets_are_explicit_and_checked() {
        let d = Device::flex();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        let load = |name: &str| {
            crate::model::load_hf_dir(&dir.join(name), &d)
                .unwrap()
                .model
                .backbone
        };
        let all_linear = LoraConfig {
            target_modules: Some(vec![ALL_LINEAR.into()]),
            ..LoraConfig::default()
        };
        let (_, paths) = apply(load("qwen3_moe"), &all_linear, &d).unwrap();
        assert!(!paths.iter().any(|p| p.contains(".experts.")), "{paths:?}");
        assert_eq!(
            paths.len(),
            4 * 3 + 3,
            "attention in 3 layers, the dense MLP in 1"
        );

        let experts = |parameters: &[&str]| LoraConfig {
            target_parameters: Some(parameters.iter().map(|p| p.to_string()).collect()),
            ..LoraConfig::default()
        };
        let err =
            |model: &str, cfg: &LoraConfig| apply(load(model), cfg, &d).unwrap_err().to_string();
        let e = err("llama", &experts(&["mlp.experts.down_proj"]));
        assert!(e.contains("this model has no experts"), "{e}");
        let e = err("qwen3_moe", &experts(&["mlp.experts.up_proj"]));
        assert!(
            e.contains("this model has: mlp.experts.gate_up_proj, mlp.experts.down_proj"),
            "{e}"
        );
        let with_dropout = LoraConfig {
            dropout: 0.1,
            ..experts(&["mlp.experts.down_proj"])
        };
        assert!(err("qwen3_moe", &with_dropout).contains("take no dropout"));
        let with_dora = LoraConfig {
            use_dora: true,
            ..experts(&["mlp.experts.down_proj"])
        };
        assert!(err("qwen3_moe", &with_dora).contains("take no DoRA"));
    }

    #[test]
    fn scaling_and_init_follow_peft() {
        let plain = LoraConfig {
            r: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        };
        assert_eq!(plain.scaling(), 2.0);
        assert_eq!(
            LoraConfig {
                rslora: true,
                ..plain.clone()
            }
            .scaling(),
            4.0
        );
        let d = Device::flex();
        let adapter = LoraAdapter::new(3, 5, &plain, &d);
        let a = to_vec(adapter.a.val());
        let bound = 1.0 / 3f32.sqrt(); // 0.5773502692 in algorithms.md
        assert!(
            a.iter().all(|v| v.abs() <= bound),
            "kaiming-uniform bound 1/sqrt(in): {a:?}"
        );
        assert!(
            to_vec(adapter.b.val()).iter().all(|v| *v == 0.0),
            "B starts at zero"
        );
    }
}
