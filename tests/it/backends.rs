//! The same model computes the same numbers on every backend compiled in. wgpu runs on any
//! Vulkan/Metal/DX12 adapter; CI installs Debian's software Vulkan (mesa-vulkan-drivers).
#![cfg(feature = "wgpu")]

use std::path::Path;

use burn::prelude::*;
use hone::backend::{BackendKind, device};
use hone::model::{Backbone, load_hf_dir, to_vec};

fn forward(name: &str, device: &Device) -> Vec<f32> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name);
    let model = load_hf_dir(&dir, device).unwrap();
    let ids = Tensor::<2, Int>::from_data(
        [[5, 17, 42, 8, 99, 3, 21, 64], [7, 7, 30, 12, 0, 0, 0, 0]],
        device,
    );
    let padding =
        Tensor::<2, Int>::from_data([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]], device)
            .equal_elem(1);
    let hidden = model.model.backbone.hidden(ids, Some(padding));
    match &model.model.backbone {
        Backbone::Bert(_) => to_vec(hidden),
        decoder => to_vec(decoder.lm_logits(hidden).unwrap()),
    }
}

#[test]
fn wgpu_forward_matches_flex() {
    let cpu = device(BackendKind::Cpu).unwrap();
    let gpu = device(BackendKind::Wgpu).unwrap();
    for name in ["gpt2", "llama", "bert"] {
        let (a, b) = (forward(name, &cpu), forward(name, &gpu));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{name}: wgpu differs from flex by {worst:e}");
    }
}
