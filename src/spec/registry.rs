//! The kinds a program knows: a [`Registry`] value, built once by whoever starts the program
//! (the CLI: `stages::registry()`, the built-ins, plus any kinds a program adds with
//! [`Registry::register`]) and handed to recipe loading and the schema. There is no
//! process-wide list, so two registries (a test's, the CLI's) never see each other's kinds.

use std::sync::Arc;

use serde_json::Value;

use super::kind::{DynKind, Kind, SpecError, StageSpec};
use super::rewards::{BUILTIN_REWARDS, Reward};

/// A built-in kind, as `stages::BUILTIN` lists them: `Builtin::of::<sft::SftKind>()`.
pub struct Builtin {
    name: &'static str,
    make: fn() -> Arc<dyn DynKind>,
}

impl Builtin {
    pub const fn of<K: Kind + Default>() -> Builtin {
        Builtin {
            name: K::NAME,
            make: make::<K>,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

fn make<K: Kind + Default>() -> Arc<dyn DynKind> {
    Arc::new(K::default())
}

/// Why [`Registry::register`] refused a stage kind.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("`{0}` is a built-in stage kind; give yours another name")]
    Builtin(&'static str),
    #[error("stage kind `{0}` is already registered")]
    Taken(&'static str),
    #[error("stage kind `{0}` may use only lowercase letters, digits and `_`")]
    BadName(&'static str),
    #[error(
        "stage kind `{0}` has no VERSION: set one (and change it when the kind's output changes), so cached results of older code are not reused"
    )]
    NoVersion(&'static str),
    #[error("`{0}` is a built-in reward; give yours another name")]
    BuiltinReward(&'static str),
    #[error("reward `{0}` is already registered")]
    RewardTaken(&'static str),
    #[error("reward `{0}` may use only lowercase letters, digits and `_`")]
    BadRewardName(&'static str),
    #[error("reward `{0}` has an empty version: set one, and change it when its scores change")]
    NoRewardVersion(&'static str),
}

/// The stage kinds recipes may use: the built-ins in their listed order, then the kinds a
/// program registered, sorted by name.
#[derive(Clone)]
pub struct Registry {
    builtin: Vec<Arc<dyn DynKind>>,
    registered: Vec<Arc<dyn DynKind>>,
    /// Rewards written in Rust that RL stages may name (`reward: { custom: [name] }`).
    rewards: Vec<Arc<dyn Reward>>,
}

impl Registry {
    /// The built-in kinds `builtin` and nothing else.
    pub fn new(builtin: &[Builtin]) -> Registry {
        Registry {
            builtin: builtin.iter().map(|b| (b.make)()).collect(),
            registered: Vec::new(),
            rewards: Vec::new(),
        }
    }

    /// Adds `kind`: recipes loaded with this registry may then use it.
    pub fn register<K: Kind>(&mut self, kind: K) -> Result<(), RegisterError> {
        let name = K::NAME;
        if !is_kind_name(name) {
            return Err(RegisterError::BadName(name));
        }
        if K::VERSION.is_none() {
            return Err(RegisterError::NoVersion(name));
        }
        if self.builtin.iter().any(|k| k.name() == name) {
            return Err(RegisterError::Builtin(name));
        }
        let at = match self.registered.binary_search_by(|k| k.name().cmp(name)) {
            Ok(_) => return Err(RegisterError::Taken(name)),
            Err(at) => at,
        };
        self.registered.insert(at, Arc::new(kind));
        Ok(())
    }

    /// Adds `reward`: RL stages of recipes loaded with this registry may then name it under
    /// `reward: { custom: [name] }`.
    pub fn register_reward<R: Reward + 'static>(&mut self, reward: R) -> Result<(), RegisterError> {
        let name = reward.name();
        if !is_kind_name(name) {
            return Err(RegisterError::BadRewardName(name));
        }
        if reward.version().trim().is_empty() {
            return Err(RegisterError::NoRewardVersion(name));
        }
        if BUILTIN_REWARDS.contains(&name) {
            return Err(RegisterError::BuiltinReward(name));
        }
        if self.rewards.iter().any(|r| r.name() == name) {
            return Err(RegisterError::RewardTaken(name));
        }
        self.rewards.push(Arc::new(reward));
        self.rewards.sort_by_key(|r| r.name());
        Ok(())
    }

    /// The rewards a program registered, sorted by name.
    pub fn rewards(&self) -> Vec<&'static str> {
        self.rewards.iter().map(|r| r.name()).collect()
    }

    /// Parses the settings of a stage of kind `kind` (`v` without its `kind` key). The
    /// rewards of this registry that the stage names travel with it.
    pub fn parse(&self, kind: &str, v: serde_yaml::Value) -> Result<StageSpec, SpecError> {
        let kind = self.lookup(kind).ok_or(SpecError::UnknownKind)?;
        let spec = StageSpec::parse(kind, v)?;
        let mut rewards = Vec::new();
        for (key, name) in spec.custom_rewards() {
            match self.rewards.iter().find(|r| r.name() == name) {
                Some(r) => rewards.push(r.clone()),
                None => {
                    return Err(SpecError::UnknownReward {
                        key,
                        name,
                        known: self.rewards(),
                    });
                }
            }
        }
        Ok(spec.with_rewards(rewards))
    }

    fn lookup(&self, name: &str) -> Option<Arc<dyn DynKind>> {
        self.kinds().find(|k| k.name() == name).cloned()
    }

    fn kinds(&self) -> impl Iterator<Item = &Arc<dyn DynKind>> {
        self.builtin.iter().chain(&self.registered)
    }

    /// Whether recipes may use kind `name`.
    pub fn knows(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    /// The kinds a program registered, sorted.
    pub fn registered(&self) -> Vec<&'static str> {
        self.registered.iter().map(|k| k.name()).collect()
    }

    /// Every kind recipes may use: the built-ins in their order, then the registered ones.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds().map(|k| k.name()).collect()
    }

    /// The stage variants of a recipe's JSON Schema, one a kind: its settings' schema with
    /// `kind` fixed, nested definitions left in `generator`.
    pub fn schema_variants(&self, generator: &mut schemars::SchemaGenerator) -> Vec<Value> {
        use serde_json::json;
        let mut variants = Vec::new();
        for kind in self.kinds() {
            let name = kind.name();
            let mut variant = kind
                .settings_schema(generator)
                .unwrap_or_else(|| json!({ "type": "object" }));
            let Some(v) = variant.as_object_mut() else {
                continue;
            };
            // A root schema carries its own definitions: they join the recipe's.
            if let Some(Value::Object(defs)) = v.remove("$defs") {
                let root = generator.definitions_mut();
                for (name, def) in defs {
                    root.entry(name).or_insert(def);
                }
            }
            v.remove("$schema");
            v.remove("title");
            // The kind's one line; else the settings' own doc comment; else a generic line.
            match kind.description() {
                "" => {
                    v.entry("description").or_insert_with(|| {
                        format!("`{name}`: a stage kind this program registered.").into()
                    });
                }
                d => {
                    v.insert("description".into(), d.into());
                }
            }
            let props = v.entry("properties").or_insert_with(|| json!({}));
            if let Some(p) = props.as_object_mut() {
                p.insert("kind".into(), json!({ "const": name, "type": "string" }));
                p.insert(
                    "resources".into(),
                    json!({ "$ref": "#/$defs/Resources", "description": "What this stage's Slurm job asks for (`executor: { kind: slurm }`); not part of the action key." }),
                );
            }
            let required = v.entry("required").or_insert_with(|| json!([]));
            if let Some(r) = required.as_array_mut() {
                r.insert(0, "kind".into());
            }
            variants.push(variant);
        }
        variants
    }
}

fn is_kind_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_lowercase_words() {
        assert!(is_kind_name("ngram_filter2"));
        assert!(!is_kind_name(""));
        assert!(!is_kind_name("NGram"));
        assert!(!is_kind_name("n-gram"));
    }
}
