//! Early stopping: whether a running trial goes on, passes a rung, or is pruned. A pure function of the trial's
//! reported values and the other trials' (no I/O, no clock).
//!
//! - **ASHA** (asynchronous successive halving, the stopping variant Optuna's `SuccessiveHalvingPruner` uses):
//!   rungs at r, r·η, r·η², ... below the trial's full budget. When a trial first reports at or past a rung's
//!   resource, its value there is compared with every other trial's value at that rung (running or ended): it
//!   goes on if it is in the top 1/η of them (Optuna's rule: among fewer than η values, only the best goes on);
//!   otherwise it is pruned. A passed rung is recorded in the trial, so the decision is never revisited (also not
//!   by a new leader that sees more values).
//! - **Hyperband**: brackets of ASHA with first rungs r·η^s, s = 0..=s_max; trial i runs in bracket i mod
//!   (s_max + 1) and is compared only within its bracket.
//! - **Promotion ASHA** (`PrunerSpec.promotion`, the variant of the ASHA paper): nothing is stopped while it runs;
//!   a trial pauses at each rung, and [`promotable`] names the paused trials a freed slot resumes: those in the top
//!   ⌊n/η⌋ of the n trials that reached their rung (running, paused or ended; fewer than η: none yet), highest rung
//!   first. Unlike the stopping variant, the first trials are not waved through a rung while it is nearly empty.
//! - **Median**: once `startup_trials` trials completed, past `warmup_steps`, a trial whose best value so far is
//!   worse than the median of the completed trials' values at the same resource is pruned.

use aidos_api::v1::{IntermediateValue, PrunerKind, PrunerSpec};

/// A trial as the pruner sees it.
#[derive(Debug, Clone, Default)]
pub struct TrialView {
    pub index: u32,
    pub bracket: u32,
    /// Rungs already passed.
    pub rung: u32,
    pub completed: bool,
    /// Promotion mode: waiting at rung `rung` for a promotion.
    pub paused: bool,
    /// Reported objective values, by increasing resource (the latest report for each resource).
    pub values: Vec<IntermediateValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Continue,
    /// Passed rung `rungs - 1`: record `rungs` rungs passed.
    Promote {
        rungs: u32,
    },
    Prune {
        reason: String,
    },
}

/// How many Hyperband brackets a pruner spec has (1 for ASHA).
pub fn brackets(p: &PrunerSpec) -> u32 {
    match PrunerKind::try_from(p.kind) {
        Ok(PrunerKind::Hyperband) => {
            let eta = p.reduction_factor.max(2) as f64;
            let ratio = p.max_resource as f64 / p.min_resource.max(1) as f64;
            ((ratio.ln() / eta.ln()).floor().max(0.0) as u32) + 1
        }
        _ => 1,
    }
}

/// The resource of rung `k` in `bracket`; `None` when it is not below the full budget (no such rung).
pub fn rung_resource(p: &PrunerSpec, bracket: u32, k: u32) -> Option<u64> {
    let eta = p.reduction_factor.max(2) as u64;
    let mut r = p.min_resource.max(1);
    for _ in 0..(bracket + k) {
        r = r.checked_mul(eta)?;
    }
    (r < p.max_resource).then_some(r)
}

/// The value a trial had at `resource`: its first report at or past it.
fn value_at(values: &[IntermediateValue], resource: u64) -> Option<f64> {
    values.iter().find(|v| v.resource >= resource).map(|v| v.value)
}

/// Orders objective values best first.
fn best_first(maximize: bool) -> impl Fn(&f64, &f64) -> std::cmp::Ordering {
    move |a, b| if maximize { b.total_cmp(a) } else { a.total_cmp(b) }
}

/// Orders paused trials as (rung, value at it, index) for promotion: highest rung first, then best value, then
/// lowest index.
fn promotion_order(maximize: bool) -> impl Fn(&(u32, f64, u32), &(u32, f64, u32)) -> std::cmp::Ordering {
    move |a, b| b.0.cmp(&a.0).then_with(|| best_first(maximize)(&a.1, &b.1)).then(a.2.cmp(&b.2))
}

/// `better(a, b)`: is `a` at least as good as `b`?
fn at_least_as_good(a: f64, b: f64, maximize: bool) -> bool {
    if maximize { a >= b } else { a <= b }
}

pub fn decide(p: &PrunerSpec, maximize: bool, trial: &TrialView, others: &[TrialView]) -> Verdict {
    match PrunerKind::try_from(p.kind).unwrap_or(PrunerKind::None) {
        PrunerKind::None => Verdict::Continue,
        PrunerKind::Asha | PrunerKind::Hyperband => successive_halving(p, maximize, trial, others),
        PrunerKind::Median => median(p, maximize, trial, others),
    }
}

fn successive_halving(p: &PrunerSpec, maximize: bool, trial: &TrialView, others: &[TrialView]) -> Verdict {
    let eta = p.reduction_factor.max(2) as usize;
    let mut rungs = trial.rung;
    while let Some(resource) = rung_resource(p, trial.bracket, rungs) {
        let Some(mine) = value_at(&trial.values, resource) else { break };
        let mut competing: Vec<f64> = others
            .iter()
            .filter(|o| o.index != trial.index && o.bracket == trial.bracket)
            .filter_map(|o| value_at(&o.values, resource))
            .filter(|v| !v.is_nan())
            .collect();
        competing.push(mine);
        // Best first.
        competing.sort_by(best_first(maximize));
        let keep = (competing.len() / eta).max(1);
        let threshold = competing[keep - 1];
        if mine.is_nan() || !at_least_as_good(mine, threshold, maximize) {
            return Verdict::Prune {
                reason: format!(
                    "pruned at rung {rungs} ({resource} units): {mine:.4} is not in the top 1/{eta} of {} trials (needed {threshold:.4})",
                    competing.len()
                ),
            };
        }
        rungs += 1;
    }
    if rungs > trial.rung { Verdict::Promote { rungs } } else { Verdict::Continue }
}

/// Promotion mode: the paused trials to resume, in order (highest rung first, then best value first). A trial
/// paused after passing `k` rungs waits at rung `k`; it is promotable when its value there is in the top ⌊n/η⌋ of
/// the `n` values the trials of its bracket have at that rung (NaN values count as the worst).
pub fn promotable(p: &PrunerSpec, maximize: bool, trials: &[TrialView]) -> Vec<u32> {
    let eta = p.reduction_factor.max(2) as usize;
    let mut out: Vec<(u32, f64, u32)> = Vec::new();
    for t in trials.iter().filter(|t| t.paused) {
        let Some(resource) = rung_resource(p, t.bracket, t.rung) else { continue };
        let Some(mine) = value_at(&t.values, resource).filter(|v| !v.is_nan()) else { continue };
        let mut at: Vec<f64> = trials
            .iter()
            .filter(|o| o.bracket == t.bracket)
            .filter_map(|o| value_at(&o.values, resource))
            .map(|v| if v.is_nan() { if maximize { f64::NEG_INFINITY } else { f64::INFINITY } } else { v })
            .collect();
        let keep = at.len() / eta;
        if keep == 0 {
            continue;
        }
        at.sort_by(best_first(maximize));
        if at_least_as_good(mine, at[keep - 1], maximize) {
            out.push((t.rung, mine, t.index));
        }
    }
    out.sort_by(promotion_order(maximize));
    out.into_iter().map(|(_, _, i)| i).collect()
}

/// Promotion mode, when the trial budget is spent before any rung held η values to promote from: the paused trial
/// of the highest rung with the best value there (ties: the lowest index), so the sweep still trains one trial to
/// the end. `None` when nothing is paused with a value.
pub fn best_paused(p: &PrunerSpec, maximize: bool, trials: &[TrialView]) -> Option<u32> {
    trials
        .iter()
        .filter(|t| t.paused)
        .filter_map(|t| {
            let v = value_at(&t.values, rung_resource(p, t.bracket, t.rung)?)?;
            (!v.is_nan()).then_some((t.rung, v, t.index))
        })
        .min_by(promotion_order(maximize))
        .map(|(_, _, i)| i)
}

fn median(p: &PrunerSpec, maximize: bool, trial: &TrialView, others: &[TrialView]) -> Verdict {
    let done: Vec<&TrialView> = others.iter().filter(|o| o.completed && o.index != trial.index).collect();
    let startup = if p.startup_trials == 0 { 5 } else { p.startup_trials } as usize;
    let Some(last) = trial.values.last() else { return Verdict::Continue };
    if done.len() < startup || last.resource < p.warmup_steps.max(1) {
        return Verdict::Continue;
    }
    let mut at: Vec<f64> = done
        .iter()
        .filter_map(|o| o.values.iter().take_while(|v| v.resource <= last.resource).last().map(|v| v.value))
        .filter(|v| !v.is_nan())
        .collect();
    if at.is_empty() {
        return Verdict::Continue;
    }
    at.sort_by(f64::total_cmp);
    let med = if at.len() % 2 == 1 { at[at.len() / 2] } else { (at[at.len() / 2 - 1] + at[at.len() / 2]) / 2.0 };
    let best =
        trial.values.iter().map(|v| v.value).fold(if maximize { f64::NEG_INFINITY } else { f64::INFINITY }, |a, b| {
            if maximize { a.max(b) } else { a.min(b) }
        });
    if at_least_as_good(best, med, maximize) {
        Verdict::Continue
    } else {
        Verdict::Prune {
            reason: format!(
                "pruned at {} units: best {best:.4} is worse than the median {med:.4} of {} completed trials",
                last.resource,
                at.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asha(kind: PrunerKind) -> PrunerSpec {
        PrunerSpec {
            kind: kind as i32,
            min_resource: 1,
            reduction_factor: 3,
            max_resource: 27,
            startup_trials: 2,
            warmup_steps: 1,
            promotion: false,
        }
    }

    fn t(index: u32, vals: &[(u64, f64)]) -> TrialView {
        TrialView {
            index,
            values: vals.iter().map(|&(resource, value)| IntermediateValue { resource, value }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn asha_keeps_the_top_third_at_each_rung() {
        let p = asha(PrunerKind::Asha);
        // Rungs at 1, 3, 9 (27 is the full budget, no rung).
        let others: Vec<TrialView> = (0..5).map(|i| t(i, &[(1, i as f64 / 10.0)])).collect();
        // Maximising: values 0.0..0.4 at rung 0; 6 values -> keep the top 2.
        assert_eq!(decide(&p, true, &t(9, &[(1, 0.35)]), &others), Verdict::Promote { rungs: 1 });
        assert!(matches!(decide(&p, true, &t(9, &[(1, 0.25)]), &others), Verdict::Prune { .. }));
        // Minimising flips it.
        assert_eq!(decide(&p, false, &t(9, &[(1, 0.05)]), &others), Verdict::Promote { rungs: 1 });
        // Not yet at a rung: go on.
        assert_eq!(decide(&p, true, &t(9, &[]), &others), Verdict::Continue);
        // The first trials (fewer than η values) go on only when best so far.
        assert_eq!(decide(&p, true, &t(1, &[(1, 0.5)]), &[t(0, &[(1, 0.4)])]), Verdict::Promote { rungs: 1 });
        assert!(matches!(decide(&p, true, &t(1, &[(1, 0.3)]), &[t(0, &[(1, 0.4)])]), Verdict::Prune { .. }));
        // A passed rung is not judged again; the next one is.
        let mut passed = t(9, &[(1, 0.0), (3, 0.9)]);
        passed.rung = 1;
        assert_eq!(decide(&p, true, &passed, &others), Verdict::Promote { rungs: 2 });
        // At or past the last rung below the budget: nothing left to judge.
        let mut top = t(9, &[(1, 0.9), (3, 0.9), (9, 0.9), (20, 0.1)]);
        top.rung = 3;
        assert_eq!(decide(&p, true, &top, &others), Verdict::Continue);
    }

    #[test]
    fn hyperband_brackets_start_later_and_compare_within_their_bracket() {
        let p = asha(PrunerKind::Hyperband);
        assert_eq!(brackets(&p), 4, "27/1 with eta 3: brackets s = 0..=3");
        let mut late = t(9, &[(1, 0.0)]);
        late.bracket = 1;
        // Bracket 1's first rung is at 3: a report at 1 decides nothing.
        assert_eq!(decide(&p, true, &late, &[t(0, &[(1, 0.9)])]), Verdict::Continue);
        late.values.push(IntermediateValue { resource: 3, value: 0.1 });
        // Only bracket-1 trials compete: none yet, so it goes on.
        assert_eq!(decide(&p, true, &late, &[t(0, &[(3, 0.9)])]), Verdict::Promote { rungs: 1 });
    }

    #[test]
    fn promotion_resumes_the_top_third_of_a_rung_once_it_has_eta_trials() {
        let p = asha(PrunerKind::Asha);
        let paused = |index: u32, rung: u32, vals: &[(u64, f64)]| TrialView { paused: true, rung, ..t(index, vals) };
        // Two trials at rung 0 (resource 1): fewer than η, nobody is promoted yet, however good.
        let two = [paused(0, 0, &[(1, 0.9)]), paused(1, 0, &[(1, 0.1)])];
        assert!(promotable(&p, true, &two).is_empty());
        // A third value arrives (a running trial's report counts): the best of the three goes on.
        let mut three = two.to_vec();
        three.push(t(2, &[(1, 0.5)]));
        assert_eq!(promotable(&p, true, &three), vec![0]);
        // Minimising picks the other end.
        assert_eq!(promotable(&p, false, &three), vec![1]);
        // Six values at rung 0 keep two; a promoted trial (rung 1, running) takes one of the two places.
        let mut six = vec![
            TrialView { rung: 1, ..t(0, &[(1, 0.9)]) },
            paused(1, 0, &[(1, 0.8)]),
            paused(2, 0, &[(1, 0.7)]),
            paused(3, 0, &[(1, 0.2)]),
            paused(4, 0, &[(1, 0.1)]),
            paused(5, 0, &[(1, f64::NAN)]),
        ];
        assert_eq!(promotable(&p, true, &six), vec![1]);
        // A paused trial at a higher rung goes first, even with a worse value.
        six.push(paused(6, 1, &[(1, 0.75), (3, 0.3)]));
        six.push(TrialView { rung: 1, ..t(7, &[(1, 0.3), (3, 0.2)]) });
        six.push(TrialView { rung: 1, ..t(8, &[(1, 0.25), (3, 0.1)]) });
        // Rung 1: three values keep one (trial 6); rung 0: nine values keep three (0.9, 0.8, 0.75): trial 1.
        assert_eq!(promotable(&p, true, &six), vec![6, 1]);
        // The best paused trial of the highest rung (the fallback when a budget never fills a rung).
        assert_eq!(best_paused(&p, true, &two), Some(0));
        assert_eq!(best_paused(&p, false, &two), Some(1));
        assert_eq!(best_paused(&p, true, &six), Some(6));
        assert_eq!(best_paused(&p, true, &[t(0, &[(1, 0.9)])]), None, "nothing paused");
    }

    #[test]
    fn median_prunes_below_the_median_of_completed_trials() {
        let p = asha(PrunerKind::Median);
        let mut done: Vec<TrialView> = (0..3).map(|i| t(i, &[(1, 1.0 + i as f64), (2, 2.0 + i as f64)])).collect();
        done.iter_mut().for_each(|d| d.completed = true);
        // Minimising: medians 2 at resource 1, 3 at resource 2.
        assert_eq!(decide(&p, false, &t(9, &[(1, 1.5)]), &done), Verdict::Continue);
        assert!(matches!(decide(&p, false, &t(9, &[(1, 2.5)]), &done), Verdict::Prune { .. }));
        // Too few completed trials: no pruning.
        assert_eq!(decide(&p, false, &t(9, &[(1, 9.0)]), &done[..1]), Verdict::Continue);
    }
}
