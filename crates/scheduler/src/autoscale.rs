//! Autoscaling: pure decisions from the load replicas report to a deployment's replica count. The leader's loop
//! (`loops::run_autoscaler`) gathers the load, keeps each deployment's recent recommendations in its memory, calls
//! [`decide`] and proposes the new count as a change of `replicas` (which never restarts a replica: see `reconcile`).
//!
//! Rules (as Kubernetes' horizontal autoscaler, with its stabilization window):
//! - The recommendation is `ceil(in_flight / target_in_flight)`, clamped to `[min_replicas, max_replicas]`:
//!   `in_flight` is the mean number of requests in flight summed over the deployment's ready replicas.
//! - Up at once: a recommendation above the current count is applied on the next pass.
//! - Down slowly: the count drops only to the highest recommendation of the last `scale_down_delay_secs`, so a
//!   lull shorter than that does not flap replicas away (and a dip does not start a cold start right after).
//! - No load reported (no ready replica has reported yet): no decision.

use std::collections::VecDeque;

use aidos_api::v1::Autoscale;

/// Defaults for fields left 0 in a request.
pub const DEFAULT_TARGET_IN_FLIGHT: f64 = 4.0;
pub const DEFAULT_SCALE_DOWN_DELAY_SECS: u32 = 30;
/// Reports older than this do not count (the replica went quiet or away).
pub const LOAD_FRESH_MS: i64 = 3000;

/// The replica counts `a` allows, `(min, max)`: at least one replica, and never an empty range (so that
/// `clamp` cannot panic on a policy stored wrong).
pub fn bounds(a: &Autoscale) -> (u32, u32) {
    let min = a.min_replicas.max(1);
    (min, a.max_replicas.max(min))
}

/// The replica count `in_flight` asks for under `a`.
pub fn recommend(a: &Autoscale, in_flight: f64) -> u32 {
    let target = if a.target_in_flight > 0.0 { a.target_in_flight } else { DEFAULT_TARGET_IN_FLIGHT };
    let (min, max) = bounds(a);
    let want = (in_flight / target).ceil();
    (if want.is_finite() && want > 0.0 { want.min(max as f64) as u32 } else { 0 }).clamp(min, max)
}

/// Recent recommendations of one deployment, oldest first, with the leader's clock (ms), and when the first one
/// was made.
#[derive(Debug, Default, Clone)]
pub struct History {
    started_ms: Option<i64>,
    recs: VecDeque<(i64, u32)>,
}

/// The replica count to run now: `current` moved by the recommendation for `in_flight` (None: no load known)
/// under the rules of the module docs. Records the recommendation in `history`.
pub fn decide(a: &Autoscale, current: u32, in_flight: Option<f64>, history: &mut History, now_ms: i64) -> u32 {
    let Some(load) = in_flight else {
        let (min, max) = bounds(a);
        return current.clamp(min, max);
    };
    let rec = recommend(a, load);
    let delay =
        i64::from(if a.scale_down_delay_secs > 0 { a.scale_down_delay_secs } else { DEFAULT_SCALE_DOWN_DELAY_SECS })
            * 1000;
    let started = *history.started_ms.get_or_insert(now_ms);
    history.recs.push_back((now_ms, rec));
    while history.recs.front().is_some_and(|(t, _)| *t < now_ms - delay) {
        history.recs.pop_front();
    }
    if rec >= current {
        return rec;
    }
    // Down only as far as the highest recommendation within the window, and only once the history covers a whole
    // window (a fresh leader knows nothing of the minutes before it: it waits a window before it scales down).
    if started > now_ms - delay {
        return current;
    }
    history.recs.iter().map(|(_, r)| *r).max().unwrap_or(current).min(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Autoscale {
        Autoscale { min_replicas: 1, max_replicas: 4, target_in_flight: 2.0, scale_down_delay_secs: 10 }
    }

    #[test]
    fn the_recommendation_is_load_over_target_within_bounds() {
        let a = policy();
        assert_eq!(recommend(&a, 0.0), 1);
        assert_eq!(recommend(&a, 2.0), 1);
        assert_eq!(recommend(&a, 2.1), 2);
        assert_eq!(recommend(&a, 7.9), 4);
        assert_eq!(recommend(&a, 100.0), 4);
        assert_eq!(recommend(&a, f64::NAN), 1);
        assert_eq!(recommend(&Autoscale { target_in_flight: 0.0, ..a }, 9.0), 3, "default target 4");
        // A policy stored with max below min has one count, not a panic.
        let wrong = Autoscale { min_replicas: 3, max_replicas: 2, ..a };
        assert_eq!(bounds(&wrong), (3, 3));
        assert_eq!(decide(&wrong, 9, None, &mut History::default(), 0), 3);
    }

    #[test]
    fn up_at_once_down_only_after_a_whole_window_of_lower_recommendations() {
        let a = policy();
        let mut h = History::default();
        assert_eq!(decide(&a, 1, Some(7.0), &mut h, 0), 4, "up at once");
        // The load drops: the count stays until every recommendation of the last 10 s asks for fewer.
        assert_eq!(decide(&a, 4, Some(0.5), &mut h, 1_000), 4);
        assert_eq!(decide(&a, 4, Some(0.5), &mut h, 9_000), 4);
        assert_eq!(decide(&a, 4, Some(3.0), &mut h, 10_000), 4, "the first one (4) is still in the window");
        assert_eq!(decide(&a, 4, Some(0.5), &mut h, 10_500), 2, "down to the highest in the window: 2");
        assert_eq!(decide(&a, 2, Some(0.5), &mut h, 20_500), 1);
        // A burst brings replicas back at once.
        assert_eq!(decide(&a, 1, Some(5.0), &mut h, 21_000), 3);
        // No load known: nothing changes (but the bounds hold).
        assert_eq!(decide(&a, 3, None, &mut h, 23_000), 3);
        assert_eq!(decide(&a, 9, None, &mut h, 23_000), 4);
    }

    #[test]
    fn a_fresh_leader_waits_a_whole_window_before_scaling_down() {
        let a = policy();
        let mut h = History::default();
        assert_eq!(decide(&a, 3, Some(0.0), &mut h, 50_000), 3);
        assert_eq!(decide(&a, 3, Some(0.0), &mut h, 55_000), 3);
        assert_eq!(decide(&a, 3, Some(0.0), &mut h, 60_000), 1);
    }
}
