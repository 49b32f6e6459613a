//! Rotary position embeddings: the inverse frequencies of every rotary scaling transformers
//! implements for the Llama-architecture families (`rope_type` default, `linear`, `dynamic`,
//! `llama3`, `yarn`), and the cos/sin tables in HF's half-split layout. Formulas follow
//! transformers' `modeling_rope_utils.py`; the tiny-model fixtures check them end to end.

use burn::prelude::*;
use serde_json::Value;

/// How a checkpoint stretches its rotary embedding past the context it was trained on.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// NTK-aware: the base grows with the sequence once it passes `original_max`.
    Dynamic {
        factor: f64,
        original_max: usize,
    },
    /// Llama 3.1/3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp
    /// between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max: usize,
    },
    /// LongRoPE (Phi-3, Phi-4-mini): each frequency divided by its own factor, `short` while
    /// positions stay within `original_max`, `long` past it; cos and sin scaled by
    /// `attention_factor`.
    LongRope {
        short: Vec<f64>,
        long: Vec<f64>,
        original_max: usize,
        attention_factor: f64,
    },
    /// YaRN: interpolated and extrapolated frequencies blended over a ramp of dimensions, and
    /// the attention scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
}

/// A rotary scaling hone cannot run, or one whose parameters are missing or out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RopeError {
    #[error(
        "rotary scaling `{0}` is not supported (hone runs default, linear, dynamic, llama3, yarn and longrope)"
    )]
    Unsupported(String),
    #[error("rotary scaling `{kind}` needs `{field}` (a number{range})")]
    Parameter {
        kind: String,
        field: &'static str,
        range: &'static str,
    },
    #[error("rotary scaling `{kind}` needs `{field}`, a list of positive numbers")]
    Factors { kind: String, field: &'static str },
}

impl RopeScaling {
    /// From a `config.json`: `rope_scaling` (transformers < 5, `rope_type` or the older
    /// `type`) or `rope_parameters` (transformers 5). `max_position_embeddings` stands in for
    /// `original_max_position_embeddings` where a scaling needs it and the config omits it.
    pub fn from_config(config: &Value) -> Result<RopeScaling, RopeError> {
        let params = [config.get("rope_parameters"), config.get("rope_scaling")]
            .into_iter()
            .flatten()
            .find(|p| p.is_object());
        let Some(p) = params else {
            return Ok(RopeScaling::Default);
        };
        let kind = p
            .get("rope_type")
            .or(p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        let number = |field: &'static str, range: &'static str, ok: fn(f64) -> bool| {
            p.get(field)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && ok(*x))
                .ok_or(RopeError::Parameter {
                    kind: kind.clone(),
                    field,
                    range,
                })
        };
        let optional = |field: &'static str, default: f64| -> Result<f64, RopeError> {
            match p.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(_) => number(field, "", |_| true),
            }
        };
        let positive = |x: f64| x > 0.0;
        let original_max = p
            .get("original_max_position_embeddings")
            .or(config.get("max_position_embeddings"))
            .and_then(Value::as_u64)
            .unwrap_or(2048) as usize;
        Ok(match kind.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: number("factor", " above 0", positive)?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: number("factor", " above 0", positive)?,
                original_max,
            },
            "llama3" => {
                let low = number("low_freq_factor", " above 0", positive)?;
                let high = number("high_freq_factor", " above low_freq_factor", positive)?;
                if high <= low {
                    return Err(RopeError::Parameter {
                        kind,
                        field: "high_freq_factor",
                        range: " above low_freq_factor",
                    });
                }
                RopeScaling::Llama3 {
                    factor: number("factor", " above 0", positive)?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max,
                }
            }
            "longrope" | "su" => {
                let factors = |field: &'static str| -> Result<Vec<f64>, RopeError> {
                    p.get(field)
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                        .filter(|f| f.iter().all(|x| x.is_finite() && *x > 0.0))
                        .ok_or(RopeError::Factors {
                            kind: kind.clone(),
                            field,
                        })
                };
                let original_max = p
                    .get("original_max_position_embeddings")
                    .or(config.get("original_max_position_embeddings"))
                    .and_then(Value::as_u64)
                    .unwrap_or(original_max as u64) as usize;
                // Phi-3 derives the factor from how far the context was stretched.
                let factor = match p.get("factor").and_then(Value::as_f64) {
                    Some(f) => f,
                    None => {
                        config
                            .get("max_position_embeddings")
                            .and_then(Value::as_f64)
                            .unwrap_or(original_max as f64)
                            / original_max.max(1) as f64
                    }
                };
                let attention_factor = match p.get("attention_factor").and_then(Value::as_f64) {
                    Some(a) => a,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / (original_max as f64).ln()).sqrt(),
                };
                RopeScaling::LongRope {
                    short: factors("short_factor")?,
                    long: factors("long_factor")?,
                    original_max,
                    attention_factor,
                }
            }
            "yarn" => {
                let factor = number("factor", " above 0", positive)?;
                let mscale = optional("mscale", 0.0)?;
                let mscale_all_dim = optional("mscale_all_dim", 0.0)?;
                let attention_factor = match p.get("attention_factor").and_then(Value::as_f64) {
                    Some(a) => a,
                    None if mscale != 0.0 && mscale_all_dim != 0.0 => {
                        yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
                    }
                    None => yarn_mscale(factor, 1.0),
                };
                RopeScaling::Yarn {
                    factor,
                    original_max,
                    beta_fast: optional("beta_fast", 32.0)?,
                    beta_slow: optional("beta_slow", 1.0)?,
                    attention_factor,
                    truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                }
            }
            other => return Err(RopeError::Unsupported(other.to_owned())),
        })
    }

    /// The Llama 3 scaling whose [`frequency_divisors`](Self::frequency_divisors) are
    /// `divisors` (llama.cpp's `rope_freqs` tensor, which is all a Llama 3.1/3.2 GGUF keeps of
    /// it): the factor is the largest divisor, and the ramp between fixes the original context
    /// and the high-frequency factor, with Llama 3's low-frequency factor of 1. `None` when
    /// no such scaling gives these divisors; `Some(Default)` when they are all 1.
    pub fn llama3_from_divisors(divisors: &[f32], dim: usize, theta: f64) -> Option<RopeScaling> {
        let factor = divisors.iter().fold(0f32, |m, &d| m.max(d)) as f64;
        if divisors.is_empty() || divisors.len() != dim / 2 || factor <= 0.0 {
            return None;
        }
        if (factor - 1.0).abs() < 1e-6 {
            return Some(RopeScaling::Default);
        }
        let (plain, _) = RopeScaling::Default.frequencies(dim, theta, 0);
        // On the ramp, smooth = old / wavelength / (high - low) - low / (high - low).
        let ramp: Vec<(f64, f64)> = plain
            .iter()
            .zip(divisors)
            .filter(|(_, d)| {
                let d = **d as f64;
                d > 1.0 + 1e-4 && d < factor * (1.0 - 1e-4)
            })
            .map(|(f, d)| {
                let smooth = (factor / *d as f64 - 1.0) / (factor - 1.0);
                (f / (2.0 * std::f64::consts::PI), smooth)
            })
            .collect();
        let (&(x0, y0), &(x1, y1)) = (ramp.first()?, ramp.last()?);
        if (x1 - x0).abs() < f64::EPSILON {
            return None;
        }
        let slope = (y1 - y0) / (x1 - x0);
        let intercept = y0 - slope * x0;
        // The divisors are f32: the recovered settings are rounded to what configs write.
        let round = |v: f64| (v * 1e4).round() / 1e4;
        let low = 1.0;
        let high = round(low - low / intercept);
        let original = slope * (high - low);
        let candidate = RopeScaling::Llama3 {
            factor: round(factor),
            low_freq_factor: low,
            high_freq_factor: high,
            original_max: original.round() as usize,
        };
        let again = candidate.frequency_divisors(dim, theta);
        let close = again
            .iter()
            .zip(divisors)
            .all(|(a, b)| (a - b).abs() <= 1e-3 * b.abs().max(1.0));
        close.then_some(candidate)
    }

    /// What each of the `dim / 2` frequencies is divided by under this scaling (llama.cpp
    /// stores Llama 3's as the `rope_freqs` tensor).
    pub fn frequency_divisors(&self, dim: usize, theta: f64) -> Vec<f32> {
        let (plain, _) = RopeScaling::Default.frequencies(dim, theta, 0);
        let (scaled, _) = self.frequencies(dim, theta, 0);
        plain
            .iter()
            .zip(&scaled)
            .map(|(p, s)| (p / s) as f32)
            .collect()
    }

    /// The inverse frequency of each of the `dim / 2` rotated pairs, and the factor cos and
    /// sin are scaled by, for a forward pass whose positions reach `len - 1`.
    pub fn frequencies(&self, dim: usize, theta: f64, len: usize) -> (Vec<f64>, f64) {
        let half = dim / 2;
        let default = |base: f64| -> Vec<f64> {
            (0..half)
                .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
                .collect()
        };
        if let RopeScaling::LongRope {
            short,
            long,
            original_max,
            attention_factor,
        } = self
        {
            let ext = if len > *original_max { long } else { short };
            let freqs = default(theta)
                .iter()
                .zip(ext.iter().chain(std::iter::repeat(&1.0)))
                .map(|(f, e)| f / e)
                .collect();
            return (freqs, *attention_factor);
        }
        match *self {
            RopeScaling::LongRope { .. } => unreachable!("answered above"),
            RopeScaling::Default => (default(theta), 1.0),
            RopeScaling::Linear { factor } => {
                (default(theta).iter().map(|f| f / factor).collect(), 1.0)
            }
            RopeScaling::Dynamic {
                factor,
                original_max,
            } => {
                let base = if len > original_max {
                    let grown = factor * len as f64 / original_max as f64 - (factor - 1.0);
                    theta * grown.powf(dim as f64 / (dim as f64 - 2.0))
                } else {
                    theta
                };
                (default(base), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max,
            } => {
                let old = original_max as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                let freqs = default(theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                let correction = |rotations: f64| {
                    dim as f64
                        * (original_max as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
                if low == high {
                    high += 0.001;
                }
                let freqs = default(theta)
                    .into_iter()
                    .enumerate()
                    .map(|(i, extrapolated)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        extrapolated / factor * (1.0 - keep) + extrapolated * keep
                    })
                    .collect();
                (freqs, attention_factor)
            }
        }
    }
}

/// YaRN's attention temperature for a context stretched `scale` times.
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// Rotary position embedding tables in the HF "half-split" layout: `cos`/`sin` `[len, d]` for
/// positions `0..len`, each pair's frequency repeated over both halves of the head dimension.
pub fn rope_tables(
    head_dim: usize,
    theta: f64,
    scaling: &RopeScaling,
    len: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let (freqs, attention) = scaling.frequencies(head_dim, theta, len);
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for pos in 0..len {
        for j in 0..head_dim {
            // In f64 and then rounded (HF rounds earlier, in f32): closer to the exact value,
            // and the tables of every model trained so far stay bit for bit the same.
            let angle = pos as f64 * freqs[j % half];
            cos.push((angle.cos() * attention) as f32);
            sin.push((angle.sin() * attention) as f32);
        }
    }
    let to =
        |v: Vec<f32>| Tensor::from_data(burn::tensor::TensorData::new(v, [len, head_dim]), device);
    (to(cos), to(sin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_is_recovered_from_llama_cpp_rope_freqs() {
        let llama32 = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max: 8192,
        };
        let divisors = llama32.frequency_divisors(64, 500_000.0);
        assert_eq!(
            RopeScaling::llama3_from_divisors(&divisors, 64, 500_000.0),
            Some(llama32)
        );
        assert_eq!(
            RopeScaling::llama3_from_divisors(&[1.0; 32], 64, 1e4),
            Some(RopeScaling::Default)
        );
        let wild: Vec<f32> = (0..32).map(|i| 1.0 + (i % 3) as f32).collect();
        assert_eq!(RopeScaling::llama3_from_divisors(&wild, 64, 1e4), None);
    }
    use serde_json::json;

    #[test]
    fn reads_every_place_transformers_writes_the_scaling() {
        let llama3 = json!({ "rope_scaling": { "rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192 } });
        assert!(matches!(
            RopeScaling::from_config(&llama3),
            Ok(RopeScaling::Llama3 {
                original_max: 8192,
                ..
            })
        ));
        let old = json!({ "rope_scaling": { "type": "linear", "factor": 2.0 } });
        assert_eq!(
            RopeScaling::from_config(&old),
            Ok(RopeScaling::Linear { factor: 2.0 })
        );
        let v5 = json!({ "rope_parameters": { "rope_type": "default", "rope_theta": 1e6 } });
        assert_eq!(RopeScaling::from_config(&v5), Ok(RopeScaling::Default));
        assert_eq!(
            RopeScaling::from_config(&json!({ "rope_scaling": null })),
            Ok(RopeScaling::Default)
        );
        assert_eq!(
            RopeScaling::from_config(&json!({ "rope_scaling": { "rope_type": "mrope" } })),
            Err(RopeError::Unsupported("mrope".into()))
        );
        assert_eq!(
            RopeScaling::from_config(&json!({ "rope_scaling": { "rope_type": "longrope" } })),
            Err(RopeError::Factors {
                kind: "longrope".into(),
                field: "short_factor"
            })
        );
        assert!(matches!(
            RopeScaling::from_config(&json!({ "rope_scaling": { "rope_type": "linear" } })),
            Err(RopeError::Parameter {
                field: "factor",
                ..
            })
        ));
    }

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max: 8192,
        };
        let (scaled, attention) = s.frequencies(128, 500_000.0, 16);
        let (plain, _) = RopeScaling::Default.frequencies(128, 500_000.0, 16);
        assert_eq!(attention, 1.0);
        assert_eq!(scaled[0], plain[0], "the highest frequency is kept");
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-18);
        assert!(scaled.iter().zip(&plain).all(|(s, p)| s <= p));
    }

    #[test]
    fn dynamic_changes_nothing_within_the_original_context() {
        let s = RopeScaling::Dynamic {
            factor: 4.0,
            original_max: 64,
        };
        let plain = RopeScaling::Default.frequencies(16, 10_000.0, 64);
        assert_eq!(s.frequencies(16, 10_000.0, 64), plain);
        assert!(s.frequencies(16, 10_000.0, 128).0[1] < plain.0[1]);
    }
}
