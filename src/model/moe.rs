//! Mixture-of-experts MLPs (Qwen3-MoE's and gpt-oss's sparse blocks): a router scores every
//! expert for each token, the `top_k` best take the token, and the token's output is their
//! outputs weighted as the family's [`Router`] says: the router's probabilities (renormalised
//! over the chosen ones with `norm_topk_prob`; Qwen3-MoE), or a softmax over the chosen
//! logits alone (gpt-oss).
//!
//! Experts run on their own tokens only: the routing is read back once per layer, the tokens
//! are grouped by expert, each expert multiplies its group, and the weighted outputs are added
//! back at their tokens, in expert order as transformers adds them. No expert sees a token it
//! was not chosen for, so the cost is `top_k` MLPs per token whatever the number of experts.
//!
//! Each expert holds its gate and up projections fused, `[d, 2 * inner]`, as transformers 5
//! holds `gate_up_proj` (and as PEFT's `target_parameters` adapt it: one low-rank update per
//! expert over the fused output): the gate's outputs then the up projection's (Qwen3-MoE,
//! whose checkpoints store them apart per expert, `mlp.experts.<e>.gate_proj`), or the two
//! interleaved (gpt-oss, whose checkpoints store them fused, as here).

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{IndexingUpdateOp, TensorData};

use super::layers::Proj;
use super::precision::in_f32;

/// One expert: a gated MLP with its gate and up projections fused (with biases in gpt-oss).
#[derive(Module, Debug)]
pub struct Expert {
    /// `[d, 2 * inner]`: the gate's outputs and the up projection's, as [`Activation`] lays
    /// them out.
    pub gate_up_proj: Proj,
    pub down_proj: Proj,
}

/// How an expert gates: what its fused `gate_up_proj` holds and what it makes of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// The gate's outputs, then the up projection's; `silu(gate) * up` (Qwen3-MoE).
    SwiGlu,
    /// gpt-oss's: gate and up interleaved (gate at even columns); the gate clamped above at
    /// `limit` and the up projection to `[-limit, limit]`; then
    /// `(up + 1) * gate * sigmoid(alpha * gate)`.
    ClampedSwiGlu { alpha: f64, limit: f64 },
}

impl Expert {
    /// The expert's MLP on its tokens `[n, d]`.
    fn forward(&self, x: Tensor<2>, activation: Activation) -> Tensor<2> {
        let h = self.gate_up_proj.forward(x);
        let [n, width] = h.dims();
        let inner = width / 2;
        let gated = match activation {
            Activation::SwiGlu => {
                let gate = h.clone().narrow(1, 0, inner);
                let up = h.narrow(1, inner, inner);
                crate::kernels::silu_mul(gate, up)
            }
            Activation::ClampedSwiGlu { alpha, limit } => {
                let pairs = h.reshape([n, inner, 2]);
                let gate = pairs.clone().narrow(2, 0, 1).reshape([n, inner]);
                let up = pairs.narrow(2, 1, 1).reshape([n, inner]);
                let gate = gate.clamp_max(limit);
                let up = up.clamp(-limit, limit);
                let glu = gate.clone() * burn::tensor::activation::sigmoid(gate.mul_scalar(alpha));
                up.add_scalar(1.0) * glu
            }
        };
        self.down_proj.forward(gated)
    }
}

/// How a router's scores become the chosen experts and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Router {
    /// A softmax over every expert, then the `top_k` most probable, their probabilities
    /// renormalised to sum to 1 where `renormalise` (Qwen3-MoE's `norm_topk_prob`).
    SoftmaxThenTopK { renormalise: bool },
    /// The `top_k` largest logits, then a softmax over those alone (gpt-oss).
    TopKThenSoftmax,
}

/// A sparse MoE block: router and experts.
#[derive(Module, Debug)]
pub struct SparseMoe {
    /// The router, `[d, experts]` (HF `mlp.gate`, without bias; gpt-oss's `mlp.router`, with
    /// one). Not offered to LoRA: PEFT cannot adapt it either (it is no `nn.Linear` in
    /// transformers 5).
    pub gate: Proj,
    pub experts: Vec<Expert>,
    pub top_k: usize,
    #[module(skip)]
    pub router: Router,
    #[module(skip)]
    pub activation: Activation,
}

/// Which experts took which tokens in one forward: what the load-balancing loss counts.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The router's probabilities `[tokens, experts]` (f32, in the autodiff graph).
    pub probs: Tensor<2>,
    /// For each token, the experts chosen, best first.
    pub chosen: Vec<Vec<usize>>,
}

impl SparseMoe {
    pub fn experts(&self) -> usize {
        self.experts.len()
    }

    /// The block on `x` `[b, s, d]`. Where the router trains and [`with_routings`] listens,
    /// the routing is handed to it for the load-balancing loss.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (y, routing) = self.forward_routed(x);
        if self.gate.weight.is_require_grad() {
            ROUTINGS.with(|r| {
                if let Some(list) = r.borrow_mut().as_mut() {
                    list.push(routing);
                }
            });
        }
        y
    }

    /// The block on `x` `[b, s, d]`, with the routing it took.
    pub fn forward_routed(&self, x: Tensor<3>) -> (Tensor<3>, Routing) {
        let [b, s, d] = x.dims();
        let (n, e, k) = (b * s, self.experts(), self.top_k.min(self.experts()));
        let device = x.device();
        let flat = x.reshape([n, d]);
        let logits = in_f32(self.gate.forward(flat.clone()));
        let probs = burn::tensor::activation::softmax(logits.clone(), 1);
        // The chosen experts' scores, token by token in rank order: slot `t * k + j`.
        let chosen_of = |scores: &Tensor<2>| {
            let chosen = top_k_rows(&super::to_vec(scores.clone()), e, k);
            let slots: Vec<i64> = chosen
                .iter()
                .enumerate()
                .flat_map(|(t, experts)| experts.iter().map(move |&x| (t * e + x) as i64))
                .collect();
            let picked = scores
                .clone()
                .reshape([n * e])
                .select(0, ints(slots, &device));
            (chosen, picked)
        };
        let (chosen, weights) = match self.router {
            Router::SoftmaxThenTopK { renormalise } => {
                let (chosen, picked) = chosen_of(&probs);
                let weights = match renormalise {
                    true => {
                        let w = picked.reshape([n, k]);
                        (w.clone() / w.sum_dim(1)).reshape([n * k])
                    }
                    false => picked,
                };
                (chosen, weights)
            }
            Router::TopKThenSoftmax => {
                let (chosen, picked) = chosen_of(&logits);
                let weights = burn::tensor::activation::softmax(picked.reshape([n, k]), 1);
                (chosen, weights.reshape([n * k]))
            }
        };

        // Each expert's tokens, and where their weights sit among the slots.
        let mut tokens: Vec<Vec<i64>> = vec![Vec::new(); e];
        let mut slot_of: Vec<Vec<i64>> = vec![Vec::new(); e];
        for (t, experts) in chosen.iter().enumerate() {
            for (j, &x) in experts.iter().enumerate() {
                tokens[x].push(t as i64);
                slot_of[x].push((t * k + j) as i64);
            }
        }
        let (mut outputs, mut at) = (Vec::new(), Vec::new());
        for (x, expert) in self.experts.iter().enumerate() {
            if tokens[x].is_empty() {
                continue;
            }
            let rows = ints(std::mem::take(&mut tokens[x]), &device);
            let w = weights
                .clone()
                .select(0, ints(std::mem::take(&mut slot_of[x]), &device));
            let y = expert.forward(flat.clone().select(0, rows.clone()), self.activation);
            let w = w.cast(y.dtype());
            outputs.push(y * w.unsqueeze_dim(1));
            at.push(rows);
        }
        let dtype = outputs.first().map_or(flat.dtype(), |y| y.dtype());
        let out = Tensor::<2>::zeros([n, d], (&device, dtype)).select_assign(
            0,
            Tensor::cat(at, 0),
            Tensor::cat(outputs, 0),
            IndexingUpdateOp::Add,
        );
        (out.reshape([b, s, d]), Routing { probs, chosen })
    }

    /// The expert projections, named under the block's path `prefix` (`model.layers.0.mlp`):
    /// `<prefix>.experts.<e>.gate_up_proj` and `.down_proj`.
    pub fn projections_mut(&mut self, prefix: &str) -> Vec<(String, &mut Proj)> {
        self.experts
            .iter_mut()
            .enumerate()
            .flat_map(|(i, x)| {
                [
                    (
                        format!("{prefix}.experts.{i}.gate_up_proj"),
                        &mut x.gate_up_proj,
                    ),
                    (format!("{prefix}.experts.{i}.down_proj"), &mut x.down_proj),
                ]
            })
            .collect()
    }

    pub fn projections(&self, prefix: &str) -> Vec<(String, &Proj)> {
        self.experts
            .iter()
            .enumerate()
            .flat_map(|(i, x)| {
                [
                    (
                        format!("{prefix}.experts.{i}.gate_up_proj"),
                        &x.gate_up_proj,
                    ),
                    (format!("{prefix}.experts.{i}.down_proj"), &x.down_proj),
                ]
            })
            .collect()
    }
}

/// The path of an expert's projection (`model.layers.0.mlp.experts.3.down_proj`) as the fused
/// parameter PEFT's `target_parameters` names (`model.layers.0.mlp.experts.down_proj`), with
/// the expert's index; `None` for any other module.
pub fn expert_parameter(path: &str) -> Option<(String, usize)> {
    let (head, name) = path.rsplit_once('.')?;
    let (experts, index) = head.rsplit_once('.')?;
    let index: usize = index.parse().ok()?;
    (experts == "experts" || experts.ends_with(".experts"))
        .then(|| (format!("{experts}.{name}"), index))
}

thread_local! {
    /// The routings of the forward [`with_routings`] runs, while it runs.
    static ROUTINGS: std::cell::RefCell<Option<Vec<Routing>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `forward` and returns, beside its result, the routing of every sparse block whose
/// router trains, in the order they ran. A block run under gradient checkpointing runs with
/// its parameters untracked and reports nothing: its routing would carry no gradient.
pub fn with_routings<T>(forward: impl FnOnce() -> T) -> (T, Vec<Routing>) {
    let outer = ROUTINGS.with(|r| r.borrow_mut().replace(Vec::new()));
    let out = forward();
    let routings = ROUTINGS.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer));
    (out, routings.unwrap_or_default())
}

/// A parameter's name within its layer, as PEFT's `target_parameters` gives it:
/// `mlp.experts.down_proj` for `model.layers.3.mlp.experts.down_proj`.
pub fn within_layer(parameter: &str) -> &str {
    parameter.splitn(4, '.').nth(3).unwrap_or(parameter)
}

/// For each row of `probs` (`[rows, e]`, row-major), the `k` largest columns, best first; ties
/// go to the lower column, as `torch.topk` gives them on CPU.
pub fn top_k_rows(probs: &[f32], e: usize, k: usize) -> Vec<Vec<usize>> {
    probs
        .chunks(e)
        .map(|row| {
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order.truncate(k);
            order
        })
        .collect()
}

fn ints(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// Switch Transformer's load-balancing loss over the sparse layers' routings, as transformers'
/// `load_balancing_loss_func` computes it: `experts * sum_e f_e * P_e`, where `f_e` is the
/// share of (token, choice) assignments expert `e` took and `P_e` its mean router probability,
/// both over the real tokens (`real`, one flag per token, true at real tokens) of every layer.
/// Only `P_e` carries a gradient. `None` without routings or real tokens.
pub fn load_balancing_loss(routings: &[Routing], real: &[bool]) -> Option<Tensor<1>> {
    let first = routings.first()?;
    let e = first.probs.dims()[1];
    let device = first.probs.device();
    let mask: Vec<f32> = real.iter().map(|&r| if r { 1.0 } else { 0.0 }).collect();
    let rows = mask.iter().sum::<f32>() * routings.len() as f32;
    if rows == 0.0 {
        return None;
    }
    let mut counts = vec![0f32; e];
    let mut prob_sum: Option<Tensor<1>> = None;
    for r in routings {
        for (t, experts) in r.chosen.iter().enumerate() {
            for &x in experts {
                counts[x] += mask[t];
            }
        }
        let n = r.probs.dims()[0];
        let m = Tensor::<2>::from_data(TensorData::new(mask.clone(), [n, 1]), &device);
        let s = (r.probs.clone() * m).sum_dim(0).reshape([e]);
        prob_sum = Some(match prob_sum {
            Some(p) => p + s,
            None => s,
        });
    }
    let share = Tensor::<1>::from_data(
        TensorData::new(counts.iter().map(|c| c / rows).collect::<Vec<_>>(), [e]),
        &device,
    );
    let mean_prob = prob_sum? / rows as f64;
    Some((share * mean_prob).sum() * e as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_best_first_with_ties_to_the_lower_expert() {
        let probs = [0.1, 0.4, 0.4, 0.1, 0.7, 0.05, 0.2, 0.05];
        assert_eq!(top_k_rows(&probs, 4, 2), vec![vec![1, 2], vec![0, 2]]);
    }

    #[test]
    fn expert_paths_name_the_fused_parameter() {
        assert_eq!(
            expert_parameter("model.layers.2.mlp.experts.5.gate_up_proj"),
            Some(("model.layers.2.mlp.experts.gate_up_proj".into(), 5))
        );
        assert_eq!(expert_parameter("model.layers.2.mlp.down_proj"), None);
        assert_eq!(expert_parameter("model.layers.2.self_attn.q_proj"), None);
        assert_eq!(
            within_layer("model.layers.12.mlp.experts.down_proj"),
            "mlp.experts.down_proj"
        );
    }
}
