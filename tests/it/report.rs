//! `hone report`: a self-contained HTML page of a recipe's results, checked as text and as
//! rendered by headless Chromium (Debian's `chromium`, which `scripts/test_services.sh` installs): the
//! screenshot is not blank and the DAG, stage table, curves and evaluation table are in the
//! rendered DOM. The screenshot is kept at `target/test-artifacts/report.png`.

use std::path::Path;
use std::process::Command;

use crate::common::Project;

fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name.to_owned();
        }
    }
    panic!(
        "headless Chromium is needed: run scripts/test_services.sh (as root it installs Debian's chromium), or apt-get install chromium"
    );
}

#[test]
fn the_report_renders_the_dag_curves_and_tables() {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    let p = Project::new();
    p.write(
        "r.yaml",
        &format!(
            r#"version: 1
name: report-demo
description: A small pipeline for the report test.
seed: 1
stages:
  corpus:
    kind: dataset
    source: {{ path: {d}/corpus.jsonl }}
    split: {{ validation: 0.1 }}
  qa:
    kind: dataset
    source: {{ path: {d}/qa.jsonl }}
    columns: {{ question: prompt, answer: response }}
    split: {{ validation: 0.1 }}
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 300
  lm:
    kind: pretrain
    model: {{ init: {{ arch: gpt2, layers: 1, d_model: 32, heads: 2, context: 64 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: corpus }}
    max_length: 64
    train: {{ epochs: 6, batch_size: 8, lr: 3.0e-3, eval_every: 10 }}
  eval:
    kind: evaluate
    models: {{ lm: {{ from: lm }} }}
    perplexity: {{ data: {{ from: corpus }}, max_length: 64 }}
    qa: {{ data: {{ from: qa }}, max_length: 64, max_new_tokens: 8 }}
"#,
            d = d.display()
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let out = p.hone(&["report", "r.yaml", "-o", "report.html"]).ok();
    assert!(out.contains("wrote report.html"), "{out}");
    let html = std::fs::read_to_string(p.path("report.html")).unwrap();
    for needle in [
        "<svg class=\"dag\"",
        "marker-end=\"url(#arrow)\"",
        "<table id=\"stages\">",
        "class=\"stage cached\"",
        "<polyline class=\"train\"",
        "<circle class=\"val\"",
        "<table class=\"evaluation\">",
        "<table class=\"answers\">",
        "<ul id=\"warnings\">",
    ] {
        assert!(html.contains(needle), "the report lacks {needle}");
    }
    assert!(!html.contains("<script"), "self-contained and static");

    // Rendered by headless Chromium.
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&shot).unwrap();
    let png_path = shot.join("report.png");
    let _ = std::fs::remove_file(&png_path);
    let url = format!("file://{}", p.path("report.html").display());
    let browser = chromium();
    let run = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1400",
            &format!("--screenshot={}", png_path.display()),
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        png_path.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let ink = pixels
        .chunks(channels)
        .filter(|px| px.iter().take(3).any(|&c| c < 200))
        .count();
    let share = ink as f64 / (info.width * info.height) as f64;
    assert!(
        share > 0.01,
        "the screenshot is (nearly) blank: {:.4} of pixels drawn",
        share
    );

    let dom = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            &url,
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    for needle in [
        "class=\"dag\"",
        "id=\"stages\"",
        "class=\"train\"",
        "class=\"evaluation\"",
    ] {
        assert!(dom.contains(needle), "the rendered page lacks {needle}");
    }
}
