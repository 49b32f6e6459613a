//! Task heads on a backbone: the LM head lives in the backbone (tied or not); here are the
//! sequence-classification / scalar-score heads. Decoders pool at the last real token
//! (HF `*ForSequenceClassification`: `score`, no bias); BERT goes through its pooler, then
//! `classifier` (with bias). A scalar head (1 label) is what reward and value models use.

use burn::module::Module;
use burn::prelude::*;

use super::Backbone;
use super::layers::Proj;

/// A backbone with an optional score head.
#[derive(Module, Debug)]
pub struct Model {
    pub backbone: Backbone,
    /// `[d, num_labels]`; `None` for a plain language model.
    pub score: Option<Proj>,
}

impl Model {
    pub fn new(backbone: Backbone) -> Model {
        Model {
            backbone,
            score: None,
        }
    }

    /// A fresh head (normal(0, 0.02); BERT's classifier gets a zero bias, as HF's does).
    pub fn with_new_head(backbone: Backbone, num_labels: usize, device: &Device) -> Model {
        let d = backbone.hidden_size();
        let bias = matches!(backbone, Backbone::Bert(_));
        Model {
            score: Some(Proj::init(d, num_labels, bias, 0.02, device)),
            backbone,
        }
    }

    /// The head applied at every position: `[b, s]` scalars (a value model's per-token
    /// estimates); `None` without a head.
    pub fn token_scores(&self, ids: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Option<Tensor<2>> {
        let score = self.score.as_ref()?;
        let [b, s] = ids.dims();
        let hidden = self.backbone.hidden(ids, Some(padding));
        Some(score.forward(hidden).narrow(2, 0, 1).reshape([b, s]))
    }

    pub fn num_labels(&self) -> Option<usize> {
        self.score.as_ref().map(Proj::d_out)
    }

    /// Scores `[b, num_labels]` of a batch; `padding` `[b, s]` is true at real tokens.
    pub fn scores(&self, ids: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Option<Tensor<2>> {
        let score = self.score.as_ref()?;
        let hidden = self.backbone.hidden(ids, Some(padding.clone()));
        let pooled = match &self.backbone {
            // Through the pooler; a checkpoint saved without one uses the [CLS] state itself.
            Backbone::Bert(bert) => {
                let [b, _, d] = hidden.dims();
                bert.pool(hidden.clone())
                    .unwrap_or_else(|| hidden.narrow(1, 0, 1).reshape([b, d]))
            }
            _ => last_token(hidden, &padding),
        };
        Some(score.forward(pooled))
    }
}

/// Hidden state of the last real token of each row (`[b, s, d]` -> `[b, d]`), for left or
/// right padding alike.
pub fn last_token(hidden: Tensor<3>, padding: &Tensor<2, Bool>) -> Tensor<2> {
    let [b, s, d] = hidden.dims();
    let device = hidden.device();
    let positions = Tensor::<1, Int>::arange(0..s as i64, &device)
        .reshape([1, s])
        .expand([b, s]);
    let last = (padding.clone().int() * positions)
        .argmax(1)
        .reshape([b, 1, 1])
        .expand([b, 1, d]);
    hidden.gather(1, last).reshape([b, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::to_vec;

    #[test]
    fn last_token_follows_the_mask_for_left_and_right_padding() {
        let d = Device::flex();
        let hidden = Tensor::<3>::from_data([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]], &d);
        let padding = Tensor::<2, Bool>::from_data([[true, true, false], [false, true, true]], &d);
        assert_eq!(to_vec(last_token(hidden, &padding)), vec![2.0, 6.0]);
    }
}
