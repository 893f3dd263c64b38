//! Downsampling of metric series for readers that draw them (the dashboard's charts, `max_points` of
//! `RunService.Get`/`List`): a run can hold a million points, a chart is a few hundred pixels wide.
//!
//! Largest-triangle-three-buckets (Steinarsson, 2013): the first and last points are kept, the rest split into
//! `max - 2` buckets, and from each bucket the point that makes the largest triangle with the point kept before it
//! and the mean of the next bucket. Spikes survive (a min/max-free average would flatten them); the output is a
//! subset of the input, in order. Pure; O(n).

use std::collections::BTreeMap;

use aidos_api::v1::MetricPoint;

/// At most `max` points of `points` (one series, in the order reported), chosen by LTTB; only the points kept
/// are cloned. `max` < 3 keeps the first and last points (or fewer when the series is shorter); `max` ≥ len keeps
/// every point. x is the step, or the position when every point has the same step (MLflow's `log_metric` without
/// a step logs step 0 each time).
pub fn lttb(points: &[&MetricPoint], max: usize) -> Vec<MetricPoint> {
    let n = points.len();
    if max >= n {
        return points.iter().map(|p| (*p).clone()).collect();
    }
    if max < 3 {
        return [points.first(), points.last()]
            .into_iter()
            .flatten()
            .take(max.max(1).min(n))
            .map(|p| (*p).clone())
            .collect();
    }
    let by_position = points[0].step == points[n - 1].step;
    let xs: Vec<f64> =
        points.iter().enumerate().map(|(i, p)| if by_position { i as f64 } else { p.step as f64 }).collect();
    let xy = |i: usize| (xs[i], points[i].value);
    let every = (n - 2) as f64 / (max - 2) as f64;
    let mut out = Vec::with_capacity(max);
    out.push(points[0].clone());
    let mut a = 0usize;
    for i in 0..max - 2 {
        let start = (i as f64 * every) as usize + 1;
        let end = (((i + 1) as f64 * every) as usize + 1).min(n - 1);
        // The mean of the next bucket (the last point for the last bucket).
        let (ns, ne) = (end, ((((i + 2) as f64) * every) as usize + 1).min(n));
        let next = if ns < ne { ns..ne } else { n - 1..n };
        let next_len = next.len();
        let (mx, my) = next.fold((0.0, 0.0), |(sx, sy), i| (sx + xs[i], sy + points[i].value));
        let (mx, my) = (mx / next_len as f64, my / next_len as f64);
        let (ax, ay) = xy(a);
        let mut best = (start, -1.0f64);
        for j in start..end.max(start + 1) {
            let (x, y) = xy(j);
            let area = ((ax - mx) * (y - ay) - (ax - x) * (my - ay)).abs();
            // NaN areas (a NaN value) never win over a real one, but a bucket of NaNs still yields a point.
            if area > best.1 || best.1 < 0.0 && area.is_nan() {
                best = (j, if area.is_nan() { -0.5 } else { area });
            }
        }
        a = best.0;
        out.push(points[a].clone());
    }
    out.push(points[n - 1].clone());
    out
}

/// Every series of `points` (one per metric name, each in the order reported) downsampled to at most `max`
/// points; `max` = 0 keeps everything. The result is grouped by name; only the points kept are cloned.
pub fn by_name(points: &[MetricPoint], max: usize) -> Vec<MetricPoint> {
    if max == 0 {
        return points.to_vec();
    }
    let mut series: BTreeMap<&str, Vec<&MetricPoint>> = BTreeMap::new();
    for p in points {
        series.entry(p.name.as_str()).or_default().push(p);
    }
    series.values().flat_map(|s| lttb(s, max)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Vec<MetricPoint> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| MetricPoint { step: i as u64, name: "loss".into(), value: *v, ..Default::default() })
            .collect()
    }

    fn refs(s: &[MetricPoint]) -> Vec<&MetricPoint> {
        s.iter().collect()
    }

    #[test]
    fn short_series_are_unchanged_and_long_ones_keep_their_ends() {
        let s = series(&[3.0, 2.0, 1.0]);
        assert_eq!(lttb(&refs(&s), 10), s);
        let long = series(&(0..1_000_000).map(|i| (i as f64).sin()).collect::<Vec<_>>());
        let d = lttb(&refs(&long), 500);
        assert_eq!(d.len(), 500);
        assert_eq!(d.first(), long.first());
        assert_eq!(d.last(), long.last());
        assert!(d.windows(2).all(|w| w[0].step < w[1].step), "a subset in order");
    }

    #[test]
    fn a_spike_survives() {
        let mut v = vec![1.0; 10_000];
        v[5_123] = 50.0;
        let d = lttb(&refs(&series(&v)), 100);
        assert!(d.iter().any(|p| p.value == 50.0), "the spike was dropped");
        // Every point at step 0 (MLflow's log_metric without a step): x is the position, the spike still survives.
        let flat: Vec<MetricPoint> = series(&v).into_iter().map(|p| MetricPoint { step: 0, ..p }).collect();
        assert!(lttb(&refs(&flat), 100).iter().any(|p| p.value == 50.0), "the spike was dropped at step 0");
    }

    #[test]
    fn tiny_budgets_and_nan_values() {
        let s = series(&[1.0, f64::NAN, f64::NAN, f64::NAN, 2.0, 3.0]);
        assert_eq!(lttb(&refs(&s), 1).len(), 1);
        assert_eq!(lttb(&refs(&s), 2).iter().map(|p| p.step).collect::<Vec<_>>(), vec![0, 5]);
        assert_eq!(lttb(&refs(&s), 4).len(), 4);
        assert!(lttb(&[], 5).is_empty());
    }

    #[test]
    fn every_name_is_downsampled_on_its_own() {
        let mut pts = series(&(0..1000).map(|i| i as f64).collect::<Vec<_>>());
        pts.extend(series(&[1.0, 2.0]).into_iter().map(|p| MetricPoint { name: "acc".into(), ..p }));
        let d = by_name(&pts, 50);
        assert_eq!(d.iter().filter(|p| p.name == "loss").count(), 50);
        assert_eq!(d.iter().filter(|p| p.name == "acc").count(), 2);
        assert_eq!(by_name(&pts, 0), pts);
    }
}
