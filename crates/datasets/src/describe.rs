//! Human-readable summary of a manifest, as (key, value) lines a CLI prints (`aidos dataset show`).
//! Long lists are cut: at most [`MAX_HISTOGRAM`] classes and [`MAX_FEATURES`] per-feature entries are shown.

use aidos_api::v1::DatasetManifest;

use crate::table::row_len;

pub const MAX_HISTOGRAM: usize = 20;
pub const MAX_FEATURES: usize = 8;

fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// Key/value lines: name, version, format, source, rows, shape, dtype, classes, labels, splits, features,
/// duplicates, missing, chunks, content hash.
pub fn describe(m: &DatasetManifest) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| out.push((k.to_string(), v));
    add("name", m.name.clone());
    add("version", if m.version == 0 { "uncommitted".into() } else { format!("v{}", m.version) });
    add("format", m.format.clone());
    add("source", m.source.clone());
    add("rows", m.rows.to_string());
    let rl = row_len(&m.row_shape).unwrap_or(0);
    add("shape", format!("{:?} ({rl} values per row)", m.row_shape));
    add("dtype", m.dtype.clone());
    add("classes", m.num_classes.to_string());
    let stats = m.stats.clone().unwrap_or_default();
    let mut hist: Vec<String> =
        stats.label_histogram.iter().take(MAX_HISTOGRAM).map(|(l, c)| format!("{l}: {c}")).collect();
    if stats.label_histogram.len() > MAX_HISTOGRAM {
        hist.push(format!("... ({} more labels)", stats.label_histogram.len() - MAX_HISTOGRAM));
    }
    add("labels", hist.join(", "));
    let splits: Vec<String> =
        m.splits.iter().map(|s| format!("{} [{}, {}) {} rows", s.name, s.start, s.end, s.end - s.start)).collect();
    add("splits", if splits.is_empty() { "none".into() } else { splits.join("; ") });
    let fs = &stats.features;
    if !fs.is_empty() {
        let one = |j: usize| format!("f{j}: min {} max {} mean {}", num(fs[j].min), num(fs[j].max), num(fs[j].mean));
        if fs.len() <= MAX_FEATURES {
            add("features", (0..fs.len()).map(one).collect::<Vec<_>>().join("; "));
        } else {
            let valid: Vec<_> = fs.iter().filter(|f| !f.mean.is_nan()).collect();
            let lo = valid.iter().map(|f| f.min).fold(f64::INFINITY, f64::min);
            let hi = valid.iter().map(|f| f.max).fold(f64::NEG_INFINITY, f64::max);
            let mean = valid.iter().map(|f| f.mean).sum::<f64>() / valid.len().max(1) as f64;
            let constant = fs.iter().filter(|f| f.min == f.max).count();
            add(
                "features",
                format!(
                    "{} features: overall range [{}, {}], mean of means {}, {constant} constant",
                    fs.len(),
                    num(lo),
                    num(hi),
                    num(mean)
                ),
            );
            // A few: the first ones and the one with the highest mean.
            let top =
                (0..fs.len()).filter(|&j| !fs[j].mean.is_nan()).max_by(|&a, &b| fs[a].mean.total_cmp(&fs[b].mean));
            let mut shown: Vec<usize> = (0..3).collect();
            if let Some(t) = top.filter(|t| *t >= 3) {
                shown.push(t);
            }
            add("features (some)", shown.into_iter().map(one).collect::<Vec<_>>().join("; "));
        }
    }
    add("duplicate rows", stats.duplicate_rows.to_string());
    add("missing values", stats.missing_values.to_string());
    let bytes: u64 = m.feature_chunks.iter().chain(&m.label_chunks).map(|c| c.bytes).sum();
    add("chunks", format!("{} feature + {} label chunks, {bytes} bytes", m.feature_chunks.len(), m.label_chunks.len()));
    add("content hash", m.content_hash.clone());
    out
}
