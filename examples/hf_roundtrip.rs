//! Writes models saved by hone for `scripts/check_hf_roundtrip.py`, which loads them with
//! transformers and PEFT and compares their logits with hone's:
//!
//!     cargo run --release --example hf_roundtrip -- /tmp/hone-roundtrip
//!
//! For each tiny fixture family (gpt2, llama): `saved/` (the model re-saved by hone),
//! `adapter/` (a PEFT LoRA adapter with non-zero B), `merged/` (the adapter folded in) and
//! `logits.json` (hone's logits for the fixture's input ids: base and adapted).

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use hone::model::{load_hf_dir, lora, save_hf_dir, to_vec};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/hone-roundtrip".into()),
    );
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let device = Device::flex();
    device.seed(3);
    for family in ["gpt2", "llama"] {
        let dir = out.join(family);
        let model = load_hf_dir(&fixtures.join(family), &device)?;
        let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            fixtures.join(family).join("reference.json"),
        )?)?;
        let rows: Vec<Vec<i64>> = serde_json::from_value(reference["input_ids"].clone())?;
        let ids = Tensor::<2, Int>::from_data(
            burn::tensor::TensorData::new(rows.concat(), [rows.len(), rows[0].len()]),
            &device,
        );
        let base = &model.model.backbone;
        let base_logits = to_vec(base.lm_logits(base.hidden(ids.clone(), None)).unwrap());
        save_hf_dir(&model.model, &model.config, None, None, &dir.join("saved"))?;

        let cfg = lora::LoraConfig {
            r: 2,
            alpha: 4.0,
            ..Default::default()
        };
        let (mut adapted, _) = lora::apply(model.model.backbone, &cfg, &device)?;
        // A trained adapter has non-zero B; make the check meaningful.
        for (_, proj) in adapted.projections_mut() {
            if let Some(l) = proj.lora.as_mut() {
                let dims = l.b.dims();
                l.b = Param::from_tensor(Tensor::random(
                    dims,
                    burn::tensor::Distribution::Normal(0.0, 0.3),
                    &device,
                ));
            }
        }
        let adapted_logits = to_vec(
            adapted
                .lm_logits(adapted.hidden(ids.clone(), None))
                .unwrap(),
        );
        lora::save_peft(
            &mut adapted,
            &cfg,
            &dir.join("saved").display().to_string(),
            &dir.join("adapter"),
        )?;
        let mut merged = adapted;
        lora::merge_and_unload(&mut merged);
        save_hf_dir(
            &hone::model::Model::new(merged),
            &model.config,
            None,
            None,
            &dir.join("merged"),
        )?;
        let logits = serde_json::json!({ "input_ids": rows, "base": base_logits, "adapted": adapted_logits });
        std::fs::write(dir.join("logits.json"), logits.to_string())?;
        println!(
            "{}: wrote saved/, adapter/, merged/, logits.json",
            dir.display()
        );
    }
    Ok(())
}
