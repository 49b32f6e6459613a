//! QLoRA's frozen base: block projections held quantised from the moment they are loaded. A
//! GGUF base keeps its own blocks (with llama.cpp's q/k row order undone) and computes what the
//! dense load computes; an HF base quantised while loading equals the same base quantised after
//! loading; and a `qlora` stage trains adapters on it.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use hone::model::quantized::QuantFormat;
use hone::model::{Backbone, Frozen, load_keeping, to_vec};

use crate::common::{Project, car_lm_stages, car_sft_stage, metric};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn nf4() -> Frozen {
    Frozen {
        quantize: Some(QuantFormat::Nf4),
        ..Frozen::default()
    }
}

fn logits(model: &Backbone, ids: &[i64], device: &Device) -> Vec<f32> {
    let ids = Tensor::<2, Int>::from_data(
        burn::tensor::TensorData::new(ids.to_vec(), [1, ids.len()]),
        device,
    );
    to_vec(model.lm_logits(model.hidden(ids, None)).unwrap())
}

fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Every block projection of `model` is held quantised, in one of `formats`; returns the bytes
/// they hold and what they would hold as f32.
fn quantised_projections(model: &mut Backbone, formats: &[&str]) -> (usize, usize) {
    let (mut held, mut dense) = (0, 0);
    for (path, proj) in model.projections_mut() {
        let q = proj
            .quantized
            .as_ref()
            .unwrap_or_else(|| panic!("{path} is not quantised"));
        assert!(
            formats.contains(&q.format().as_str()),
            "{path}: {}",
            q.format()
        );
        assert_eq!(
            proj.weight.val().dims(),
            [0, 0],
            "{path}: a dense copy kept"
        );
        held += q.bytes();
        dense += 4 * q.d_in * q.d_out;
    }
    (held, dense)
}

/// SmolLM2 (Q4_1, `llama` architecture: q/k rows permuted in the file) and Gemma 3 (Q4_K_M:
/// Q4_K, Q5_0, Q6_K and Q8_0 blocks) loaded for QLoRA keep the file's blocks, whatever `quant`
/// says, and give the logits of the dense load.
#[test]
fn a_gguf_base_keeps_its_blocks_and_computes_as_the_dense_load() {
    let device = Device::flex();
    for (file, formats) in [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", &["Q4_1"][..]),
        (
            "gemma-3-270m-q4_k_m.gguf",
            &["Q4_K", "Q5_0", "Q6_K", "Q8_0"][..],
        ),
    ] {
        let path = root().join("models").join(file);
        assert!(path.is_file(), "run scripts/fetch_models.sh");
        let dense = hone::model::load(&path, &device).unwrap().model.backbone;
        let mut kept = load_keeping(&path, &device, &nf4()).unwrap().model.backbone;
        let (held, as_f32) = quantised_projections(&mut kept, formats);
        assert!(
            held * 5 < as_f32,
            "{file}: {held} bytes held, {as_f32} as f32"
        );
        let ids = [1, 504, 3458, 314, 253, 1789, 30, 2];
        let err = relative_error(
            &logits(&kept, &ids, &device),
            &logits(&dense, &ids, &device),
        );
        assert!(err < 1e-4, "{file}: logits differ by {err:e} (relative)");
    }
}

/// An HF base quantised while it loads equals the same base loaded whole and quantised after
/// (the path a GPT-2 base takes), stays near the f32 model, and a ggml format that does not
/// fit the rows says so and what to use instead.
#[test]
fn an_hf_base_quantised_while_loading_equals_one_quantised_after() {
    let device = Device::flex();
    let dir = root().join("tests/fixtures/models/llama");
    let dense = hone::model::load(&dir, &device).unwrap().model.backbone;
    let mut on_load = load_keeping(&dir, &device, &nf4()).unwrap().model.backbone;
    quantised_projections(&mut on_load, &["nf4"]);
    let mut after = hone::model::load(&dir, &device).unwrap().model.backbone;
    for (_, proj) in after.projections_mut() {
        proj.quantize(QuantFormat::Nf4).unwrap();
    }
    let ids = [5, 17, 42, 8, 99, 3, 21, 64];
    let want = logits(&dense, &ids, &device);
    let got = logits(&on_load, &ids, &device);
    assert_eq!(got, logits(&after, &ids, &device));
    let nf4_err = relative_error(&got, &want);
    // Q8_0 (blocks of 32, the rows here) stays closer to the f32 model than NF4 (these random
    // weights are large, so a two-layer model amplifies either's rounding).
    let q8 = Frozen {
        quantize: Some(QuantFormat::Q8_0),
        ..Frozen::default()
    };
    let q8 = load_keeping(&dir, &device, &q8).unwrap().model.backbone;
    let err = relative_error(&logits(&q8, &ids, &device), &want);
    assert!(
        0.0 < err && err < 0.1 && err < nf4_err,
        "against f32: Q8_0 {err:e}, NF4 {nf4_err:e} (relative)"
    );

    let q4k = Frozen {
        quantize: Some(QuantFormat::Q4K),
        ..Frozen::default()
    };
    let Err(err) = load_keeping(&dir, &device, &q4k) else {
        panic!("q4_k took rows of 32 values");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("self_attn.q_proj.weight") && msg.contains("use `quant: nf4`"),
        "{msg}"
    );
}

/// A `qlora` SFT stage on a tiny GPT-2 learns as the same LoRA stage on the f32 base does,
/// says how it trained, and writes an adapter.
#[test]
fn a_qlora_stage_trains_its_adapters() {
    let targets = "r: 16, alpha: 32, target_modules: [c_attn, c_proj, c_fc]";
    let recipe = format!(
        "version: 1\nname: qlora\nseed: 5\nstages:\n{}{}{}",
        car_lm_stages().replace("epochs: 30", "epochs: 10"),
        car_sft_stage(
            "sft",
            20,
            ", warmup_steps: 10",
            &format!("    peft: {{ method: qlora, quant: q8_0, {targets} }}\n"),
        ),
        car_sft_stage(
            "sft_lora",
            20,
            ", warmup_steps: 10",
            &format!("    peft: {{ method: lora, {targets} }}\n"),
        ),
    );
    let p = Project::new();
    p.write("r.yaml", &recipe);
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "sft"]).ok();
    assert!(show.contains("method   QLoRA (q8_0)"), "{show}");
    let (first, last) = (
        metric(&show, "train_loss_first"),
        metric(&show, "train_loss_last"),
    );
    let lora = p.hone(&["show", "r.yaml", "sft_lora"]).ok();
    let lora_last = metric(&lora, "train_loss_last");
    assert!(last < first - 0.5, "loss {first} -> {last}:\n{show}");
    assert!(
        (last - lora_last).abs() < 0.1 * lora_last,
        "QLoRA {last}, LoRA {lora_last}"
    );
    assert!(show.contains("output   adapter"), "{show}");
}
