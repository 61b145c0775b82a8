//! Expanding an experiment's `sweep:` section into runs. Everything here works on YAML values
//! addressed by dotted paths (`train.optimizer.lr`), so a sweep can vary any config key, whole
//! sub-configs included (a list of quantizer blocks), without knowing the config types.
//!
//! Order: the cartesian product of `grid` (keys in file order, the first varying slowest), then
//! each `zip` group (its lists advance together), then the seeds (innermost). `exclude` drops
//! every combination that matches all keys of one of its entries.

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// The `sweep:` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Dotted path → list of values (or a `range(a, b, step)` string); cartesian product.
    #[serde(default)]
    pub grid: Mapping,
    /// Groups of dotted paths whose lists (of equal length) advance together.
    #[serde(default)]
    pub zip: Vec<Mapping>,
    /// Replicate seeds (set `train.seed`).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
    /// Shorthand for `seeds: [base, base+1, …]` of this length.
    #[serde(default)]
    pub repeats: Option<usize>,
    /// Combinations to drop: each entry maps paths to the value it excludes.
    #[serde(default)]
    pub exclude: Vec<Mapping>,
    /// A search instead of a grid (see `experiment::search`); seeds still apply.
    #[serde(default)]
    pub search: Option<super::search::SearchSpec>,
}

/// The seeds of `spec` (`seeds`, or `repeats` counted from `base_seed`); None when it sets none.
pub fn seeds(spec: &SweepSpec, base_seed: u64) -> Result<Option<Vec<u64>>, String> {
    match (&spec.seeds, spec.repeats) {
        (Some(_), Some(_)) => Err("sweep: give `seeds` or `repeats`, not both".into()),
        (Some(s), None) if s.is_empty() => Err("sweep.seeds: empty list".into()),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(0)) => Err("sweep.repeats: must be at least 1".into()),
        (None, Some(n)) => Ok(Some((0..n as u64).map(|i| base_seed + i).collect())),
        (None, None) => Ok(None),
    }
}

/// One expanded run: the overrides applied to the base config, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// (dotted path, value) pairs, the seed last.
    pub overrides: Vec<(String, Value)>,
}

/// One axis of the product: a path list and its rows of values.
struct Axis {
    paths: Vec<String>,
    rows: Vec<Vec<Value>>,
}

/// Expand `spec` over a base whose seed is `base_seed`. Errors say which key is wrong and why.
pub fn expand(spec: &SweepSpec, base_seed: u64) -> Result<Vec<Point>, String> {
    if spec.search.is_some() && !(spec.grid.is_empty() && spec.zip.is_empty() && spec.exclude.is_empty()) {
        return Err("sweep: `search` replaces `grid`, `zip` and `exclude`; a search cannot be combined with them (put fixed values in the base config)".into());
    }
    let mut axes = Vec::new();
    for (path, values) in &spec.grid {
        let path = key_string(path)?;
        let values = values_of(&path, values)?;
        axes.push(Axis { paths: vec![path], rows: values.into_iter().map(|v| vec![v]).collect() });
    }
    for (g, group) in spec.zip.iter().enumerate() {
        let mut paths = Vec::new();
        let mut columns = Vec::new();
        for (path, values) in group {
            let path = key_string(path)?;
            columns.push(values_of(&path, values)?);
            paths.push(path);
        }
        let len = columns.first().map_or(0, Vec::len);
        if columns.iter().any(|c| c.len() != len) {
            let lens: Vec<String> =
                paths.iter().zip(&columns).map(|(p, c)| format!("{p}: {}", c.len())).collect();
            return Err(format!("sweep.zip[{g}]: lists must have equal lengths ({})", lens.join(", ")));
        }
        if len == 0 {
            return Err(format!("sweep.zip[{g}]: empty group; give each path a non-empty list"));
        }
        axes.push(Axis {
            paths,
            rows: (0..len).map(|i| columns.iter().map(|c| c[i].clone()).collect()).collect(),
        });
    }
    if let Some(seeds) = seeds(spec, base_seed)? {
        axes.push(Axis {
            paths: vec!["train.seed".into()],
            rows: seeds.into_iter().map(|s| vec![Value::from(s)]).collect(),
        });
    }
    let mut points = vec![Point { overrides: Vec::new() }];
    for axis in &axes {
        points = points
            .into_iter()
            .flat_map(|p| {
                axis.rows.iter().map(move |row| {
                    let mut overrides = p.overrides.clone();
                    overrides.extend(axis.paths.iter().cloned().zip(row.iter().cloned()));
                    Point { overrides }
                })
            })
            .collect();
    }
    let excludes: Vec<Vec<(String, Value)>> = spec
        .exclude
        .iter()
        .map(|m| m.iter().map(|(k, v)| Ok((key_string(k)?, v.clone()))).collect::<Result<_, String>>())
        .collect::<Result<_, _>>()?;
    points.retain(|p| {
        !excludes
            .iter()
            .any(|ex| ex.iter().all(|(k, v)| p.overrides.iter().any(|(pk, pv)| pk == k && pv == v)))
    });
    if points.is_empty() {
        return Err("sweep: the grid is empty after `exclude`; nothing would run".into());
    }
    Ok(points)
}

fn key_string(key: &Value) -> Result<String, String> {
    match key {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        other => Err(format!("sweep: keys must be dotted config paths, found {other:?}")),
    }
}

/// A grid entry's values: a non-empty list, or `range(start, stop, step)` (stop excluded).
fn values_of(path: &str, v: &Value) -> Result<Vec<Value>, String> {
    match v {
        Value::Sequence(items) if items.is_empty() => Err(format!("sweep: `{path}` has an empty list")),
        Value::Sequence(items) => Ok(items.clone()),
        Value::String(s) if s.trim_start().starts_with("range(") => {
            parse_range(s).map_err(|e| format!("sweep: `{path}`: {e}"))
        }
        other => Err(format!(
            "sweep: `{path}` must be a list of values or range(start, stop, step), found {}",
            inline(other)
        )),
    }
}

/// `range(a, b, step)` → a, a+step, … < b (integers when all three are).
pub fn parse_range(s: &str) -> Result<Vec<Value>, String> {
    let inner = s
        .trim()
        .strip_prefix("range(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or("write range(start, stop, step)")?;
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        return Err(format!("range takes 3 numbers (start, stop, step), got {}", parts.len()));
    }
    if parts.iter().all(|p| p.parse::<i64>().is_ok()) {
        let [a, b, step] = [0, 1, 2].map(|i| parts[i].parse::<i64>().unwrap_or_default());
        if step <= 0 || b <= a {
            return Err("range needs step > 0 and stop > start".into());
        }
        return Ok((a..b).step_by(step as usize).map(Value::from).collect());
    }
    let nums: Vec<f64> = parts
        .iter()
        .map(|p| p.parse::<f64>().map_err(|_| format!("`{p}` is not a number")))
        .collect::<Result<_, _>>()?;
    let (a, b, step) = (nums[0], nums[1], nums[2]);
    if !(step > 0.0) || b <= a {
        return Err("range needs step > 0 and stop > start".into());
    }
    let n = ((b - a) / step - 1e-9).ceil() as usize;
    // round to 12 significant digits so 0.1 + 2·0.1 prints as 0.3
    Ok((0..n)
        .map(|i| a + i as f64 * step)
        .map(|v| Value::from(format!("{v:.12e}").parse::<f64>().unwrap_or(v)))
        .collect())
}

/// Set `path` (dotted) in `root` to `value`, creating intermediate mappings.
pub fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    for part in path_segments(path) {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let map = node.as_mapping_mut().expect("made a mapping above");
        node = map.entry(Value::from(part)).or_insert(Value::Null);
    }
    *node = value;
}

/// The value at `path` (dotted), if any.
pub fn get_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path_segments(path).into_iter().try_fold(root, |node, part| node.as_mapping()?.get(part.as_str()))
}

/// The keys of a dotted path; a segment in double quotes may hold dots and globs
/// (`model.layers."blocks.*.attn".quantizer` → `model`, `layers`, `blocks.*.attn`, `quantizer`).
pub fn path_segments(path: &str) -> Vec<String> {
    let mut segments = vec![String::new()];
    let mut quoted = false;
    for c in path.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => segments.push(String::new()),
            _ => segments.last_mut().expect("starts with one").push(c),
        }
    }
    segments
}

/// Deep merge: keys of `over` replace those of `base`; mappings merge recursively.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// A value on one line (for listings and messages).
pub fn inline(v: &Value) -> String {
    inline_with(v, &|_| None)
}

/// A value on one line, floats written by `float` where it returns a text.
pub fn inline_with(v: &Value, float: &dyn Fn(f64) -> Option<String>) -> String {
    match v {
        Value::Mapping(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", inline_with(k, float), inline_with(v, float)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Sequence(s) => {
            format!("[{}]", s.iter().map(|v| inline_with(v, float)).collect::<Vec<_>>().join(", "))
        }
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        Value::Number(n) if n.is_f64() => match float(n.as_f64().unwrap_or_default()) {
            Some(text) => text,
            None => serde_yaml::to_string(v).map(|s| s.trim().to_string()).unwrap_or_default(),
        },
        other => serde_yaml::to_string(other).map(|s| s.trim().to_string()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> SweepSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn render(points: &[Point]) -> Vec<String> {
        points
            .iter()
            .map(|p| {
                p.overrides.iter().map(|(k, v)| format!("{k}={}", inline(v))).collect::<Vec<_>>().join(" ")
            })
            .collect()
    }

    #[test]
    fn grid_is_a_cartesian_product_with_seeds_innermost() {
        let points = expand(&spec("grid: {a: [1, 2], b.c: [x, y]}\nseeds: [7, 8]"), 0).unwrap();
        assert_eq!(points.len(), 8);
        assert_eq!(
            render(&points)[..3],
            ["a=1 b.c=x train.seed=7", "a=1 b.c=x train.seed=8", "a=1 b.c=y train.seed=7"]
        );
    }

    #[test]
    fn zip_advances_together_and_repeats_count_from_the_base_seed() {
        let points = expand(&spec("zip: [{a: [1, 2], b: [3, 4]}]\nrepeats: 2"), 5).unwrap();
        assert_eq!(
            render(&points),
            ["a=1 b=3 train.seed=5", "a=1 b=3 train.seed=6", "a=2 b=4 train.seed=5", "a=2 b=4 train.seed=6"]
        );
    }

    #[test]
    fn exclude_drops_matching_combinations_and_lists_hold_sub_configs() {
        let s = "grid: {quantizer: [ternary, {name: int, bits: 2}], w: [32, 64]}\nexclude: [{quantizer: ternary, w: 32}]";
        let points = expand(&spec(s), 0).unwrap();
        assert_eq!(
            render(&points),
            [
                "quantizer=ternary w=64",
                "quantizer={name: int, bits: 2} w=32",
                "quantizer={name: int, bits: 2} w=64"
            ]
        );
    }

    #[test]
    fn ranges_expand_like_python() {
        assert_eq!(
            parse_range("range(1, 7, 2)").unwrap(),
            vec![Value::from(1), Value::from(3), Value::from(5)]
        );
        assert_eq!(
            parse_range("range(0.1, 0.4, 0.1)").unwrap(),
            vec![Value::from(0.1), Value::from(0.2), Value::from(0.3)]
        );
        assert!(parse_range("range(1, 2)").unwrap_err().contains("3 numbers"));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(expand(&spec("grid: {a: []}"), 0).unwrap_err(), "sweep: `a` has an empty list");
        assert!(expand(&spec("zip: [{a: [1], b: [1, 2]}]"), 0)
            .unwrap_err()
            .contains("equal lengths (a: 1, b: 2)"));
        assert!(expand(&spec("grid: {a: [1]}\nexclude: [{a: 1}]"), 0)
            .unwrap_err()
            .contains("empty after `exclude`"));
        assert!(expand(&spec("grid: {a: 3}"), 0).unwrap_err().contains("must be a list"));
    }

    #[test]
    fn set_get_and_merge_paths() {
        let mut v: Value = serde_yaml::from_str("a: {b: 1}").unwrap();
        set_path(&mut v, "a.\"x.*\".d", Value::from(3));
        assert_eq!(get_path(&v, "a.\"x.*\".d"), Some(&Value::from(3)));
        assert_eq!(
            path_segments("model.layers.\"blocks.*.attn\".quantizer"),
            ["model", "layers", "blocks.*.attn", "quantizer"]
        );
        set_path(&mut v, "a.c.d", Value::from(2));
        assert_eq!(get_path(&v, "a.c.d"), Some(&Value::from(2)));
        merge(&mut v, serde_yaml::from_str("a: {b: 5}").unwrap());
        assert_eq!(get_path(&v, "a.b"), Some(&Value::from(5)));
        assert_eq!(get_path(&v, "a.c.d"), Some(&Value::from(2)));
    }
}
