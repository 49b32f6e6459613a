//! The `export` stage's HF form beyond a copy: weights written back in the dtype the model came
//! in (hone trains and stores in f32), in shards with an index above `max_shard_size`.

use burn::prelude::*;
use hone::model::{load_hf_dir, save_hf_dir, to_vec};

use crate::common::Project;

/// A bf16 checkpoint, saved by hone in f32 (as every trained model is), exports as bf16 again,
/// in shards of at most 40 KB with `model.safetensors.index.json` and `dtype: bfloat16`: the
/// layout transformers writes and reads, holding exactly the original weights.
#[test]
fn an_export_writes_the_source_dtype_in_shards() {
    let device = Device::flex();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/qwen3-sharded-bf16");
    let original = load_hf_dir(&src, &device).unwrap();
    assert_eq!(original.config[hone::model::SOURCE_DTYPE], "bfloat16");
    let p = Project::new();
    save_hf_dir(&original.model, &original.config, None, &p.path("trained")).unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("trained/config.json")).unwrap()).unwrap();
    assert_eq!(stored["dtype"], "float32", "hone keeps its own copy in f32");
    p.write(
        "export.yaml",
        "version: 1\nname: ex\nstages:\n  out:\n    kind: export\n    model: { path: trained }\n    to: dist/qwen3\n    max_shard_size: 40KB\n",
    );
    p.hone(&["run", "export.yaml"]).ok();
    let out = p.path("dist/qwen3");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert!(config.get(hone::model::SOURCE_DTYPE).is_none());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() >= 2, "{shards:?}");
    for shard in &shards {
        let size = std::fs::metadata(out.join(shard)).unwrap().len();
        assert!(size <= 41_000, "{shard} is {size} bytes");
    }
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("model.safetensors.index.json"), "{card}");
    // The same weights: bf16 values survive f32 and back exactly.
    let back = load_hf_dir(&out, &device).unwrap();
    let ids = Tensor::<2, Int>::from_data(
        burn::tensor::TensorData::new(vec![5i64, 17, 42, 8], [1, 4]),
        &device,
    );
    let logits = |m: &hone::model::HfModel| {
        let h = m.model.backbone.hidden(ids.clone(), None);
        to_vec(m.model.backbone.lm_logits(h).unwrap())
    };
    assert_eq!(logits(&back), logits(&original));

    // A size that is not one is refused before anything runs.
    p.write(
        "bad.yaml",
        "version: 1\nname: bad\nstages:\n  out:\n    kind: export\n    model: { path: trained }\n    to: dist/x\n    max_shard_size: lots\n",
    );
    let bad = p.hone(&["run", "bad.yaml"]);
    assert_eq!(bad.code(), 2, "{}", bad.stderr());
    assert!(bad.stderr().contains("is not a size"), "{}", bad.stderr());
}
