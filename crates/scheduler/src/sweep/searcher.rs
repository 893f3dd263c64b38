//! Searchers: which parameters trial `index` runs with. One contract ([`Searcher`]), three implementations (grid,
//! random, TPE).
//!
//! Determinism: a suggestion is a pure function of (spec, seed, index, history). The random number generator of
//! trial `index` is seeded from (seed, index) alone, and TPE is rebuilt from the history every time, so a new
//! leader that reads the same replicated history proposes the same trial, and a repeated proposal is the same.
//! The history is the trials with an objective value (completed trials with their final value, pruned and failed
//! ones with their last reported value), in index order; running trials are not part of it.
//!
//! TPE is the `tpe` crate (univariate: one estimator per parameter, like Optuna's default `TPESampler`); a
//! parameter that was inactive in a trial (its `when` did not hold) is told as NaN, which the crate skips. The
//! first `startup_trials` suggestions are random, as in Optuna.

use std::collections::BTreeMap;

use aidos_api::sweep::{is_active, order};
use aidos_api::v1::{ParamKind, ParamSpec, SearcherKind, SweepSpec};
use rand10::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus};

/// A trial's parameters: name -> value (active parameters only).
pub type Params = BTreeMap<String, serde_json::Value>;

/// A trial the searcher learns from: its parameters and its objective, as a value to minimise.
#[derive(Debug, Clone)]
pub struct Observation {
    pub params: Params,
    pub loss: f64,
}

/// Most points of a grid (the cartesian product is enumerated lazily up to the trial asked for).
pub const MAX_GRID_VALUES_PER_PARAM: usize = 1000;

pub trait Searcher {
    /// The parameters of trial `index`; `None` when the space is exhausted (a grid with fewer points).
    fn suggest(&self, spec: &SweepSpec, index: u32, history: &[Observation]) -> Result<Option<Params>, String>;
}

pub fn for_spec(spec: &SweepSpec) -> Box<dyn Searcher + Send + Sync> {
    match SearcherKind::try_from(spec.searcher).unwrap_or(SearcherKind::Tpe) {
        SearcherKind::Grid => Box::new(Grid),
        SearcherKind::Random => Box::new(Random),
        SearcherKind::Tpe | SearcherKind::Unspecified => Box::new(Tpe),
    }
}

fn rng_for(seed: u64, index: u32) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_add(1))
}

fn kind(p: &ParamSpec) -> ParamKind {
    ParamKind::try_from(p.kind).unwrap_or(ParamKind::Unspecified)
}

fn choice(p: &ParamSpec, i: usize) -> Result<serde_json::Value, String> {
    let c = p.choices.get(i).ok_or_else(|| format!("{}: no choice {i}", p.name))?;
    serde_json::from_str(c).map_err(|e| format!("{}: choice {i}: {e}", p.name))
}

/// Number of values of an integer parameter (grid search takes at most [`MAX_GRID_VALUES_PER_PARAM`] of them).
fn int_count(p: &ParamSpec) -> usize {
    ((p.high - p.low) / p.step).floor() as usize + 1
}

fn int_value(p: &ParamSpec, i: usize) -> serde_json::Value {
    serde_json::json!((p.low + p.step * i as f64) as i64)
}

/// The label a chosen value is matched against in conditions.
fn label_of(p: &ParamSpec, v: &serde_json::Value) -> String {
    if kind(p) == ParamKind::Categorical {
        for (i, c) in p.choices.iter().enumerate() {
            if serde_json::from_str::<serde_json::Value>(c).ok().as_ref() == Some(v) {
                return p.labels[i].clone();
            }
        }
    }
    aidos_api::sweep::choice_label(v)
}

/// Walks the parameters parents first; `pick` chooses each active one.
fn build(
    spec: &SweepSpec,
    mut pick: impl FnMut(&ParamSpec) -> Result<serde_json::Value, String>,
) -> Result<Params, String> {
    let mut out = Params::new();
    let mut labels = BTreeMap::new();
    for p in order(&spec.params).map_err(|n| format!("sweep.params.{n}.when: conditions form a cycle"))? {
        if !is_active(p, &labels) {
            continue;
        }
        let v = pick(p)?;
        labels.insert(p.name.clone(), label_of(p, &v));
        out.insert(p.name.clone(), v);
    }
    Ok(out)
}

fn sample_random(p: &ParamSpec, rng: &mut Xoshiro256PlusPlus) -> Result<serde_json::Value, String> {
    let u: f64 = rng.random();
    Ok(match kind(p) {
        ParamKind::Uniform => serde_json::json!(p.low + u * (p.high - p.low)),
        ParamKind::LogUniform => serde_json::json!((p.low.ln() + u * (p.high.ln() - p.low.ln())).exp()),
        ParamKind::Int => int_value(p, ((u * int_count(p) as f64) as usize).min(int_count(p) - 1)),
        ParamKind::Categorical => choice(p, ((u * p.choices.len() as f64) as usize).min(p.choices.len() - 1))?,
        ParamKind::Unspecified => return Err(format!("{}: no kind", p.name)),
    })
}

pub struct Random;

impl Searcher for Random {
    fn suggest(&self, spec: &SweepSpec, index: u32, _: &[Observation]) -> Result<Option<Params>, String> {
        let mut rng = rng_for(spec.seed, index);
        build(spec, |p| sample_random(p, &mut rng)).map(Some)
    }
}

/// Grid search: the cartesian product of every parameter's values (categorical: its choices; integer: every step;
/// uniform and log-uniform: `grid_points` evenly spaced, default 5), inactive parameters left out, in a fixed
/// order; trial `index` runs point `index`.
pub struct Grid;

fn grid_values(p: &ParamSpec) -> Result<Vec<serde_json::Value>, String> {
    let n = if p.grid_points == 0 { 5 } else { p.grid_points as usize }.clamp(2, MAX_GRID_VALUES_PER_PARAM);
    Ok(match kind(p) {
        ParamKind::Uniform => {
            (0..n).map(|i| serde_json::json!(p.low + (p.high - p.low) * i as f64 / (n - 1) as f64)).collect()
        }
        ParamKind::LogUniform => (0..n)
            .map(|i| serde_json::json!((p.low.ln() + (p.high.ln() - p.low.ln()) * i as f64 / (n - 1) as f64).exp()))
            .collect(),
        ParamKind::Int => (0..int_count(p).min(MAX_GRID_VALUES_PER_PARAM)).map(|i| int_value(p, i)).collect(),
        ParamKind::Categorical => (0..p.choices.len()).map(|i| choice(p, i)).collect::<Result<_, _>>()?,
        ParamKind::Unspecified => return Err(format!("{}: no kind", p.name)),
    })
}

impl Searcher for Grid {
    fn suggest(&self, spec: &SweepSpec, index: u32, _: &[Observation]) -> Result<Option<Params>, String> {
        let params = order(&spec.params).map_err(|n| format!("sweep.params.{n}.when: conditions form a cycle"))?;
        let values: Vec<Vec<serde_json::Value>> = params.iter().map(|p| grid_values(p)).collect::<Result<_, _>>()?;
        let mut w = GridWalk { params: &params, values: &values, want: index, seen: 0, found: None };
        w.walk(0, &mut Params::new(), &mut BTreeMap::new());
        Ok(w.found)
    }
}

/// Depth-first over the parameters in order; an inactive parameter contributes one (empty) branch.
struct GridWalk<'a> {
    params: &'a [&'a ParamSpec],
    values: &'a [Vec<serde_json::Value>],
    want: u32,
    seen: u32,
    found: Option<Params>,
}

impl GridWalk<'_> {
    fn walk(&mut self, at: usize, cur: &mut Params, labels: &mut BTreeMap<String, String>) {
        if self.found.is_some() {
            return;
        }
        if at == self.params.len() {
            if self.seen == self.want {
                self.found = Some(cur.clone());
            }
            self.seen += 1;
            return;
        }
        let p = self.params[at];
        if !is_active(p, labels) {
            return self.walk(at + 1, cur, labels);
        }
        for v in &self.values[at] {
            cur.insert(p.name.clone(), v.clone());
            labels.insert(p.name.clone(), label_of(p, v));
            self.walk(at + 1, cur, labels);
            if self.found.is_some() {
                return;
            }
        }
        cur.remove(&p.name);
        labels.remove(&p.name);
    }
}

pub struct Tpe;

/// A parameter's value in the space TPE models: log for log-uniform, the step index for integers, the choice
/// index for categorical parameters.
fn internal(p: &ParamSpec, v: &serde_json::Value) -> Option<f64> {
    match kind(p) {
        ParamKind::Uniform => v.as_f64(),
        ParamKind::LogUniform => v.as_f64().filter(|x| *x > 0.0).map(f64::ln),
        ParamKind::Int => v.as_f64().map(|x| ((x - p.low) / p.step).round() + 0.5),
        ParamKind::Categorical => p
            .choices
            .iter()
            .position(|c| serde_json::from_str::<serde_json::Value>(c).ok().as_ref() == Some(v))
            .map(|i| i as f64),
        ParamKind::Unspecified => None,
    }
}

fn tpe_range(p: &ParamSpec) -> Result<tpe::range::Range, String> {
    let r = match kind(p) {
        ParamKind::Uniform => tpe::range(p.low, p.high),
        ParamKind::LogUniform => tpe::range(p.low.ln(), p.high.ln()),
        ParamKind::Int => tpe::range(0.0, int_count(p) as f64),
        ParamKind::Categorical => tpe::categorical_range(p.choices.len()),
        ParamKind::Unspecified => return Err(format!("{}: no kind", p.name)),
    };
    r.map_err(|e| format!("{}: {e:?}", p.name))
}

impl Searcher for Tpe {
    fn suggest(&self, spec: &SweepSpec, index: u32, history: &[Observation]) -> Result<Option<Params>, String> {
        let startup = if spec.startup_trials == 0 { 10 } else { spec.startup_trials } as usize;
        if history.len() < startup {
            return Random.suggest(spec, index, history);
        }
        let mut rng = rng_for(spec.seed, index);
        build(spec, |p| {
            let range = tpe_range(p)?;
            let value = if kind(p) == ParamKind::Categorical {
                let mut o = tpe::TpeOptimizer::new(tpe::histogram_estimator(), range);
                for h in history {
                    let x = h.params.get(&p.name).and_then(|v| internal(p, v)).unwrap_or(f64::NAN);
                    o.tell(x, h.loss).map_err(|e| format!("{}: {e:?}", p.name))?;
                }
                o.ask(&mut rng).map_err(|e| format!("{}: {e:?}", p.name))?
            } else {
                let mut o = tpe::TpeOptimizer::new(tpe::parzen_estimator(), range);
                for h in history {
                    let x = h.params.get(&p.name).and_then(|v| internal(p, v)).unwrap_or(f64::NAN);
                    let x = if x.is_nan() { x } else { x.clamp(range.start(), range.end() - range.width() * 1e-12) };
                    o.tell(x, h.loss).map_err(|e| format!("{}: {e:?}", p.name))?;
                }
                o.ask(&mut rng).map_err(|e| format!("{}: {e:?}", p.name))?
            };
            Ok(match kind(p) {
                ParamKind::Uniform => serde_json::json!(value),
                ParamKind::LogUniform => serde_json::json!(value.exp()),
                ParamKind::Int => int_value(p, (value.floor().max(0.0) as usize).min(int_count(p) - 1)),
                _ => choice(p, (value.floor().max(0.0) as usize).min(p.choices.len() - 1))?,
            })
        })
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(searcher: &str, extra: &str) -> SweepSpec {
        aidos_api::sweep::parse_toml(&format!(
            r#"
[sweep]
metric = "y"
searcher = "{searcher}"
seed = 3
max_trials = 60
startup_trials = 8
[sweep.params]
x = {{ uniform = [-5.0, 5.0] }}
kind = {{ choices = ["a", "b"] }}
k = {{ int = [1, 7], step = 2, when = "kind=b" }}
{extra}
[trial]
process = {{ executable = "/bin/true", args = ["${{x}}"] }}
"#
        ))
        .unwrap()
    }

    /// The function the tests minimise: best (0) at x = 1 with kind b and k = 5.
    fn objective(p: &Params) -> f64 {
        let x = p["x"].as_f64().unwrap();
        let penalty = if p["kind"] == "b" { (p["k"].as_f64().unwrap() - 5.0).abs() * 0.1 } else { 1.0 };
        (x - 1.0).powi(2) + penalty
    }

    fn run(s: &dyn Searcher, spec: &SweepSpec, n: u32) -> Vec<(Params, f64)> {
        let mut history = Vec::new();
        let mut out = Vec::new();
        for i in 0..n {
            let Some(p) = s.suggest(spec, i, &history).unwrap() else { break };
            let y = objective(&p);
            history.push(Observation { params: p.clone(), loss: y });
            out.push((p, y));
        }
        out
    }

    #[test]
    fn conditional_parameters_appear_only_when_their_condition_holds() {
        let s = spec("random", "");
        for (p, _) in run(&Random, &s, 40) {
            assert_eq!(p.contains_key("k"), p["kind"] == "b", "{p:?}");
            if let Some(k) = p.get("k") {
                assert!([1, 3, 5, 7].contains(&k.as_i64().unwrap()), "{k}");
            }
            let x = p["x"].as_f64().unwrap();
            assert!((-5.0..5.0).contains(&x));
        }
    }

    #[test]
    fn same_seed_and_history_give_the_same_trials() {
        let s = spec("tpe", "");
        let a = run(&Tpe, &s, 30);
        let b = run(&Tpe, &s, 30);
        assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
        let mut other = s.clone();
        other.seed = 4;
        assert_ne!(a[0].0, run(&Tpe, &other, 1)[0].0, "another seed, other trials");
    }

    #[test]
    fn tpe_beats_random_search_on_a_known_function() {
        // A smooth function of two parameters, best (0) at x = 1, y = -2; averaged over seeds, so the comparison
        // is not one lucky draw.
        let spec = |seed: u64| {
            aidos_api::sweep::parse_toml(&format!(
                "[sweep]\nmetric = \"y\"\nseed = {seed}\nmax_trials = 40\n[sweep.params]\nx = {{ uniform = [-5.0, 5.0] }}\ny = {{ uniform = [-5.0, 5.0] }}\n[trial]\nprocess = {{ executable = \"/bin/true\" }}\n"
            ))
            .unwrap()
        };
        let f = |p: &Params| (p["x"].as_f64().unwrap() - 1.0).powi(2) + (p["y"].as_f64().unwrap() + 2.0).powi(2);
        let best = |s: &dyn Searcher, spec: &SweepSpec| {
            let mut history = Vec::new();
            for i in 0..40 {
                let p = s.suggest(spec, i, &history).unwrap().unwrap();
                let loss = f(&p);
                history.push(Observation { params: p, loss });
            }
            history.iter().map(|h| h.loss).fold(f64::INFINITY, f64::min)
        };
        let (mut tpe, mut rnd) = (0.0, 0.0);
        for seed in 0..10 {
            tpe += best(&Tpe, &spec(seed)) / 10.0;
            rnd += best(&Random, &spec(seed)) / 10.0;
        }
        assert!(tpe < rnd / 2.0, "TPE mean best {tpe} vs random {rnd}");
    }

    #[test]
    fn a_wide_integer_range_is_sampled_whole() {
        let s = aidos_api::sweep::parse_toml(
            "[sweep]\nmetric = \"y\"\nmax_trials = 9\n[sweep.params]\nn = { int = [0, 100000000] }\n[trial]\nprocess = { executable = \"/bin/true\" }\n",
        )
        .unwrap();
        let high = (0..50)
            .filter_map(|i| Random.suggest(&s, i, &[]).unwrap())
            .filter(|p| p["n"].as_i64().unwrap() > 1 << 20)
            .count();
        assert!(high > 40, "values above 2^20 are drawn ({high} of 50)");
    }

    #[test]
    fn grid_enumerates_the_product_without_inactive_duplicates() {
        let mut s = spec("grid", "");
        s.params.retain(|p| p.name != "x");
        let all = |s: &SweepSpec| (0..).map_while(|i| Grid.suggest(s, i, &[]).unwrap()).collect::<Vec<_>>();
        // kind=a (k inactive): 1 point; kind=b: 4 values of k.
        assert_eq!(all(&s).len(), 5, "{:?}", all(&s));
        let mut u = spec("grid", "");
        u.params.iter_mut().for_each(|p| p.grid_points = 3);
        assert_eq!(all(&u).len(), 15, "x at 3 points");
        assert_eq!(
            all(&u).iter().map(|p| serde_json::to_string(p).unwrap()).collect::<std::collections::BTreeSet<_>>().len(),
            15,
            "no point twice"
        );
    }
}
