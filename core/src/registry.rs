//! Names → factories. A factory builds a strategy from its YAML parameters; each plugin's
//! parameters are a serde struct with `deny_unknown_fields` and `Default`, so unknown or
//! ill-typed keys are rejected with the list of valid ones, and the defaults can be listed.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};
use serde_yaml::{Mapping, Value};

use crate::{Activation, Distiller, PluginError, Quantizer, Result, Schedule};

/// The four strategy kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Weight quantizers.
    Quantizer,
    /// Elementwise activations.
    Activation,
    /// Schedules (learning rate and others).
    Schedule,
    /// Distillation losses.
    Distiller,
}

impl Kind {
    /// Lower-case name used in messages and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Quantizer => "quantizer",
            Kind::Activation => "activation",
            Kind::Schedule => "schedule",
            Kind::Distiller => "distiller",
        }
    }
}

/// What a listing shows of a registered strategy.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginInfo {
    /// Registered name.
    pub name: String,
    /// One-line definition.
    pub summary: String,
    /// The parameters with their default values.
    pub defaults: Mapping,
    /// Where it comes from: `built-in` or a library path.
    pub source: String,
}

type Factory<T> = Box<dyn Fn(&Mapping) -> Result<Box<T>> + Send + Sync>;

/// All strategies of one kind, by name.
pub struct Catalog<T: ?Sized> {
    kind: Kind,
    entries: BTreeMap<String, (PluginInfo, Factory<T>)>,
}

impl<T: ?Sized> Catalog<T> {
    /// An empty catalog of `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            entries: BTreeMap::new(),
        }
    }

    /// Register a strategy whose parameters are the serde struct `C`. `build` may reject values
    /// that parse but are out of range, with a message saying which and why.
    pub fn register<C, F>(
        &mut self,
        name: &str,
        summary: &str,
        source: &str,
        build: F,
    ) -> Result<()>
    where
        C: DeserializeOwned + Serialize + Default + 'static,
        F: Fn(C) -> std::result::Result<Box<T>, String> + Send + Sync + 'static,
    {
        let defaults = match serde_yaml::to_value(C::default()) {
            Ok(Value::Mapping(m)) => m,
            _ => Mapping::new(),
        };
        let kind = self.kind.as_str();
        let owned = name.to_string();
        let factory: Factory<T> = Box::new(move |params: &Mapping| {
            let bad = |message: String| PluginError::BadParams {
                kind,
                name: owned.clone(),
                message,
            };
            let config: C = serde_yaml::from_value(Value::Mapping(params.clone()))
                .map_err(|e| bad(e.to_string()))?;
            build(config).map_err(bad)
        });
        let info = PluginInfo {
            name: name.to_string(),
            summary: summary.to_string(),
            defaults,
            source: source.to_string(),
        };
        self.insert(info, factory)
    }

    /// Register with a ready-made factory (used by the dynamic-plugin loader).
    pub fn insert(&mut self, info: PluginInfo, factory: Factory<T>) -> Result<()> {
        if self.entries.contains_key(&info.name) {
            return Err(PluginError::Duplicate {
                kind: self.kind.as_str(),
                name: info.name,
            });
        }
        self.entries.insert(info.name.clone(), (info, factory));
        Ok(())
    }

    /// Build the strategy `name` from `params`.
    pub fn build(&self, name: &str, params: &Mapping) -> Result<Box<T>> {
        match self.entries.get(name) {
            Some((_, factory)) => factory(params),
            None => Err(self.unknown(name)),
        }
    }

    /// Check that `name` exists and `params` are valid for it, without keeping the result.
    pub fn validate(&self, name: &str, params: &Mapping) -> Result<()> {
        self.build(name, params).map(drop)
    }

    /// True when `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Registered strategies in name order.
    pub fn infos(&self) -> impl Iterator<Item = &PluginInfo> {
        self.entries.values().map(|(info, _)| info)
    }

    fn unknown(&self, name: &str) -> PluginError {
        let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        PluginError::UnknownName {
            kind: self.kind.as_str(),
            name: name.to_string(),
            suggestion: did_you_mean(name, &known),
            known: known.join(", "),
        }
    }
}

/// ` (did you mean `x`?)` for the closest candidate within a small edit distance, else "".
pub fn did_you_mean(wrong: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(wrong, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Every strategy the engine can build, by kind and name.
pub struct Registry {
    /// Weight quantizers.
    pub quantizers: Catalog<dyn Quantizer>,
    /// Activations.
    pub activations: Catalog<dyn Activation>,
    /// Schedules.
    pub schedules: Catalog<dyn Schedule>,
    /// Distillers.
    pub distillers: Catalog<dyn Distiller>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            quantizers: Catalog::new(Kind::Quantizer),
            activations: Catalog::new(Kind::Activation),
            schedules: Catalog::new(Kind::Schedule),
            distillers: Catalog::new(Kind::Distiller),
        }
    }
}

impl Registry {
    /// Infos of every registered strategy, grouped by kind.
    pub fn listing(&self) -> Vec<(Kind, Vec<PluginInfo>)> {
        vec![
            (Kind::Quantizer, self.quantizers.infos().cloned().collect()),
            (
                Kind::Activation,
                self.activations.infos().cloned().collect(),
            ),
            (Kind::Schedule, self.schedules.infos().cloned().collect()),
            (Kind::Distiller, self.distillers.infos().cloned().collect()),
        ]
    }
}
