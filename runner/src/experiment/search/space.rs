//! A search space: each dotted config path with its distribution, parsed from
//! `sweep.search.space`. Methods work on *coordinates* (one f64 per dimension: the value for
//! `uniform`, its logarithm for `log_uniform`, the integer for `int_uniform`, the index for
//! `choice`) and on the unit cube; only [`Space::values`] turns coordinates into config values.

use serde_yaml::{Mapping, Value};

use crate::experiment::sweep::inline;

/// Significant digits a sampled float keeps: short enough to read in a table and a run id, fine
/// enough that two proposals of a continuous space never collide.
const SIGNIFICANT_DIGITS: usize = 5;

/// One dimension's distribution.
#[derive(Clone, Debug, PartialEq)]
pub enum Distribution {
    /// Uniform on [low, high].
    Uniform {
        /// Lower end (included).
        low: f64,
        /// Upper end (included).
        high: f64,
    },
    /// Log-uniform on [low, high], low > 0.
    LogUniform {
        /// Lower end (included).
        low: f64,
        /// Upper end (included).
        high: f64,
    },
    /// Uniform over the integers low..=high.
    IntUniform {
        /// Lower end (included).
        low: i64,
        /// Upper end (included).
        high: i64,
    },
    /// One of the listed values (any YAML: numbers, names, whole sub-configs).
    Choice(Vec<Value>),
}

/// One dimension: a dotted config path and its distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Dimension {
    /// The config key it sets (`train.optimizer.lr`).
    pub path: String,
    /// How its values are drawn.
    pub distribution: Distribution,
}

/// The dimensions of a search, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    /// Dimensions in the order the file lists them.
    pub dims: Vec<Dimension>,
}

impl Distribution {
    /// Parse `{uniform: [a, b]}` and the like; errors say what is wrong and how to write it.
    fn parse(value: &Value) -> Result<Self, String> {
        const FORMS: &str = "write {uniform: [low, high]}, {log_uniform: [low, high]}, \
                             {int_uniform: [low, high]} or {choice: [a, b, ...]}";
        let Some((kind, args)) = value.as_mapping().filter(|m| m.len() == 1).and_then(|m| m.iter().next())
        else {
            return Err(format!("expected one distribution, found {}; {FORMS}", inline(value)));
        };
        let kind = kind.as_str().unwrap_or_default();
        let list = args.as_sequence();
        let bounds = || -> Result<(f64, f64), String> {
            let pair: Vec<f64> =
                list.map(|l| l.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
            match (pair.as_slice(), list.map_or(0, Vec::len)) {
                ([low, high], 2) if low.is_finite() && high.is_finite() && low < high => Ok((*low, *high)),
                ([_, _], 2) => Err(format!("{kind}: needs low < high, found {}", inline(args))),
                _ => Err(format!("{kind}: expected two numbers [low, high], found {}", inline(args))),
            }
        };
        match kind {
            "uniform" => bounds().map(|(low, high)| Self::Uniform { low, high }),
            "log_uniform" => {
                let (low, high) = bounds()?;
                if low <= 0.0 {
                    return Err(format!(
                        "log_uniform: low must be > 0, found {low}; use uniform for ranges that include 0"
                    ));
                }
                Ok(Self::LogUniform { low, high })
            }
            "int_uniform" => {
                let ints: Vec<i64> =
                    list.map(|l| l.iter().filter_map(Value::as_i64).collect()).unwrap_or_default();
                match (ints.as_slice(), list.map_or(0, Vec::len)) {
                    ([low, high], 2) if low < high => Ok(Self::IntUniform { low: *low, high: *high }),
                    ([_, _], 2) => Err(format!("int_uniform: needs low < high, found {}", inline(args))),
                    _ => {
                        Err(format!("int_uniform: expected two integers [low, high], found {}", inline(args)))
                    }
                }
            }
            "choice" => match list {
                Some(items) if items.len() >= 2 => {
                    for (i, item) in items.iter().enumerate() {
                        if items[..i].contains(item) {
                            return Err(format!("choice: {} is listed twice", inline(item)));
                        }
                    }
                    Ok(Self::Choice(items.clone()))
                }
                _ => Err(format!("choice: expected a list of at least two values, found {}", inline(args))),
            },
            other => Err(format!("unknown distribution `{other}`; {FORMS}")),
        }
    }

    /// The number of distinct values (None: continuous).
    pub fn size(&self) -> Option<u64> {
        match self {
            Self::Uniform { .. } | Self::LogUniform { .. } => None,
            Self::IntUniform { low, high } => Some((high - low) as u64 + 1),
            Self::Choice(items) => Some(items.len() as u64),
        }
    }

    /// The coordinate at `u` in [0, 1).
    pub fn from_unit(&self, u: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        match self {
            Self::Uniform { low, high } => low + u * (high - low),
            Self::LogUniform { low, high } => low.ln() + u * (high.ln() - low.ln()),
            Self::IntUniform { low, high } => {
                let n = (high - low + 1) as f64;
                *low as f64 + (u * n).floor().min(n - 1.0)
            }
            Self::Choice(items) => (u * items.len() as f64).floor().min(items.len() as f64 - 1.0),
        }
    }

    /// The bounds of the coordinate (integers and indices widened by a half on each side, so
    /// every integer owns an interval of width 1).
    pub fn coordinate_bounds(&self) -> (f64, f64) {
        match self {
            Self::Uniform { low, high } => (*low, *high),
            Self::LogUniform { low, high } => (low.ln(), high.ln()),
            Self::IntUniform { low, high } => (*low as f64 - 0.5, *high as f64 + 0.5),
            Self::Choice(items) => (-0.5, items.len() as f64 - 0.5),
        }
    }

    /// The config value of a coordinate (floats rounded to [`SIGNIFICANT_DIGITS`]).
    pub fn value(&self, x: f64) -> Value {
        match self {
            Self::Uniform { low, high } => Value::from(round_significant(x).clamp(*low, *high)),
            Self::LogUniform { low, high } => Value::from(round_significant(x.exp()).clamp(*low, *high)),
            Self::IntUniform { low, high } => Value::from((x.round() as i64).clamp(*low, *high)),
            Self::Choice(items) => items[(x.round().max(0.0) as usize).min(items.len() - 1)].clone(),
        }
    }

    /// The coordinate of a config value (None: the value is not in this distribution).
    pub fn coordinate(&self, v: &Value) -> Option<f64> {
        match self {
            Self::Uniform { low, high } => v.as_f64().filter(|x| (*low..=*high).contains(x)),
            Self::LogUniform { low, high } => v.as_f64().filter(|x| (*low..=*high).contains(x)).map(f64::ln),
            Self::IntUniform { low, high } => {
                v.as_i64().filter(|x| (*low..=*high).contains(x)).map(|x| x as f64)
            }
            Self::Choice(items) => items.iter().position(|item| item == v).map(|i| i as f64),
        }
    }

    /// The values that bound the distribution (its ends, or every choice): what planning checks.
    pub fn extremes(&self) -> Vec<Value> {
        match self {
            Self::Uniform { low, high } | Self::LogUniform { low, high } => {
                vec![Value::from(*low), Value::from(*high)]
            }
            Self::IntUniform { low, high } => vec![Value::from(*low), Value::from(*high)],
            Self::Choice(items) => items.clone(),
        }
    }
}

/// `x` rounded to [`SIGNIFICANT_DIGITS`] significant digits.
fn round_significant(x: f64) -> f64 {
    format!("{x:.*e}", SIGNIFICANT_DIGITS - 1).parse().unwrap_or(x)
}

impl Space {
    /// Parse `sweep.search.space`; errors name the path (`space.train.optimizer.lr: …`).
    pub fn parse(space: &Mapping) -> Result<Self, String> {
        if space.is_empty() {
            return Err("space: empty; give at least one dotted config path and its distribution".into());
        }
        let mut dims = Vec::new();
        for (key, value) in space {
            let path = match key {
                Value::String(s) if !s.is_empty() => s.clone(),
                other => {
                    return Err(format!("space: keys must be dotted config paths, found {}", inline(other)))
                }
            };
            if path == "train.seed" {
                return Err("space.train.seed: seeds are not searched; list them in sweep.seeds".into());
            }
            let distribution = Distribution::parse(value).map_err(|e| format!("space.{path}: {e}"))?;
            dims.push(Dimension { path, distribution });
        }
        Ok(Self { dims })
    }

    /// The number of distinct points, when every dimension is discrete.
    pub fn size(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, d| d.distribution.size().map(|s| n.saturating_mul(s)))
    }

    /// The coordinates of the point at `u` in the unit cube.
    pub fn from_unit(&self, u: &[f64]) -> Vec<f64> {
        self.dims.iter().zip(u).map(|(d, &u)| d.distribution.from_unit(u)).collect()
    }

    /// The point's coordinates as the values they set, rounded as written, and their coordinates
    /// after rounding (so a point read back from the ledger is the point proposed).
    pub fn values(&self, point: &[f64]) -> (Vec<(String, Value)>, Vec<f64>) {
        self.dims
            .iter()
            .zip(point)
            .map(|(d, &x)| {
                let v = d.distribution.value(x);
                let x = d.distribution.coordinate(&v).unwrap_or(x);
                ((d.path.clone(), v), x)
            })
            .unzip()
    }

    /// The coordinates of recorded values, or which one does not belong to this space.
    pub fn coordinates(&self, values: &[(String, Value)]) -> Result<Vec<f64>, String> {
        if values.len() != self.dims.len() {
            return Err(format!("{} values for a space of {} dimensions", values.len(), self.dims.len()));
        }
        self.dims
            .iter()
            .zip(values)
            .map(|(d, (path, v))| {
                if *path != d.path {
                    return Err(format!("`{path}` where the space has `{}`", d.path));
                }
                d.distribution
                    .coordinate(v)
                    .ok_or_else(|| format!("{path}: {} is outside its distribution", inline(v)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(yaml: &str) -> Result<Space, String> {
        Space::parse(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn points_map_to_values_and_back() {
        let s = space(
            "lr: {log_uniform: [1.0e-4, 1.0e-2]}\nwd: {uniform: [0.0, 0.2]}\nwarm: {int_uniform: [0, 5]}\nq: {choice: [ternary, {name: int, bits: 2}]}",
        )
        .unwrap();
        let point = s.from_unit(&[0.5, 0.25, 0.999, 0.7]);
        let (values, rounded) = s.values(&point);
        assert_eq!(values[0].1, Value::from(0.001));
        assert_eq!(values[1].1, Value::from(0.05));
        assert_eq!(values[2].1, Value::from(5));
        assert_eq!(inline(&values[3].1), "{name: int, bits: 2}");
        assert_eq!(s.coordinates(&values).unwrap(), rounded);
        assert_eq!(s.size(), None);
        assert_eq!(space("a: {int_uniform: [1, 3]}\nb: {choice: [x, y]}").unwrap().size(), Some(6));
    }

    #[test]
    fn floats_keep_five_significant_digits() {
        assert_eq!(round_significant(0.000123456789), 0.00012346);
        assert_eq!(round_significant(12345.678), 12346.0);
    }

    #[test]
    fn bad_distributions_say_how_to_write_them() {
        let err = |y: &str| space(y).unwrap_err();
        assert!(
            err("lr: {log_uniform: [0, 1]}").contains("space.lr: log_uniform: low must be > 0"),
            "{}",
            err("lr: {log_uniform: [0, 1]}")
        );
        assert!(err("lr: {uniform: [2, 1]}").contains("needs low < high"));
        assert!(err("lr: {uniform: [1]}").contains("expected two numbers"));
        assert!(err("n: {int_uniform: [0.5, 3]}").contains("expected two integers"));
        assert!(err("q: {choice: [a]}").contains("at least two values"));
        assert!(err("q: {choice: [a, a]}").contains("listed twice"));
        assert!(err("q: {normal: [0, 1]}").contains("unknown distribution `normal`; write {uniform"));
        assert!(err("q: [1, 2]").contains("expected one distribution"));
        assert!(err("train.seed: {int_uniform: [0, 9]}").contains("list them in sweep.seeds"));
    }
}
