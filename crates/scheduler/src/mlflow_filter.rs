//! MLflow's run search language, the part clients use: `filter` is comparisons joined by `AND`, each
//! `<entity>.<key> <op> <value>` with entity `metrics`, `params`, `tags` or `attributes` (`status`, `run_name`,
//! `run_id`, `start_time`, `end_time`), op `=`, `!=`, `>`, `>=`, `<`, `<=`, `LIKE` or `ILIKE` (`%` any run of
//! characters, `_` one), and a value quoted ('...' or "...") for strings or bare for numbers; keys with spaces or
//! dots are quoted with backticks. `order_by` is one `<entity>.<key> [ASC|DESC]` (default: start_time DESC).
//! Anything else is refused with what was not understood. Pure functions.

use std::cmp::Ordering;

use aidos_api::v1::Run;

#[derive(Debug, Clone, PartialEq)]
enum Entity {
    Metric,
    Param,
    Tag,
    Attribute,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone, PartialEq)]
struct Clause {
    entity: Entity,
    key: String,
    op: String,
    value: Value,
}

/// A parsed filter: every clause must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter(Vec<Clause>);

fn entity(s: &str) -> Result<Entity, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "metrics" | "metric" => Entity::Metric,
        "params" | "param" | "parameter" | "parameters" => Entity::Param,
        "tags" | "tag" => Entity::Tag,
        "attributes" | "attribute" | "attr" | "run" => Entity::Attribute,
        other => return Err(format!("{other:?} is not metrics, params, tags or attributes")),
    })
}

/// Splits `s` into tokens: identifiers with dots, backticked keys, quoted strings, numbers and operators.
fn tokens(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' || c == '`' {
            let end = cs[i + 1..].iter().position(|&d| d == c).ok_or(format!("unclosed {c} at {i}"))? + i + 1;
            out.push(cs[i..=end].iter().collect());
            i = end + 1;
        } else if "=!<>".contains(c) {
            let two = cs.get(i + 1) == Some(&'=');
            out.push(cs[i..i + 1 + two as usize].iter().collect());
            i += 1 + two as usize;
        } else {
            let start = i;
            // A word, which may continue with a backticked key after a dot (`metrics.`a b``).
            while i < cs.len() && !cs[i].is_whitespace() && !"=!<>'\"".contains(cs[i]) {
                if cs[i] == '`' {
                    let end = cs[i + 1..].iter().position(|&d| d == '`').ok_or("unclosed `")? + i + 1;
                    i = end;
                }
                i += 1;
            }
            out.push(cs[start..i].iter().collect());
        }
    }
    Ok(out)
}

fn unquote(s: &str) -> &str {
    s.trim_matches(|c| c == '`' || c == '"' || c == '\'')
}

/// Parses a filter ("" matches every run).
pub fn parse(s: &str) -> Result<Filter, String> {
    let t = tokens(s)?;
    let mut clauses = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if !clauses.is_empty() {
            if !t[i].eq_ignore_ascii_case("and") {
                return Err(format!("expected AND, found {:?} (OR is not supported)", t[i]));
            }
            i += 1;
        }
        let [ident, op, value] = [t.get(i), t.get(i + 1), t.get(i + 2)].map(|x| x.cloned());
        let (Some(ident), Some(op), Some(value)) = (ident, op, value) else {
            return Err(format!("incomplete comparison at {:?}", t[i..].join(" ")));
        };
        let (e, key) = ident.split_once('.').ok_or(format!("{ident:?}: expected <entity>.<key>"))?;
        let op = op.to_ascii_uppercase();
        if !["=", "!=", ">", ">=", "<", "<=", "LIKE", "ILIKE"].contains(&op.as_str()) {
            return Err(format!("{op:?} is not a comparison"));
        }
        let value = if value.starts_with('\'') || value.starts_with('"') {
            Value::Str(unquote(&value).to_string())
        } else {
            Value::Num(value.parse().map_err(|_| format!("{value:?}: quote strings, numbers stand bare"))?)
        };
        clauses.push(Clause { entity: entity(e)?, key: unquote(key).to_string(), op, value });
        i += 3;
    }
    Ok(Filter(clauses))
}

/// The latest value of metric `key` in `r` (the rule of `mlflow::latest_metrics`).
fn metric(r: &Run, key: &str) -> Option<f64> {
    crate::mlflow::latest_metrics(r).get(key).map(|p| p.value)
}

fn attribute(r: &Run, key: &str) -> Option<Value> {
    Some(match key {
        "status" => Value::Str(r.status.clone()),
        "run_name" | "name" => Value::Str(if r.name.is_empty() { r.id.clone() } else { r.name.clone() }),
        "run_id" => Value::Str(crate::mlflow::mlflow_run_id(&r.id)),
        "start_time" => Value::Num(r.created_at_ms as f64),
        "end_time" => Value::Num(r.ended_at_ms as f64),
        _ => return None,
    })
}

fn field(r: &Run, e: &Entity, key: &str) -> Option<Value> {
    match e {
        Entity::Metric => metric(r, key).map(Value::Num),
        Entity::Param => r.params.get(key).map(|v| Value::Str(v.clone())),
        Entity::Tag => r.tags.get(key).map(|v| Value::Str(v.clone())),
        Entity::Attribute => attribute(r, key),
    }
}

/// SQL LIKE: `%` any run of characters, `_` one. The classic greedy match with one backtrack point (the last
/// `%`): O(len(s) · len(p)) at worst, whatever the pattern (a recursive match is exponential in the `%`s).
fn like(s: &[char], p: &[char]) -> bool {
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if j < p.len() && (p[j] == '_' || (p[j] != '%' && p[j] == s[i])) {
            i += 1;
            j += 1;
        } else if j < p.len() && p[j] == '%' {
            star = Some((j, i));
            j += 1;
        } else if let Some((sj, si)) = star {
            // Let the last `%` take one more character and retry from there.
            star = Some((sj, si + 1));
            i = si + 1;
            j = sj + 1;
        } else {
            return false;
        }
    }
    p[j..].iter().all(|&c| c == '%')
}

impl Clause {
    fn holds(&self, r: &Run) -> bool {
        let Some(have) = field(r, &self.entity, &self.key) else { return false };
        let ord = match (&have, &self.value) {
            (Value::Num(a), Value::Num(b)) => a.partial_cmp(b),
            (Value::Str(a), Value::Str(b)) if self.op == "LIKE" => return like(&chars(a), &chars(b)),
            (Value::Str(a), Value::Str(b)) if self.op == "ILIKE" => {
                return like(&chars(&a.to_lowercase()), &chars(&b.to_lowercase()));
            }
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            // A param compared with a number: params are strings, compared as numbers when both parse.
            (Value::Str(a), Value::Num(b)) => a.parse::<f64>().ok().and_then(|a| a.partial_cmp(b)),
            (Value::Num(_), Value::Str(_)) => None,
        };
        let Some(ord) = ord else { return false };
        match self.op.as_str() {
            "=" => ord == Ordering::Equal,
            "!=" => ord != Ordering::Equal,
            ">" => ord == Ordering::Greater,
            ">=" => ord != Ordering::Less,
            "<" => ord == Ordering::Less,
            "<=" => ord != Ordering::Greater,
            _ => false,
        }
    }
}

fn chars(s: &str) -> Vec<char> {
    s.chars().collect()
}

impl Filter {
    pub fn matches(&self, r: &Run) -> bool {
        self.0.iter().all(|c| c.holds(r))
    }
}

/// Sorts `runs` by `order` (`<entity>.<key> [ASC|DESC]`; "" : start_time DESC). Runs without the key go last.
pub fn sort(runs: &mut [&Run], order: &str) -> Result<(), String> {
    let mut words = order.split_whitespace();
    let (key, dir) = (
        words.next().unwrap_or("attributes.start_time"),
        words.next().unwrap_or(if order.is_empty() { "DESC" } else { "ASC" }),
    );
    let desc = match dir.to_ascii_uppercase().as_str() {
        "ASC" => false,
        "DESC" => true,
        other => return Err(format!("{other:?}: ASC or DESC")),
    };
    let (e, k) = key.split_once('.').map_or(Ok((Entity::Attribute, key)), |(e, k)| entity(e).map(|e| (e, k)))?;
    let k = unquote(k);
    runs.sort_by(|a, b| {
        let (x, y) = (field(a, &e, k), field(b, &e, k));
        let o = match (&x, &y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => return Ordering::Greater,
            (Some(_), None) => return Ordering::Less,
            (Some(Value::Num(x)), Some(Value::Num(y))) => x.total_cmp(y),
            (Some(Value::Str(x)), Some(Value::Str(y))) => x.cmp(y),
            _ => Ordering::Equal,
        };
        if desc { o.reverse() } else { o }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use aidos_api::v1::MetricPoint;

    use super::*;

    fn run(id: &str, acc: f64, lr: &str, status: &str, start: i64) -> Run {
        Run {
            id: id.into(),
            status: status.into(),
            created_at_ms: start,
            params: [("lr".to_string(), lr.to_string())].into(),
            tags: [("team".to_string(), "vision".to_string())].into(),
            metrics: vec![
                MetricPoint { name: "acc".into(), value: acc / 2.0, step: 1, ..Default::default() },
                MetricPoint { name: "acc".into(), value: acc, step: 2, ..Default::default() },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn clauses_compare_the_latest_metric_params_tags_and_attributes() {
        let a = run("ml-a", 0.9, "0.01", "FINISHED", 1);
        let b = run("ml-b", 0.7, "0.1", "RUNNING", 2);
        let f = parse(
            "metrics.acc > 0.8 AND params.lr = '0.01' and tags.team LIKE 'vis%' AND attributes.status = 'FINISHED'",
        )
        .unwrap();
        assert!(f.matches(&a));
        assert!(!f.matches(&b));
        assert!(parse("metrics.acc <= 0.7").unwrap().matches(&b));
        assert!(parse("params.lr >= 0.05").unwrap().matches(&b), "params compare as numbers when both parse");
        assert!(parse("").unwrap().matches(&a));
        assert!(!parse("metrics.missing > 0").unwrap().matches(&a));
        assert!(parse("tags.`team` ILIKE 'VISION'").unwrap().matches(&a));
        assert!(parse("run_name = 'ml-a'").is_err(), "an entity is required");
        for bad in [
            "metrics.acc > 1 OR metrics.acc < 0",
            "metrics.acc ~ 1",
            "metrics.acc > high",
            "colour.red = 'x'",
            "metrics.acc >",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn like_matches_wildcards_in_linear_time() {
        let m = |s: &str, p: &str| like(&chars(s), &chars(p));
        assert!(m("vision", "vis%") && m("vision", "%ion") && m("vision", "v_s%n") && m("", "%") && m("abc", "a%%c"));
        assert!(!m("vision", "vis") && !m("vision", "%x%") && !m("ab", "a_b") && !m("", "_"));
        // Exponential for a recursive matcher; immediate here.
        let long = "a".repeat(8000);
        assert!(!m(&long, "%a%a%a%a%a%a%a%a%a%a%a%a%b"));
        assert!(m(&long, "%a%a%a%a%a%a%a%a%a%a%a%a%"));
    }

    #[test]
    fn order_by_sorts_with_missing_values_last() {
        let (a, b, c) = (
            run("a", 0.9, "1", "", 3),
            run("b", 0.7, "2", "", 1),
            Run { id: "c".into(), created_at_ms: 2, ..Default::default() },
        );
        let mut rs = vec![&a, &b, &c];
        sort(&mut rs, "").unwrap();
        assert_eq!(rs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "c", "b"]);
        sort(&mut rs, "metrics.acc DESC").unwrap();
        assert_eq!(rs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        sort(&mut rs, "metrics.acc").unwrap();
        assert_eq!(rs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["b", "a", "c"]);
        assert!(sort(&mut rs, "metrics.acc SIDEWAYS").is_err());
    }
}
