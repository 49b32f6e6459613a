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

/// Packed rows in batches (see [`bfd_rows`]).
pub(crate) fn packed_batches(
    encoded: &[Encoded],
    max_len: usize,
    batch: usize,
    device: &Device,
) -> Vec<LmBatch> {
    let (rows, docs) = bfd_rows(encoded, max_len);
    rows.chunks(batch)
        .zip(docs.chunks(batch))
        .map(|(r, d)| LmBatch::packed(r, d, device))
        .collect()
}

/// Best-fit-decreasing packing (TRL's `bfd`): a text longer than a row is cut into row-sized
/// pieces; the pieces, longest first, each go into the fullest row that still has room for
/// them, so no piece spans two rows. Returns the rows' tokens and, per token, the number of
/// the piece it belongs to (pieces are the documents of `LmBatch::packed`).
fn bfd_rows(encoded: &[Encoded], max_len: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    use std::collections::{BTreeMap, BTreeSet};
    let max_len = max_len.max(2);
    let mut pieces: Vec<&[u32]> = encoded.iter().flat_map(|e| e.ids.chunks(max_len)).collect();
    // Longest first; the sort is stable, so equal lengths keep their order and the packing is
    // the same on every run.
    pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let (mut rows, mut docs): (Vec<Vec<u32>>, Vec<Vec<u32>>) = (Vec::new(), Vec::new());
    // Rows that still have room, by how much (the first row of each size first).
    let mut by_room: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (d, piece) in pieces.iter().enumerate() {
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
                rows.push(Vec::with_capacity(max_len));
                docs.push(Vec::with_capacity(max_len));
                rows.len() - 1
            }
        };
        rows[i].extend_from_slice(piece);
        docs[i].extend(std::iter::repeat_n(d as u32, piece.len()));
        let room = max_len - rows[i].len();
        if room > 0 {
            by_room.entry(room).or_default().insert(i);
        }
    }
    (rows, docs)
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
        let (rows, docs) = bfd_rows(&enc(&[3, 2, 6, 4, 2, 5]), 8);
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
        let (rows, _) = bfd_rows(&enc(&[19]), 8);
        let mut lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        lens.sort();
        assert_eq!(lens, [3, 8, 8]);
    }
}
