//! The fused kernels against burn's composed ops: values and gradients.

use burn::prelude::*;
use burn::tensor::activation::{gelu_approximate, log_softmax};
use burn::tensor::{DType, Distribution};

use super::{fused, gelu_tanh, linear_nll};

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("f32 values")
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: fused {g}, composed {w}"
        );
    }
}

#[test]
fn the_fused_path_is_taken_on_flex_f32_only() {
    let d = Device::flex();
    assert!(fused(&d, burn::tensor::DType::F32));
    assert!(fused(&d.clone().autodiff(), burn::tensor::DType::F32));
    assert!(!fused(&d, burn::tensor::DType::BF16));
}

#[test]
fn exp_and_tanh_match_libm() {
    let mut worst_exp = 0f32;
    for i in -87_000..88_000 {
        let x = i as f32 / 1000.0 + 0.000_37;
        let (got, want) = (super::flex::exp(x), x.exp());
        worst_exp = worst_exp.max(((got - want) / want).abs());
    }
    assert!(worst_exp < 4e-7, "exp relative error {worst_exp}");
    for i in -20_000..20_000 {
        let x = i as f32 / 1000.0;
        let (got, want) = (super::flex::tanh(x), x.tanh());
        assert!((got - want).abs() < 4e-7, "tanh({x}) = {got}, libm {want}");
    }
    assert_eq!(super::flex::exp(-1000.0), super::flex::exp(-87.3));
    assert!(super::flex::exp(1000.0).is_finite());
    assert_eq!(super::flex::tanh(100.0), 1.0);
    assert_eq!(super::flex::tanh(-100.0), -1.0);
}

#[test]
fn gelu_tanh_matches_burn_in_value_and_gradient() {
    let d = Device::flex().autodiff();
    d.seed(3);
    let x = Tensor::<2>::random([37, 129], Distribution::Normal(0.0, 3.0), &d);
    let up = Tensor::<2>::random([37, 129], Distribution::Normal(0.0, 1.0), &d);
    let run = |f: fn(Tensor<2>) -> Tensor<2>| {
        let x = x.clone().require_grad();
        let y = f(x.clone());
        let grads = (y.clone() * up.clone()).sum().backward();
        (to_vec(y.inner()), to_vec(x.grad(&grads).expect("grad")))
    };
    let (y, dx) = run(gelu_tanh::<2>);
    let (y_ref, dx_ref) = run(gelu_approximate::<2>);
    assert_close(&y, &y_ref, 1e-6, "gelu");
    assert_close(&dx, &dx_ref, 1e-5, "d gelu");
}

/// The composed reference: whole logits, log-softmax, gather.
fn composed_nll(h: Tensor<2>, w: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let n = labels.dims()[0];
    log_softmax(h.matmul(w), 1)
        .gather(1, labels.reshape([n, 1]))
        .reshape([n])
        .neg()
}

#[test]
fn linear_nll_matches_the_composed_loss_in_value_and_gradients() {
    linear_nll_matches_the_composed_loss_on(Device::flex(), 1e-5);
}

/// On wgpu (the chunked loss in burn's tensor ops, as CUDA runs it), through software Vulkan
/// in CI.
#[cfg(feature = "wgpu")]
#[test]
fn linear_nll_matches_the_composed_loss_on_wgpu() {
    let gpu = crate::backend::device(crate::backend::BackendKind::Wgpu).unwrap();
    linear_nll_matches_the_composed_loss_on(gpu, 1e-4);
}

fn linear_nll_matches_the_composed_loss_on(device: Device, tol: f32) {
    let d = device.autodiff();
    d.seed(5);
    let (n, dim, v) = (45, 24, 301);
    let h = Tensor::<2>::random([n, dim], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<2>::random([v, dim], Distribution::Normal(0.0, 0.5), &d);
    let labels = Tensor::<1, Int>::from_data(
        burn::tensor::TensorData::new((0..n as i64).map(|i| (i * 37) % v as i64).collect(), [n]),
        &d,
    );
    // Per-row weights, as masked losses give: zero rows must get zero gradients.
    let g = Tensor::<1>::from_data(
        burn::tensor::TensorData::new(
            (0..n)
                .map(|i| {
                    if i % 4 == 0 {
                        0.0f32
                    } else {
                        1.0 + i as f32 / 10.0
                    }
                })
                .collect(),
            [n],
        ),
        &d,
    );
    // The weight enters transposed (a tied embedding [v, d]), as the LM head uses it; stored
    // in `dtype` (a frozen head in `train.precision`), the reference computes from its values
    // in f32, as the chunked loss does.
    let run = |how: Path, dtype: DType| {
        let h = h.clone().require_grad();
        let w = w.clone().cast(dtype).require_grad();
        let w_t = w.clone().transpose();
        let nll = match how {
            Path::Tiled(rows, cols) => {
                Tensor::from_dispatch(<burn::backend::Dispatch as super::PortableOps>::linear_nll(
                    h.clone().into_dispatch(),
                    w_t.into_dispatch(),
                    labels.clone().into_dispatch(),
                    rows,
                    cols,
                ))
            }
            Path::Public => linear_nll(h.clone(), w_t, labels.clone()),
            Path::Composed => composed_nll(h.clone(), w_t.cast(DType::F32), labels.clone()),
        };
        let grads = (nll.clone() * g.clone()).sum().backward();
        (
            to_vec(nll.inner()),
            to_vec(h.grad(&grads).expect("d hidden")),
            to_vec(w.grad(&grads).expect("d weight")),
        )
    };
    let low = [DType::BF16, DType::F16]
        .into_iter()
        .filter(|dt| d.supports_dtype(*dt));
    for dtype in std::iter::once(DType::F32).chain(low) {
        let (nll_ref, dh_ref, dw_ref) = run(Path::Composed, dtype);
        // A low-precision gradient is rounded to its dtype from slightly different f32 sums.
        let dw_tol = if dtype == DType::F32 { tol } else { 1e-2 };
        // Whole (one chunk), through the public entry point; in uneven chunks of 7 whole
        // rows; in tiles of 7 rows by 50 columns (whole rows one at a time for the f32 CPU
        // kernel); a row at a time in blocks of 128 columns.
        for (what, how) in [
            ("public", Path::Public),
            ("chunks of 7 rows", Path::Tiled(7, v)),
            ("tiles of 7 x 50", Path::Tiled(7, 50)),
            ("one row x 128", Path::Tiled(1, 128)),
        ] {
            let what = format!("{what}, weight in {dtype:?}");
            let (nll, dh, dw) = run(how, dtype);
            assert_close(&nll, &nll_ref, tol, &format!("nll, {what}"));
            assert_close(&dh, &dh_ref, tol, &format!("d hidden, {what}"));
            assert_close(&dw, &dw_ref, dw_tol, &format!("d weight, {what}"));
        }
    }
}

/// How a test computes the loss: the public entry point, the op with a given tiling, or
/// burn's composed ops.
#[derive(Clone, Copy)]
enum Path {
    Public,
    Tiled(usize, usize),
    Composed,
}

#[test]
fn linear_nll_without_autodiff_and_with_a_frozen_weight() {
    linear_nll_without_autodiff_and_with_a_frozen_weight_on(Device::flex(), 1e-5);
}

#[cfg(feature = "wgpu")]
#[test]
fn linear_nll_without_autodiff_and_with_a_frozen_weight_on_wgpu() {
    let gpu = crate::backend::device(crate::backend::BackendKind::Wgpu).unwrap();
    linear_nll_without_autodiff_and_with_a_frozen_weight_on(gpu, 1e-4);
}

fn linear_nll_without_autodiff_and_with_a_frozen_weight_on(d: Device, tol: f32) {
    d.seed(9);
    let h = Tensor::<2>::random([10, 8], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<2>::random([8, 50], Distribution::Normal(0.0, 1.0), &d);
    let labels = Tensor::<1, Int>::from_data([1, 2, 3, 4, 5, 6, 7, 8, 9, 49], &d);
    let nll = to_vec(linear_nll(h.clone(), w.clone(), labels.clone()));
    let want = to_vec(composed_nll(h.clone(), w.clone(), labels.clone()));
    assert_close(&nll, &want, tol, "nll on a plain device");

    // A frozen head (LoRA): only the hidden states get a gradient.
    let da = d.autodiff();
    let h = Tensor::<2>::from_data(h.into_data(), &da).require_grad();
    let w = Tensor::<2>::from_data(w.into_data(), &da);
    let labels = Tensor::<1, Int>::from_data(labels.into_data(), &da);
    let grads = linear_nll(h.clone(), w.clone(), labels.clone())
        .sum()
        .backward();
    let grads_ref = composed_nll(h.clone(), w.clone(), labels).sum().backward();
    assert_close(
        &to_vec(h.grad(&grads).expect("d hidden")),
        &to_vec(h.grad(&grads_ref).expect("d hidden")),
        tol,
        "d hidden, frozen head",
    );
    assert!(w.grad(&grads).is_none());
}

/// A frozen bf16 head (a tied embedding under `train.precision: bf16`), tied (`[v, d]` seen
/// transposed) or not (`[d, v]`): the loss and the hidden states' gradient are those of the
/// f32 head within bf16 rounding, over several blocks of columns; on a CPU with AMX they are
/// exactly f32 sums of the bf16-rounded products (the hidden states and logit gradients
/// rounded as autocast does).
#[test]
fn a_frozen_bf16_head_matches_its_f32_values_within_bf16_rounding() {
    let d = Device::flex().autodiff();
    d.seed(21);
    let (n, dim, v) = (50, 64, 20_000);
    let h = Tensor::<2>::random([n, dim], Distribution::Normal(0.0, 1.0), &d);
    let table = Tensor::<2>::random([v, dim], Distribution::Normal(0.0, 0.2), &d);
    let labels = Tensor::<1, Int>::from_data(
        burn::tensor::TensorData::new((0..n as i64).map(|i| (i * 389) % v as i64).collect(), [n]),
        &d,
    );
    for (what, head) in [
        ("tied", table.clone().cast(DType::BF16).transpose()),
        ("[d, v]", table.transpose().cast(DType::BF16)),
    ] {
        let h = h.clone().require_grad();
        let nll = linear_nll(h.clone(), head.clone(), labels.clone());
        let grads = nll.clone().sum().backward();
        let dh = to_vec(h.grad(&grads).expect("d hidden"));
        let hr = h
            .clone()
            .cast(DType::BF16)
            .cast(DType::F32)
            .detach()
            .require_grad();
        let want = composed_nll(hr.clone(), head.cast(DType::F32), labels.clone());
        let grads_ref = want.clone().sum().backward();
        let tol = 2e-3;
        assert_close(
            &to_vec(nll.inner()),
            &to_vec(want.inner()),
            tol,
            &format!("nll, {what}"),
        );
        let dh_ref = to_vec(hr.grad(&grads_ref).expect("d hidden"));
        assert_close(&dh, &dh_ref, tol, &format!("d hidden, {what}"));
    }
}

#[test]
fn row_reductions_match_a_plain_fold() {
    // Lengths around the lane count, including a tail; the maximum in the tail and in a lane.
    for n in [1usize, 5, 16, 17, 40, 333] {
        let row: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 97) as f32 / 9.0 - 5.0)
            .collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(super::flex::row_max(&row), max, "max of {n}");
        let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
        let got = super::flex::row_sum_exp(&row, max) as f64;
        assert!((got - sum).abs() < 1e-6 * sum, "sum of {n}: {got} vs {sum}");
    }
}

#[test]
fn silu_mul_and_rms_norm_match_burn_in_value_and_gradients() {
    use burn::tensor::activation::silu;
    let d = Device::flex().autodiff();
    d.seed(11);
    let a = Tensor::<3>::random([3, 7, 40], Distribution::Normal(0.0, 2.0), &d);
    let b = Tensor::<3>::random([3, 7, 40], Distribution::Normal(0.0, 1.0), &d);
    let up = Tensor::<3>::random([3, 7, 40], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<1>::random([40], Distribution::Normal(1.0, 0.3), &d);
    #[allow(clippy::type_complexity)]
    let run = |f: &dyn Fn(Tensor<3>, Tensor<3>, Tensor<1>) -> Tensor<3>| {
        let (a, b, w) = (
            a.clone().require_grad(),
            b.clone().require_grad(),
            w.clone().require_grad(),
        );
        let y = f(a.clone(), b.clone(), w.clone());
        let grads = (y.clone() * up.clone()).sum().backward();
        let g = |t: &Tensor<3>| t.grad(&grads).map(to_vec).unwrap_or_default();
        (to_vec(y.inner()), g(&a), g(&b), w.grad(&grads).map(to_vec))
    };
    let (y, da, db, _) = run(&|a, b, _| super::silu_mul(a, b));
    let (y_ref, da_ref, db_ref, _) = run(&|a, b, _| silu(a) * b);
    assert_close(&y, &y_ref, 1e-6, "silu_mul");
    assert_close(&da, &da_ref, 1e-5, "d gate");
    assert_close(&db, &db_ref, 1e-5, "d up");

    let eps = 1e-6;
    let (y, da, _, dw) = run(&|a, _, w| super::rms_norm(a, w, eps));
    let (y_ref, da_ref, _, dw_ref) = run(&|a, _, w| {
        let rms = a.clone().square().mean_dim(2).add_scalar(eps).sqrt();
        a.div(rms).mul(w.unsqueeze())
    });
    assert_close(&y, &y_ref, 1e-5, "rms_norm");
    assert_close(&da, &da_ref, 1e-5, "d x");
    assert_close(
        &dw.expect("d weight"),
        &dw_ref.expect("d weight"),
        1e-4,
        "d weight",
    );
}

#[test]
fn backward_passes_give_the_same_bits_on_any_number_of_threads() {
    use burn::backend::flex::FlexTensor;
    let d = Device::flex();
    d.seed(13);
    let x = FlexTensor::from_data(
        Tensor::<2>::random([301, 48], Distribution::Normal(0.0, 1.0), &d).into_data(),
    );
    let w = FlexTensor::from_data(
        Tensor::<1>::random([48], Distribution::Normal(1.0, 0.2), &d).into_data(),
    );
    let g = FlexTensor::from_data(
        Tensor::<2>::random([301, 48], Distribution::Normal(0.0, 1.0), &d).into_data(),
    );
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            let (_, inv) = super::rms_norm::forward(&x, &w, 1e-6);
            let (dx, dw) = super::rms_norm::backward(&x, &w, &inv, &g);
            (dx.into_data(), dw.into_data())
        })
    };
    let one = on(1);
    for threads in [2, 3, 7] {
        assert_eq!(on(threads), one, "rms_norm backward on {threads} threads");
    }
}

#[test]
fn linear_nll_of_no_rows_is_empty_with_zero_gradients() {
    let d = Device::flex().autodiff();
    let h = Tensor::<2>::zeros([0, 4], &d).require_grad();
    let w = Tensor::<2>::ones([4, 9], &d).require_grad();
    let labels = Tensor::<1, Int>::zeros([0], &d);
    let nll = linear_nll(h.clone(), w.clone(), labels);
    assert_eq!(nll.dims(), [0]);
    let grads = nll.sum().backward();
    assert_eq!(h.grad(&grads).map(|g| g.dims()), Some([0, 4]));
    assert!(
        to_vec(w.grad(&grads).expect("d weight"))
            .iter()
            .all(|&x| x == 0.0)
    );
}

/// The LM head taken at a batch's target rows alone gives those rows' losses and every
/// parameter's gradient bit for bit as the head over every position does (with the other
/// positions masked out, as the losses mask them), at two temperatures. With LoRA the head is
/// frozen and taken at the rows alone, tied (Llama) or not (Gemma 3); in full fine-tuning and
/// behind a soft cap (Gemma 2's) the whole grid is, as before. The vocabulary is wider than
/// 64 and the batch has several target rows: gemm then blocks the hidden size the same way
/// whatever the number of rows (narrower products and single rows take other kernels).
#[test]
fn the_head_at_target_rows_gives_the_whole_grids_bits() {
    use crate::model::{Backbone, gemma3, llama, lora};
    use crate::train::objectives::LmBatch;
    use burn::module::Module;
    let d = Device::flex().autodiff();
    d.seed(3);
    let llama: llama::LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 300, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "tie_word_embeddings": true,
    }))
    .unwrap();
    let gemma: gemma3::Gemma3Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 300, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "query_pre_attn_scalar": 16, "sliding_window": 4, "sliding_window_pattern": 2,
        "tie_word_embeddings": false,
    }))
    .unwrap();
    let mut capped = gemma.clone();
    capped.final_logit_softcapping = Some(30.0);
    // Prompts of 3-6 tokens and answers of 1-5, right-padded to a common length.
    let lengths = [(3, 5), (6, 1), (4, 3), (5, 4)];
    let seqs: Vec<Vec<u32>> = lengths
        .iter()
        .enumerate()
        .map(|(i, (p, a))| {
            (0..p + a)
                .map(|j| ((i * 37 + j * 11) % 300) as u32)
                .collect()
        })
        .collect();
    let flags: Vec<Vec<bool>> = lengths
        .iter()
        .map(|&(p, a)| [vec![false; p], vec![true; a]].concat())
        .collect();
    let batch = LmBatch::with_targets(&seqs, &flags, &d);
    assert_eq!(batch.target_rows.len(), 13);
    let [b, s] = batch.ids.dims();
    let models = [
        ("llama", Backbone::Llama(llama::Llama::init(&llama, &d))),
        (
            "gemma3",
            Backbone::Gemma3(gemma3::Gemma3::init(&gemma, &d).unwrap()),
        ),
        (
            "gemma3 capped",
            Backbone::Gemma3(gemma3::Gemma3::init(&capped, &d).unwrap()),
        ),
    ];
    let lora_cfg = lora::LoraConfig {
        r: 4,
        ..Default::default()
    };
    for (family, base) in models {
        let (adapted, _) = lora::apply(base.clone(), &lora_cfg, &d).unwrap();
        // LoRA's B starts at zero: move it, so the adapters' gradients are not all zero.
        let adapted = adapted.map(&mut Nudge);
        for (how, model) in [("full", base), ("lora", adapted)] {
            let alone = how == "lora" && family != "gemma3 capped";
            let lm = model.language_model().unwrap();
            assert_eq!(lm.head_at_rows_alone(), alone, "{family} {how}");
            for temperature in [1.0, 0.7] {
                let what = format!("{family} {how} at {temperature}");
                let run = |at_targets: bool| {
                    let hidden = lm.hidden(batch.ids.clone(), Some(batch.padding.clone()));
                    let nll = if at_targets {
                        lm.next_token_nll_at(
                            hidden,
                            batch.ids.clone(),
                            temperature,
                            &batch.target_rows,
                        )
                    } else {
                        lm.next_token_nll(hidden, batch.ids.clone(), temperature)
                    };
                    let masked = nll * batch.target_mask.clone().narrow(1, 1, s - 1);
                    let grads = burn::optim::GradientsParams::from_grads(
                        masked.clone().sum().backward(),
                        &model,
                    );
                    let mut visitor = ParamGrads(&grads, Vec::new());
                    model.visit(&mut visitor);
                    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                    (
                        bits(to_vec(masked.inner())),
                        visitor.1.into_iter().map(bits).collect::<Vec<_>>(),
                    )
                };
                let (want, want_grads) = run(false);
                let (got, got_grads) = run(true);
                assert_eq!(got.len(), b * (s - 1), "{what}");
                assert_eq!(got, want, "{what}: losses");
                assert!(want_grads.len() > 4, "{what}: parameters have gradients");
                assert_eq!(got_grads, want_grads, "{what}: gradients");
            }
        }
    }
}

/// Adds 0.01 to every float parameter.
struct Nudge;

impl burn::module::ModuleMapper for Nudge {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        let trains = param.is_require_grad();
        let value = param.val();
        let shape = value.shape();
        let moved: Vec<f32> = to_vec(value.clone()).iter().map(|x| x + 0.01).collect();
        let moved =
            Tensor::<D>::from_data(burn::tensor::TensorData::new(moved, shape), &value.device());
        burn::module::Param::initialized(param.id, moved).set_require_grad(trains)
    }
}

/// Every float parameter's gradient, in visiting order.
struct ParamGrads<'a>(&'a burn::optim::GradientsParams, Vec<Vec<f32>>);

impl burn::module::ModuleVisitor for ParamGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        if let Some(g) = self.0.get::<D>(param.id) {
            self.1.push(to_vec(g));
        }
    }
}

/// Tiny random models of each family, for the recomputation and decoding tests.
pub(crate) fn tiny_backbones(d: &Device) -> Vec<(&'static str, crate::model::Backbone)> {
    use crate::model::{Backbone, bert, gemma3, gpt2, llama};
    let llama: llama::LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 40, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    }))
    .unwrap();
    let gpt2: gpt2::Gpt2Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 40, "n_positions": 16, "n_embd": 32, "n_layer": 2, "n_head": 4,
    }))
    .unwrap();
    let gemma: gemma3::Gemma3Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 40, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "query_pre_attn_scalar": 16, "sliding_window": 4, "sliding_window_pattern": 2,
    }))
    .unwrap();
    let bert: bert::BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 48,
    }))
    .unwrap();
    vec![
        ("llama", Backbone::Llama(llama::Llama::init(&llama, d))),
        ("gpt2", Backbone::Gpt2(gpt2::Gpt2::init(&gpt2, d))),
        (
            "gemma3",
            Backbone::Gemma3(gemma3::Gemma3::init(&gemma, d).unwrap()),
        ),
        ("bert", Backbone::Bert(bert::Bert::init(&bert, d))),
    ]
}

/// What the per-family model tests feed [`tiny_backbones`]: an autodiff device, two rows of
/// ids (the second padded), weights that turn the hidden states into a loss, and LoRA r 4.
#[allow(clippy::type_complexity)]
fn tiny_inputs() -> (
    Device,
    Tensor<2, Int>,
    Tensor<2, Bool>,
    Tensor<3>,
    crate::model::lora::LoraConfig,
) {
    tiny_inputs_on(Device::flex())
}

/// [`tiny_inputs`] on `device`.
#[allow(clippy::type_complexity)]
fn tiny_inputs_on(
    device: Device,
) -> (
    Device,
    Tensor<2, Int>,
    Tensor<2, Bool>,
    Tensor<3>,
    crate::model::lora::LoraConfig,
) {
    let d = device.autodiff();
    d.seed(11);
    let ids = Tensor::<2, Int>::from_data([[1, 5, 7, 9, 2, 3], [4, 4, 8, 1, 0, 0]], &d);
    let padding =
        Tensor::<2, Bool>::from_data([[true; 6], [true, true, true, true, false, false]], &d);
    let weights = Tensor::<3>::random([2, 6, 32], Distribution::Normal(0.0, 1.0), &d);
    let lora_cfg = crate::model::lora::LoraConfig {
        r: 4,
        ..Default::default()
    };
    (d, ids, padding, weights, lora_cfg)
}

#[test]
fn checkpointed_layers_give_the_gradients_of_kept_ones() {
    let families = ["llama", "gpt2", "gemma3", "bert"];
    checkpointed_layers_give_the_gradients_of_kept_ones_on(Device::flex(), &families, 0.0, 1e-5);
}

/// On wgpu (as on CUDA), through software Vulkan in CI.
#[cfg(feature = "wgpu")]
#[test]
fn checkpointed_layers_give_the_gradients_of_kept_ones_on_wgpu() {
    let gpu = crate::backend::device(crate::backend::BackendKind::Wgpu).unwrap();
    // Two families keep software Vulkan's time down (the op does not depend on the family):
    // a decoder whose LoRA leaves the first layer's input without a gradient, and an encoder.
    checkpointed_layers_give_the_gradients_of_kept_ones_on(gpu, &["llama", "bert"], 1e-5, 1e-4);
}

/// Hidden states within `hidden_tol` and every parameter's gradient within `grad_tol`.
fn checkpointed_layers_give_the_gradients_of_kept_ones_on(
    device: Device,
    families: &[&str],
    hidden_tol: f32,
    grad_tol: f32,
) {
    use crate::model::{GradientCheckpointing, lora};
    use burn::module::Module;
    let (d, ids, padding, weights, lora_cfg) = tiny_inputs_on(device);
    for (family, base) in tiny_backbones(&d) {
        if !families.contains(&family) {
            continue;
        }
        let (adapted, _) = lora::apply(base.clone(), &lora_cfg, &d).unwrap();
        // Full fine-tuning (the embedding is trained: the first layer's input needs a
        // gradient) and LoRA (it does not: only the adapters in the layers do).
        for (how, model) in [("full", base), ("lora", adapted)] {
            let what = format!("{family} {how}");
            let run = |checkpoint: bool| {
                let mut m = model.clone();
                m.set_gradient_checkpointing(checkpoint);
                let hidden = m.hidden(ids.clone(), Some(padding.clone()));
                let loss = (hidden.clone() * weights.clone()).sum();
                let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &m);
                let mut visitor = ParamGrads(&grads, Vec::new());
                m.visit(&mut visitor);
                (to_vec(hidden.inner()), visitor.1)
            };
            let (kept_out, kept) = run(false);
            let before = super::recompute::RECOMPUTED.with(|n| n.get());
            let (recomputed_out, recomputed) = run(true);
            let after = super::recompute::RECOMPUTED.with(|n| n.get());
            assert!(after - before >= 2, "{what}: the layers were recomputed");
            assert_close(
                &recomputed_out,
                &kept_out,
                hidden_tol,
                &format!("{what}: hidden"),
            );
            assert!(kept.len() > 2, "{what}: parameters have gradients");
            assert_eq!(
                kept.len(),
                recomputed.len(),
                "{what}: every gradient arrives"
            );
            for (i, (r, k)) in recomputed.iter().zip(&kept).enumerate() {
                assert_close(r, k, grad_tol, &format!("{what}: gradient {i}"));
            }
        }
    }
}

#[test]
fn reduced_precision_stores_a_frozen_base_low_and_computes_close_to_f32() {
    use crate::model::lora;
    use crate::model::precision::{Precision, ReducedPrecision};
    use burn::module::Module;
    use burn::tensor::DType;
    let (d, ids, padding, weights, lora_cfg) = tiny_inputs();
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b)).max(1e-30)
    };
    for (family, base) in tiny_backbones(&d) {
        let (adapted, _) = lora::apply(base.clone(), &lora_cfg, &d).unwrap();
        for (how, model) in [("full", base), ("lora", adapted)] {
            for precision in [Precision::Bf16, Precision::F16] {
                let what = format!("{family} {how} {}", precision.name());
                let run = |p: Precision| {
                    let mut m = model.clone();
                    m.set_precision(p);
                    let dtypes: Vec<(DType, Option<DType>)> = m
                        .projections_mut()
                        .into_iter()
                        .map(|(_, proj)| {
                            (
                                proj.weight.val().dtype(),
                                proj.lora.as_ref().map(|l| l.a.val().dtype()),
                            )
                        })
                        .collect();
                    let table = m.token_table().val().dtype();
                    let hidden = m.hidden(ids.clone(), Some(padding.clone()));
                    // Decoders add the next-token loss through their (tied) head.
                    let lm = m
                        .language_model()
                        .map(|lm| lm.next_token_nll(hidden.clone(), ids.clone(), 1.0));
                    let loss = (hidden.clone() * weights.clone()).sum()
                        + lm.map_or_else(|| Tensor::zeros([1], &d), |nll| nll.sum());
                    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &m);
                    let mut visitor = ParamGrads(&grads, Vec::new());
                    m.visit(&mut visitor);
                    (dtypes, table, to_vec(hidden.inner()), visitor.1)
                };
                let (_, _, want, want_grads) = run(Precision::F32);
                let (dtypes, table, got, got_grads) = run(precision);
                // A frozen base (its projections and token table) is stored low, adapters and
                // trainable weights stay f32.
                let stored = if how == "lora" {
                    precision.dtype()
                } else {
                    DType::F32
                };
                assert_eq!(table, stored, "{what}: token embedding table");
                for (weight, adapter) in dtypes {
                    assert_eq!(weight, stored, "{what}: projection weight");
                    assert!(adapter.is_none_or(|a| a == DType::F32), "{what}: adapter");
                }
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
                assert!(err > 0.0, "{what}: computed in f32 after all");
                assert!(
                    err < 0.05 * scale,
                    "{what}: hidden off by {err} (scale {scale})"
                );
                assert_eq!(got_grads.len(), want_grads.len(), "{what}: gradients");
                let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let largest = want_grads.iter().map(|v| norm(v)).fold(0f32, f32::max);
                for (i, (g, w)) in got_grads.iter().zip(&want_grads).enumerate() {
                    if norm(w) < 1e-6 * largest {
                        // Zero in exact arithmetic: LoRA's A while B is zero, attention's key
                        // bias (softmax ignores a constant per query). Rounding noise only.
                        assert!(norm(g) < 1e-3 * largest, "{what}: gradient {i}");
                        continue;
                    }
                    let c = cosine(g, w);
                    assert!(c > 0.99, "{what}: gradient {i} at cosine {c}");
                }
            }
        }
    }
}
