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
        Self { kind, entries: BTreeMap::new() }
    }

    /// Register a strategy whose parameters are the serde struct `C`. `build` may reject values
    /// that parse but are out of range, with a message saying which and why.
    pub fn register<C, F>(&mut self, name: &str, summary: &str, source: &str, build: F) -> Result<()>
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
            let bad = |message: String| PluginError::BadParams { kind, name: owned.clone(), message };
            let config: C =
                serde_yaml::from_value(Value::Mapping(params.clone())).map_err(|e| bad(e.to_string()))?;
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
            return Err(PluginError::Duplicate { kind: self.kind.as_str(), name: info.name });
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
            (Kind::Activation, self.activations.infos().cloned().collect()),
            (Kind::Schedule, self.schedules.infos().cloned().collect()),
            (Kind::Distiller, self.distillers.infos().cloned().collect()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Schedule;
    use serde::Deserialize;

    #[derive(Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Params {
        value: f64,
    }

    struct Fixed(f64);
    impl Schedule for Fixed {
        fn value(&self, _: crate::Progress) -> f64 {
            self.0
        }
    }

    fn catalog() -> Catalog<dyn Schedule> {
        let mut c: Catalog<dyn Schedule> = Catalog::new(Kind::Schedule);
        c.register("constant", "fixed", "test", |p: Params| {
            if p.value < 0.0 {
                return Err(format!("value must be >= 0, got {}", p.value));
            }
            Ok(Box::new(Fixed(p.value)) as Box<dyn Schedule>)
        })
        .unwrap();
        c.register("cosine", "curve", "test", |p: Params| Ok(Box::new(Fixed(p.value)) as Box<dyn Schedule>))
            .unwrap();
        c
    }

    fn params(yaml: &str) -> Mapping {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn unknown_name_lists_the_registered_ones_and_suggests_the_closest() {
        let err = catalog().build("cosin", &Mapping::new()).err().unwrap().to_string();
        assert_eq!(
            err,
            "unknown schedule `cosin` (did you mean `cosine`?); registered schedules: constant, cosine"
        );
    }

    #[test]
    fn unknown_parameter_names_the_strategy_and_the_valid_keys() {
        let err = catalog().build("constant", &params("valu: 1.0")).err().unwrap().to_string();
        assert!(err.starts_with("schedule `constant`: unknown field `valu`"), "{err}");
        assert!(err.contains("expected `value`"), "{err}");
    }

    #[test]
    fn ill_typed_and_out_of_range_parameters_are_rejected() {
        let err = catalog().build("constant", &params("value: fast")).err().unwrap().to_string();
        assert!(err.contains("invalid type"), "{err}");
        let err = catalog().build("constant", &params("value: -1")).err().unwrap().to_string();
        assert_eq!(err, "schedule `constant`: value must be >= 0, got -1");
    }

    #[test]
    fn builds_with_parameters_and_lists_defaults() {
        let c = catalog();
        let s = c.build("constant", &params("value: 0.25")).unwrap();
        let p = crate::Progress { epoch: 0, step: 0, epochs: 1, steps: 1 };
        assert_eq!(s.value(p), 0.25);
        let info = c.infos().next().unwrap();
        assert_eq!(info.defaults, params("value: 0.0"));
    }

    #[test]
    fn a_name_registers_once() {
        let mut c = catalog();
        let err = c.register("cosine", "again", "test", |p: Params| {
            Ok(Box::new(Fixed(p.value)) as Box<dyn Schedule>)
        });
        assert_eq!(
            err.err().unwrap().to_string(),
            "schedule `cosine` is registered twice; pick another name for the second one"
        );
    }

    #[test]
    fn did_you_mean_stays_quiet_for_distant_names() {
        assert_eq!(did_you_mean("zzzzzz", &["ternary", "none"]), "");
        assert_eq!(did_you_mean("ternry", &["ternary", "none"]), " (did you mean `ternary`?)");
    }
}
