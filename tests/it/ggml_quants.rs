//! Every ggml quantisation type hone reads, dequantised exactly as the `gguf` package's numpy
//! reference does it (`scripts/make_quant_fixtures.py`: random blocks, finite scales).

use std::path::Path;

use hone::model::ggml_quants::{dequantize, type_name};

#[test]
fn every_quant_type_dequantises_exactly_like_the_reference() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ggml_quants.json");
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert!(cases.len() >= 11, "{} types", cases.len());
    for case in &cases {
        let t = case["type"].as_u64().unwrap() as u32;
        let name = case["name"].as_str().unwrap();
        assert_eq!(type_name(t), name);
        let hex = case["bytes"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let n = case["elements"].as_u64().unwrap() as usize;
        let got = dequantize(t, &bytes, n).unwrap_or_else(|| panic!("{name}: not read"));
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let differ: Vec<usize> = (0..n)
            .filter(|&i| got[i].to_bits() != want[i].to_bits())
            .collect();
        assert!(
            differ.is_empty(),
            "{name}: {} of {n} values differ, first at {}: {} vs {}",
            differ.len(),
            differ[0],
            got[differ[0]],
            want[differ[0]]
        );
    }
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The types a GGUF export writes (Q8_0, Q5_0, Q4_K, Q6_K) quantise to exactly the bytes of
/// ggml's reference quantizers (`quantize_row_*_ref`, compiled from ggml's source by
/// scripts/ggml_quantize_reference/): weight-like rows, wide ones, zeros, a constant, outliers,
/// only positive values.
#[test]
fn export_types_quantise_to_ggmls_own_bytes() {
    use hone::model::ggml_quantize::quantize;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ggml_quantize.json");
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 36, "{} cases", cases.len());
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let t = (0..64u32).find(|&t| type_name(t) == name).unwrap();
        let input: Vec<f32> = unhex(case["input_f32_hex"].as_str().unwrap())
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let want = unhex(case["blocks_hex"].as_str().unwrap());
        let got = quantize(t, &input).unwrap();
        let differ: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
        assert!(
            got.len() == want.len() && differ.is_empty(),
            "{name} {}: {} of {} bytes differ (first at {:?})",
            case["name"],
            differ.len(),
            want.len(),
            differ.first()
        );
    }
}

/// MXFP4 (gpt-oss's experts in a GGUF export) quantises to exactly the bytes of the `gguf`
/// package's quantizer, llama.cpp's `quantize_row_mxfp4_ref` in numpy
/// (`scripts/make_quant_fixtures.py`): weight-like rows, wide ones, zeros, a constant,
/// outliers, values halfway between two codes, magnitudes near f32's smallest.
#[test]
fn mxfp4_quantises_to_the_gguf_packages_bytes() {
    use hone::model::ggml_quantize::quantize;
    use hone::model::ggml_quants::types::MXFP4;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ggml_quantize_mxfp4.json");
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(cases.len(), 7);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let values: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = quantize(MXFP4, &values).unwrap();
        assert_eq!(got, unhex(case["bytes"].as_str().unwrap()), "{name}");
        // The values it stands for quantise to the same bytes again.
        let back = dequantize(MXFP4, &got, values.len()).unwrap();
        assert_eq!(quantize(MXFP4, &back).unwrap(), got, "{name}");
    }
}
