//! Texts as next-token batches: encoded with end-of-text, cut to a length, and batched one text
//! a row or packed best-fit-decreasing (several texts a row, attention kept within each).

use anyhow::Result;
use burn::prelude::*;
use tokenizers::Tokenizer;

use crate::data::tokenized::Encoded;
use crate::train::objectives::LmBatch;

/// Token sequences (each text, then end-of-text, cut to `max_len`) in batches.
pub(crate) fn batches(
    tokenizer: &Tokenizer,
    texts: &[String],
    eos: Option<u32>,
    max_len: usize,
    batch: usize,
    device: &Device,
) -> Result<Vec<LmBatch>> {
    Ok(text_batches(
        &encode_texts(tokenizer, texts, eos, Some(max_len))?,
        batch,
        device,
    ))
}

/// Each text's tokens then end-of-text, every token a target; cut to `max_len` when given.
pub(crate) fn encode_texts(
    tokenizer: &Tokenizer,
    texts: &[String],
    eos: Option<u32>,
    max_len: Option<usize>,
) -> Result<Vec<Encoded>> {
    texts
        .iter()
        .map(|t| {
            let enc = tokenizer
                .encode(t.as_str(), false)
                .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
            let mut ids = enc.get_ids().to_vec();
            ids.extend(eos);
            if let Some(m) = max_len {
                ids.truncate(m.max(2));
            }
            let targets = vec![true; ids.len()];
            Ok(Encoded { ids, targets })
        })
        .collect()
}

/// One sequence per row (sequences shorter than two tokens predict nothing and are dropped).
pub(crate) fn text_batches(encoded: &[Encoded], batch: usize, device: &Device) -> Vec<LmBatch> {
    let seqs: Vec<Vec<u32>> = encoded
        .iter()
        .filter(|e| e.ids.len() >= 2)
        .map(|e| e.ids.clone())
        .collect();
    seqs.chunks(batch)
        .map(|c| LmBatch::from_sequences(c, device))
        .collect()
}

/// Packed rows in batches (see [`bfd_rows`]), every token a target (pretraining).
pub(crate) fn packed_batches(
    encoded: &[Encoded],
    max_len: usize,
    batch: usize,
    device: &Device,
) -> Vec<LmBatch> {
    let packed = bfd_rows(encoded, max_len);
    packed
        .rows
        .chunks(batch)
        .zip(packed.docs.chunks(batch))
        .map(|(r, d)| LmBatch::packed(r, d, device))
        .collect()
}

/// Packed rows in batches with each example's own targets (SFT's `packing`: the loss stays on
/// the answers). Examples without a target are left out, as unpacked batches leave them.
pub(crate) fn packed_example_batches(
    encoded: &[Encoded],
    max_len: usize,
    batch: usize,
    device: &Device,
) -> Vec<LmBatch> {
    let kept: Vec<Encoded> = encoded
        .iter()
        .filter(|e| e.targets.iter().any(|t| *t))
        .cloned()
        .collect();
    let packed = bfd_rows(&kept, max_len);
    (0..packed.rows.len())
        .step_by(batch.max(1))
        .map(|start| {
            let end = (start + batch.max(1)).min(packed.rows.len());
            LmBatch::packed_with_targets(
                &packed.rows[start..end],
                &packed.docs[start..end],
                &packed.targets[start..end],
                device,
            )
        })
        .collect()
}

/// Rows of packed pieces: their tokens, the number of the piece each token belongs to (the
/// documents of `LmBatch::packed`), and each token's target flag.
struct PackedRows {
    rows: Vec<Vec<u32>>,
    docs: Vec<Vec<u32>>,
    targets: Vec<Vec<bool>>,
}

/// Best-fit-decreasing packing (TRL's `bfd`): a text longer than a row is cut into row-sized
/// pieces; the pieces, longest first, each go into the fullest row that still has room for
/// them, so no piece spans two rows.
fn bfd_rows(encoded: &[Encoded], max_len: usize) -> PackedRows {
    use std::collections::{BTreeMap, BTreeSet};
    let max_len = max_len.max(2);
    let mut pieces: Vec<(&[u32], &[bool])> = encoded
        .iter()
        .flat_map(|e| e.ids.chunks(max_len).zip(e.targets.chunks(max_len)))
        .collect();
    // Longest first; the sort is stable, so equal lengths keep their order and the packing is
    // the same on every run.
    pieces.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let mut out = PackedRows {
        rows: Vec::new(),
        docs: Vec::new(),
        targets: Vec::new(),
    };
    // Rows that still have room, by how much (the first row of each size first).
    let mut by_room: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (d, (piece, targets)) in pieces.iter().enumerate() {
        let best = by_room
            .range(piece.len()..)
            .next()
            .map(|(&room, rows)| (room, *rows.first().expect("no empty sets")));
        let i = match best {
            Some((room, i)) => {
                let set = by_room.get_mut(&room).expect("just found");
                set.remove(&i);
                if set.is_empty() {
                    by_room.remove(&room);
                }
                i
            }
            None => {
                out.rows.push(Vec::with_capacity(max_len));
                out.docs.push(Vec::with_capacity(max_len));
                out.targets.push(Vec::with_capacity(max_len));
                out.rows.len() - 1
            }
        };
        out.rows[i].extend_from_slice(piece);
        out.docs[i].extend(std::iter::repeat_n(d as u32, piece.len()));
        out.targets[i].extend_from_slice(targets);
        let room = max_len - out.rows[i].len();
        if room > 0 {
            by_room.entry(room).or_default().insert(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfd_keeps_pieces_whole_and_fills_rows_best_first() {
        let enc = |lens: &[usize]| -> Vec<Encoded> {
            let mut next = 0u32;
            lens.iter()
                .map(|&n| Encoded {
                    ids: (0..n)
                        .map(|_| {
                            next += 1;
                            next
                        })
                        .collect(),
                    targets: vec![true; n],
                })
                .collect()
        };
        // 6, 5, 4, 3, 2, 2 into rows of 8: 6+2, 5+3, 4+2.
        let PackedRows { rows, docs, .. } = bfd_rows(&enc(&[3, 2, 6, 4, 2, 5]), 8);
        let mut lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        lens.sort();
        assert_eq!(lens, [6, 8, 8]);
        // Every token once; each piece in one row, contiguous.
        let mut all: Vec<u32> = rows.concat();
        all.sort();
        assert_eq!(all, (1..=22).collect::<Vec<u32>>());
        let mut seen = std::collections::BTreeSet::new();
        for d in &docs {
            for (j, id) in d.iter().enumerate() {
                if j == 0 || d[j - 1] != *id {
                    assert!(
                        seen.insert(*id),
                        "piece {id} spans rows or is split: {docs:?}"
                    );
                }
            }
        }
        // A text longer than a row is cut into row-sized pieces.
        let rows = bfd_rows(&enc(&[19]), 8).rows;
        let mut lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        lens.sort();
        assert_eq!(lens, [3, 8, 8]);
    }
}

#[cfg(test)]
mod packing_tests {
    use super::*;
    use crate::train::objectives::CausalLm;
    use crate::train::trainer::Objective;

    /// SFT-like examples: a prompt (no target) then an answer (targets), of varied lengths.
    fn examples() -> Vec<Encoded> {
        let lens = [(5, 3), (9, 6), (3, 2), (12, 4), (4, 7), (6, 1), (2, 9)];
        let mut next = 3u32;
        lens.iter()
            .map(|&(prompt, answer)| {
                let ids = (0..prompt + answer)
                    .map(|_| {
                        next = next * 7 % 61 + 2;
                        next
                    })
                    .collect();
                let targets = (0..prompt + answer).map(|j| j >= prompt).collect();
                Encoded { ids, targets }
            })
            .collect()
    }

    /// Packed rows compute every example's answer loss as it is alone: the same sum over the
    /// same number of answer tokens, and the same gradients, for a Llama and a GPT-2 model
    /// (rotary and learned positions), in far fewer rows.
    #[test]
    fn packed_sft_rows_give_the_unpacked_loss_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(1);
        let llama: crate::model::llama::LlamaConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
        }))
        .unwrap();
        let gpt2: crate::model::gpt2::Gpt2Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 64, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
            "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
        }))
        .unwrap();
        let models = [
            crate::model::Backbone::Llama(crate::model::llama::Llama::init(&llama, &device)),
            crate::model::Backbone::Gpt2(crate::model::gpt2::Gpt2::init(&gpt2, &device)),
        ];
        let enc = examples();
        for model in models {
            let unpacked = crate::stages::conversation::conversation_batches(&enc, 2, &device);
            let packed = packed_example_batches(&enc, 16, 2, &device);
            let rows = |b: &[LmBatch]| b.iter().map(|b| b.ids.dims()[0]).sum::<usize>();
            assert!(
                rows(&packed) < rows(&unpacked),
                "{} vs {}",
                rows(&packed),
                rows(&unpacked)
            );
            let total = |batches: &[LmBatch]| {
                let loss = batches
                    .iter()
                    .map(|b| CausalLm.loss_sum(&model, b))
                    .reduce(|a, b| a + b)
                    .unwrap();
                let count: f64 = batches.iter().map(|b| CausalLm.count(b)).sum();
                (loss, count)
            };
            let (a, count_a) = total(&unpacked);
            let (b, count_b) = total(&packed);
            assert_eq!(count_a, count_b, "answer tokens");
            assert_eq!(count_a, 32.0, "every answer token, none of the prompts");
            let (va, vb) = (
                crate::model::to_vec(a.clone())[0],
                crate::model::to_vec(b.clone())[0],
            );
            assert!((va - vb).abs() < 1e-4 * va.abs(), "loss {va} vs {vb}");
            let (ga, gb) = (a.backward(), b.backward());
            struct Grads<'a> {
                ga: &'a burn::tensor::Gradients,
                gb: &'a burn::tensor::Gradients,
                pairs: Vec<(Vec<f32>, Vec<f32>)>,
            }
            impl burn::module::ModuleVisitor for Grads<'_> {
                fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                    let t = p.val();
                    if let (Some(x), Some(y)) = (t.grad(self.ga), t.grad(self.gb)) {
                        self.pairs
                            .push((crate::model::to_vec(x), crate::model::to_vec(y)));
                    }
                }
            }
            let mut grads = Grads {
                ga: &ga,
                gb: &gb,
                pairs: Vec::new(),
            };
            burn::module::Module::visit(&model, &mut grads);
            let compared = grads.pairs.len();
            for (x, y) in grads.pairs {
                let scale = x.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                let worst = x
                    .iter()
                    .zip(&y)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst < 1e-3 * scale,
                    "gradient differs by {worst} (scale {scale})"
                );
            }
            assert!(compared > 4);
        }
    }
}
