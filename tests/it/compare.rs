//! `hone compare`: recipes and runs side by side. A DPO stage with the IPO loss, tried as an
//! experiment (`--set`, named) and as a team recipe extending the base, differs from the base
//! in that stage only; the table holds each item's own metrics, `--html` overlays the loss
//! curves, and the experiment and the recipe that writes the same settings are the same.

use crate::common::{Project, metric, tiny_sft_dpo_recipe};

#[test]
fn compare_puts_recipes_and_runs_side_by_side() {
    let p = Project::new();
    p.write("r.yaml", &tiny_sft_dpo_recipe("cmp", 9, ""));
    p.write(
        "team/ipo.yaml",
        "extends: ../r.yaml\nstages:\n  dpo:\n    loss: ipo\n",
    );
    p.hone(&["run", "r.yaml"]).ok();
    p.hone(&[
        "run",
        "r.yaml",
        "--set",
        "stages.dpo.loss=ipo",
        "--name",
        "ipo",
    ])
    .ok();

    let out = p
        .hone(&[
            "compare",
            "r.yaml",
            "r.yaml@ipo",
            "--json",
            "--html",
            "cmp.html",
        ])
        .ok();
    let json: serde_json::Value =
        serde_json::from_str(out.split("\nwrote ").next().unwrap()).unwrap();
    assert_eq!(json["items"], serde_json::json!(["r", "ipo"]));
    assert_eq!(
        json["same"],
        serde_json::json!(["corpus", "qa", "prefs", "tok", "sft"])
    );
    let differing = json["differing"].as_array().unwrap();
    assert_eq!(differing.len(), 1, "{json}");
    assert_eq!(differing[0]["stage"], "dpo");
    let row = |name: &str| -> Vec<f64> {
        differing[0]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m[0] == name)
            .unwrap_or_else(|| panic!("no {name}: {json}"))[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let base = p.hone(&["show", "r.yaml", "dpo"]).ok();
    let ipo = p
        .hone(&["show", "r.yaml", "dpo", "--set", "stages.dpo.loss=ipo"])
        .ok();
    for m in ["accuracy_after", "margin_after"] {
        assert_eq!(row(m), [metric(&base, m), metric(&ipo, m)], "{m}");
    }
    let html = std::fs::read_to_string(p.path("cmp.html")).unwrap();
    assert_eq!(
        html.matches("<polyline").count(),
        2,
        "a loss curve per item"
    );
    assert!(html.contains("<table id=\"comparison\">"));

    // The team recipe writes the experiment's settings down: all cached, the same results.
    let team = p.hone(&["run", "team/ipo.yaml"]);
    team.ok();
    assert!(team.ran().is_empty(), "{}", team.stdout());
    let same = p.hone(&["compare", "team/ipo.yaml", "r.yaml@ipo"]).ok();
    assert!(same.contains("every stage has the same result"), "{same}");
    let text = p.hone(&["compare", "r.yaml", "team/ipo.yaml"]).ok();
    assert!(
        text.contains("dpo (dpo)") && text.contains("same result in all: corpus"),
        "{text}"
    );

    let bad = p.hone(&["compare", "r.yaml", "r.yaml@ipp"]);
    assert_ne!(bad.code(), 0);
    assert!(
        bad.stderr().contains("no run named `ipp`") && bad.stderr().contains("ipo"),
        "{}",
        bad.stderr()
    );
}
