//! A bounded fuzzing pass over the parsers of bytes hone did not write: GGUF files,
//! safetensors files (header and data), tokenizer JSON, recipes, remote manifests, and JSONL,
//! CSV and Parquet tables. Each starts from a real file (a shipped checkpoint, the quickstart
//! recipe, a manifest and a table hone just wrote) and mutates it knowing its structure:
//! counts, lengths and offsets set to the values that break arithmetic (0, 2^31, 2^32-1,
//! 2^62, 2^64-1), JSON values swapped for extremes, lines dropped, doubled and swapped, as well
//! as plain byte flips, cuts and splices. A fixed seed and a fixed number of cases make every
//! run the same; a panic, or a case running past [`CASE_BOUND`], fails with the case's seed.
//!
//! Before a release, run many more cases with `HONE_FUZZ_CASES=200000 cargo test --release
//! --test it fuzz::` (and another seed with `HONE_FUZZ_SEED`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hone::rng::SplitMix64;

/// Cases per parser in the test suite.
const CASES: usize = 2000;
/// The longest one case may take (the parsers' inputs are at most a few hundred KB).
const CASE_BOUND: Duration = Duration::from_secs(10);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases() -> usize {
    std::env::var("HONE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES)
}

fn seed() -> u64 {
    std::env::var("HONE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x686f_6e65)
}

/// Values that break offset and size arithmetic.
const EXTREMES: [u64; 12] = [
    0,
    1,
    7,
    255,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 40,
    1 << 62,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

fn extreme(rng: &mut SplitMix64) -> u64 {
    if rng.below(4) == 0 {
        rng.next_u64()
    } else {
        *pick(rng, &EXTREMES)
    }
}

/// Plain byte damage: flips, a cut, a repeated or removed stretch, bytes from elsewhere.
fn damage_bytes(rng: &mut SplitMix64, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        bytes.push(rng.next_u64() as u8);
        return;
    }
    let at = |rng: &mut SplitMix64, len: usize| rng.below(len as u64 + 1) as usize;
    match rng.below(5) {
        0 => {
            for _ in 0..=rng.below(8) {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let cut = at(rng, bytes.len());
            bytes.truncate(cut);
        }
        2 => {
            let (a, b) = (at(rng, bytes.len()), at(rng, bytes.len()));
            let (a, b) = (a.min(b), a.max(b).min(a.min(b) + 4096));
            let copy = bytes[a..b].to_vec();
            let to = at(rng, bytes.len());
            bytes.splice(to..to, copy);
        }
        3 => {
            let (a, b) = (at(rng, bytes.len()), at(rng, bytes.len()));
            bytes.drain(a.min(b)..a.max(b));
        }
        _ => {
            let i = rng.below(bytes.len() as u64) as usize;
            let n = (rng.below(8) as usize + 1).min(bytes.len() - i);
            for b in &mut bytes[i..i + n] {
                *b = rng.next_u64() as u8;
            }
        }
    }
}

/// Writes `value` little-endian over `width` bytes at `at`.
fn put_le(bytes: &mut [u8], at: usize, width: usize, value: u64) {
    if at + width <= bytes.len() {
        bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    }
}

/// Runs `cases` mutants of `original` through `target` (true when the parser accepted the
/// input): none may panic or run past the bound, and the mutants must be neither all accepted
/// nor all refused (else they test nothing).
fn fuzz(
    name: &str,
    original: &[u8],
    mutate: impl Fn(&mut SplitMix64, &[u8]) -> Vec<u8>,
    target: impl Fn(&[u8]) -> bool,
) {
    let (n, seed) = (cases(), seed());
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut accepted = 0;
    for case in 0..n {
        let case_seed = seed ^ (case as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = SplitMix64::new(case_seed);
        let input = mutate(&mut rng, original);
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        let took = t.elapsed();
        match outcome {
            Err(_) => failures.push(format!("case {case} (seed {case_seed:#x}) panicked")),
            Ok(true) => accepted += 1,
            Ok(false) => {}
        }
        if took > CASE_BOUND {
            failures.push(format!("case {case} (seed {case_seed:#x}) took {took:?}"));
        }
        if failures.len() >= 5 {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {n} cases ({accepted} accepted) in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
    assert!(
        accepted > 0 && accepted < n,
        "{name}: {accepted} of {n} mutants accepted; the mutations test nothing"
    );
}

/// A scratch file for targets that read a path.
struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        Scratch { _dir: dir, path }
    }

    fn write(&self, bytes: &[u8]) -> &Path {
        std::fs::write(&self.path, bytes).unwrap();
        &self.path
    }
}

/// The byte offsets of a GGUF file's count, length, type, dimension and offset fields, with
/// their widths, found by walking its layout.
fn gguf_fields(b: &[u8]) -> Vec<(usize, usize)> {
    let mut fields = vec![(4, 4), (8, 8), (16, 8)];
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    let n_tensors = u64_at(8);
    let n_meta = u64_at(16);
    let mut p = 24;
    fn value(b: &[u8], p: &mut usize, t: u32, fields: &mut Vec<(usize, usize)>) {
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        match t {
            0 | 1 | 7 => *p += 1,
            2 | 3 => *p += 2,
            4..=6 => *p += 4,
            10..=12 => {
                fields.push((*p, 8));
                *p += 8
            }
            8 => {
                fields.push((*p, 8));
                *p += 8 + u64_at(*p);
            }
            9 => {
                fields.push((*p, 4));
                let inner = u32_at(*p);
                fields.push((*p + 4, 8));
                let n = u64_at(*p + 4);
                *p += 12;
                for _ in 0..n {
                    value(b, p, inner, fields);
                }
            }
            _ => unreachable!("the original is a valid GGUF"),
        }
    }
    for _ in 0..n_meta {
        fields.push((p, 8));
        p += 8 + u64_at(p);
        fields.push((p, 4));
        let t = u32_at(p);
        p += 4;
        value(b, &mut p, t, &mut fields);
    }
    for _ in 0..n_tensors {
        fields.push((p, 8));
        p += 8 + u64_at(p);
        fields.push((p, 4));
        let dims = u32_at(p) as usize;
        p += 4;
        for _ in 0..dims {
            fields.push((p, 8));
            p += 8;
        }
        fields.push((p, 4));
        fields.push((p + 4, 8));
        p += 12;
    }
    fields
}

#[test]
fn gguf_files() {
    let original = std::fs::read(root().join("tests/fixtures/models/qwen3.gguf")).unwrap();
    let fields = gguf_fields(&original);
    assert!(fields.len() > 50, "{}", fields.len());
    fuzz(
        "gguf",
        &original,
        |rng, o| {
            let mut b = o.to_vec();
            for _ in 0..=rng.below(2) {
                if rng.below(3) == 0 {
                    damage_bytes(rng, &mut b);
                } else {
                    let &(at, width) = pick(rng, &fields);
                    let v = extreme(rng);
                    put_le(&mut b, at, width, v);
                }
            }
            b
        },
        |bytes| {
            let path = Path::new("fuzz.gguf");
            let Ok(g) = hone::model::gguf::Gguf::parse(path, bytes.to_vec()) else {
                return false;
            };
            let mut ok = true;
            for t in g.tensors.iter().take(8) {
                ok &= g.tensor(t).is_ok();
            }
            match hone::model::gguf_tokenizer::build(&g) {
                Ok(Some(t)) => {
                    if let Ok(e) = t.encode("hello world", true) {
                        let _ = t.decode(e.get_ids(), false);
                    }
                }
                Ok(None) => {}
                Err(_) => ok = false,
            }
            ok
        },
    );
}

/// A JSON value with one leaf or key changed: a number to an extreme (or negative, or a
/// float), a string to another type or to garbage, an entry removed, or an array emptied or
/// doubled.
fn mutate_json(rng: &mut SplitMix64, v: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let mut paths = Vec::new();
    fn walk(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    at.push(k.clone());
                    walk(c, at, out);
                    at.pop();
                }
            }
            Value::Array(items) => {
                for (i, c) in items.iter().enumerate().take(64) {
                    at.push(i.to_string());
                    walk(c, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    walk(v, &mut Vec::new(), &mut paths);
    let path = pick(rng, &paths).clone();
    let pointer: String = path
        .iter()
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect();
    let replacement = match rng.below(9) {
        0 => json!(extreme(rng)),
        1 => json!(-(extreme(rng) as i128).clamp(i64::MIN as i128, 0) as i64),
        2 => json!(1e308),
        3 => json!("x".repeat(rng.below(300) as usize)),
        4 => Value::Null,
        5 => json!([]),
        6 => json!({}),
        7 => json!(["F32", "I64", "BF16", "Q9", "", "U8"][rng.below(6) as usize]),
        _ => {
            // Remove the entry, or double an array.
            if let Some((last, parent)) = path.split_last() {
                let parent_ptr: String = parent
                    .iter()
                    .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
                    .collect();
                match v.pointer_mut(&parent_ptr) {
                    Some(Value::Object(m)) => {
                        m.remove(last);
                    }
                    Some(Value::Array(items)) => {
                        let copy = items.clone();
                        items.extend(copy);
                    }
                    _ => {}
                }
            }
            return;
        }
    };
    if let Some(slot) = v.pointer_mut(&pointer) {
        *slot = replacement;
    }
}

/// A JSON file (`bytes`, parsed as `value`) changed: one case in four its bytes damaged, else
/// one to three of its values (see [`mutate_json`]).
fn mutate_json_file(rng: &mut SplitMix64, bytes: &[u8], value: &serde_json::Value) -> Vec<u8> {
    if rng.below(4) == 0 {
        let mut b = bytes.to_vec();
        damage_bytes(rng, &mut b);
        return b;
    }
    let mut v = value.clone();
    for _ in 0..=rng.below(2) {
        mutate_json(rng, &mut v);
    }
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn safetensors_files() {
    let dir = root().join("tests/fixtures/models/llama");
    let original = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&original[8..8 + header_len]).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("config.json"), scratch.path().join("config.json")).unwrap();
    let file = scratch.path().join("model.safetensors");
    let device = hone::backend::device(hone::backend::BackendKind::Cpu).unwrap();
    fuzz(
        "safetensors",
        &original,
        |rng, o| match rng.below(4) {
            // The header's JSON, its length fixed up: offsets, shapes and dtypes.
            0 | 1 => {
                let mut h = header.clone();
                for _ in 0..=rng.below(2) {
                    mutate_json(rng, &mut h);
                }
                let text = serde_json::to_vec(&h).unwrap();
                let mut b = (text.len() as u64).to_le_bytes().to_vec();
                b.extend(text);
                b.extend(&o[8 + header_len..]);
                b
            }
            // The header's length itself.
            2 => {
                let mut b = o.to_vec();
                put_le(&mut b, 0, 8, extreme(rng));
                b
            }
            _ => {
                let mut b = o.to_vec();
                damage_bytes(rng, &mut b);
                b
            }
        },
        |bytes| {
            std::fs::write(&file, bytes).unwrap();
            let probed = hone::model::probe::probe(scratch.path()).is_ok();
            let read = hone::model::weights::read_f32_tensors(std::slice::from_ref(&file)).is_ok();
            let mapped = hone::model::weights::WeightMap::from_safetensors(&file, &device).is_ok();
            probed && read && mapped
        },
    );
}

/// A small byte-level BPE tokenizer in `tokenizers`' JSON format.
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":0,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
"post_processor":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true},
"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
"vocab":{"<|endoftext|>":0,"h":1,"e":2,"l":3,"o":4,"Ġ":5,"w":6,"r":7,"d":8,"he":9,"ll":10,"hell":11,"hello":12,"Ġw":13,"or":14,"Ġwor":15},
"merges":[["h","e"],["l","l"],["he","ll"],["hell","o"],["Ġ","w"],["o","r"],["Ġw","or"]]}}"#;

#[test]
fn tokenizer_json() {
    let original: serde_json::Value = serde_json::from_str(TOKENIZER).unwrap();
    let scratch = Scratch::new("tokenizer.json");
    let ok = hone::model::load_tokenizer_file(scratch.write(TOKENIZER.as_bytes()))
        .expect("the original loads");
    assert!(ok.encode("hello world", false).is_ok());
    fuzz(
        "tokenizer.json",
        TOKENIZER.as_bytes(),
        |rng, o| mutate_json_file(rng, o, &original),
        |bytes| {
            let Ok(t) = hone::model::load_tokenizer_file(scratch.write(bytes)) else {
                return false;
            };
            if let Ok(e) = t.encode("hello world", true) {
                let _ = t.decode(e.get_ids(), false);
            }
            true
        },
    );
}

/// Text changed line-wise or token-wise: a line dropped, doubled or swapped with another, a
/// value replaced by an extreme or a deep nesting, or bytes damaged.
fn mutate_text(rng: &mut SplitMix64, text: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(text);
    let mut lines: Vec<String> = s.lines().map(str::to_owned).collect();
    if lines.is_empty() || rng.below(5) == 0 {
        let mut b = text.to_vec();
        damage_bytes(rng, &mut b);
        return b;
    }
    for _ in 0..=rng.below(2) {
        let i = rng.below(lines.len() as u64) as usize;
        match rng.below(5) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                let j = rng.below(lines.len() as u64) as usize;
                lines.swap(i, j);
            }
            3 => {
                let values = [
                    "18446744073709551616".to_owned(),
                    "-1".to_owned(),
                    ".nan".to_owned(),
                    "1e400".to_owned(),
                    "\"\"".to_owned(),
                    "[]".to_owned(),
                    "{}".to_owned(),
                    "~".to_owned(),
                    "x".repeat(2000),
                    format!("{}1{}", "[".repeat(300), "]".repeat(300)),
                    extreme(rng).to_string(),
                ];
                let v = pick(rng, &values).clone();
                // After the last `:` or `,` of the line, else appended.
                let l = &lines[i];
                let cut = l.rfind([':', ',']).map_or(l.len(), |c| c + 1);
                lines[i] = format!("{} {v}", &l[..cut]);
            }
            _ => {
                let l = lines.remove(i);
                let j = rng.below(lines.len() as u64 + 1) as usize;
                lines.insert(j, format!("  {l}"));
            }
        }
        if lines.is_empty() {
            break;
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out.into_bytes()
}

#[test]
fn recipes() {
    let original = hone_quickstart();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yaml");
    let kinds = hone::stages::registry();
    fuzz("recipe", original.as_bytes(), mutate_text, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        hone::recipe::load(&path, &[], &kinds)
            .ok()
            .is_some_and(|recipe| hone::plan::validate(&recipe).is_ok())
    });
}

fn hone_quickstart() -> String {
    crate::common::quickstart_recipe()
}

/// A real manifest and its action: the dataset stage of a small recipe, run once.
fn real_manifest() -> (Vec<u8>, String) {
    let p = crate::common::Project::new();
    p.write("d.jsonl", &crate::common::qa_jsonl(12, 0));
    p.write(
        "r.yaml",
        "version: 1\nname: m\nstages:\n  d: { kind: dataset, source: { path: d.jsonl }, split: { validation: 0.25 } }\n",
    );
    p.hone(&["run", "r.yaml"]).ok();
    let m = crate::common::manifest(&p, "d");
    let action = m["action"].as_str().unwrap().to_owned();
    (serde_json::to_vec_pretty(&m).unwrap(), action)
}

#[test]
fn remote_manifests() {
    let (original, action) = real_manifest();
    assert!(hone::store::remote::check_manifest(&original, &action).is_ok());
    let value: serde_json::Value = serde_json::from_slice(&original).unwrap();
    fuzz(
        "manifest",
        &original,
        |rng, o| mutate_json_file(rng, o, &value),
        |bytes| {
            let local = hone::store::Manifest::parse(bytes, &action).is_ok();
            hone::store::remote::check_manifest(bytes, &action).is_ok() && local
        },
    );
}

#[test]
fn tables() {
    use hone::data::table::{FileFormat, MissingPolicy, read_file};
    let jsonl = std::fs::read(root().join("data/cars/qa.jsonl")).unwrap();
    let table = read_file(
        &root().join("data/cars/qa.jsonl"),
        "qa",
        FileFormat::Jsonl,
        MissingPolicy::Null,
    )
    .unwrap();
    // The same rows as CSV, and as the Parquet file a dataset stage writes.
    let mut csv = String::from("question,answer\n");
    for row in table.rows.iter().take(40) {
        let cell = |i: usize| row.values[i].as_str().unwrap_or("").replace('"', "\"\"");
        csv.push_str(&format!("\"{}\",\"{}\"\n", cell(0), cell(1)));
    }
    let p = crate::common::Project::new();
    p.write("qa.jsonl", &String::from_utf8_lossy(&jsonl));
    p.write(
        "r.yaml",
        "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: qa.jsonl } }\n",
    );
    p.hone(&["run", "r.yaml"]).ok();
    let m = crate::common::manifest(&p, "d");
    let digest = m["outputs"]["train"]["files"]["data.parquet"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let parquet = std::fs::read(p.store().join("blobs").join(&digest[..2]).join(&digest)).unwrap();
    for (name, original, format) in [
        ("jsonl", jsonl, FileFormat::Jsonl),
        ("csv", csv.into_bytes(), FileFormat::Csv),
        ("parquet", parquet, FileFormat::Parquet),
    ] {
        let scratch = Scratch::new(&format!("t.{name}"));
        let binary = format == FileFormat::Parquet;
        fuzz(
            name,
            &original,
            |rng, o| {
                if binary {
                    let mut b = o.to_vec();
                    for _ in 0..=rng.below(3) {
                        damage_bytes(rng, &mut b);
                    }
                    // The footer's length (the last 8 bytes: length, then `PAR1`).
                    if rng.below(3) == 0 && b.len() >= 8 {
                        let at = b.len() - 8;
                        put_le(&mut b, at, 4, extreme(rng));
                    }
                    b
                } else {
                    mutate_text(rng, o)
                }
            },
            |bytes| read_file(scratch.write(bytes), name, format, MissingPolicy::Null).is_ok(),
        );
    }
}
