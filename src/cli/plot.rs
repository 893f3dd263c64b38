//! Metric curves: a text chart for the terminal and a PNG (drawn by hand: axes, grid, one colour per series,
//! and a 5x7 bitmap font for the labels, so no system fonts are needed).

use std::collections::BTreeMap;

/// One named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn bounds(series: &[Series]) -> Option<(f64, f64, f64, f64)> {
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    let mut any = false;
    for &(x, y) in pts {
        any = true;
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !any {
        return None;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    Some((x0, x1, y0, y1))
}

const MARKS: [char; 6] = ['*', 'o', '+', 'x', '#', '@'];

/// A `width` x `height` character chart, one mark per series, with a legend.
pub fn text_chart(title: &str, series: &[Series], width: usize, height: usize) -> String {
    let Some((x0, x1, y0, y1)) = bounds(series) else { return format!("{title}: no points\n") };
    let mut grid = vec![vec![' '; width]; height];
    for (si, s) in series.iter().enumerate() {
        for &(x, y) in &s.points {
            if !(x.is_finite() && y.is_finite()) {
                continue;
            }
            let c = (((x - x0) / (x1 - x0)) * (width - 1) as f64).round() as usize;
            let r = (((y1 - y) / (y1 - y0)) * (height - 1) as f64).round() as usize;
            grid[r.min(height - 1)][c.min(width - 1)] = MARKS[si % MARKS.len()];
        }
    }
    let mut out = format!("{title}\n");
    for (r, row) in grid.iter().enumerate() {
        let label = if r == 0 {
            format!("{y1:>10.4}")
        } else if r == height - 1 {
            format!("{y0:>10.4}")
        } else {
            " ".repeat(10)
        };
        out.push_str(&format!("{label} |{}\n", row.iter().collect::<String>()));
    }
    out.push_str(&format!("{} +{}\n", " ".repeat(10), "-".repeat(width)));
    out.push_str(&format!("{} {:<w$}{:>10}\n", " ".repeat(10), format!("{x0}"), format!("{x1}"), w = width - 10));
    let legend: Vec<String> =
        series.iter().enumerate().map(|(i, s)| format!("{} {}", MARKS[i % MARKS.len()], s.name)).collect();
    out.push_str(&format!("{} {}\n", " ".repeat(10), legend.join("   ")));
    out
}

// ---- PNG ----

/// Panel size in pixels; the image is a grid of panels, two per row.
const PW: usize = 480;
const PH: usize = 280;
const LEFT: usize = 70;
const RIGHT: usize = 16;
const TOP: usize = 28;
const BOTTOM: usize = 36;
const COLORS: [[u8; 3]; 6] =
    [[31, 119, 180], [214, 39, 40], [44, 160, 44], [255, 127, 14], [148, 103, 189], [140, 86, 75]];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    /// The canvas as a PNG file.
    fn encode(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc.write_header()?;
            wr.write_image_data(&self.px)?;
        }
        Ok(out)
    }

    fn new(w: usize, h: usize) -> Self {
        Self { w, h, px: vec![255; w * h * 3] }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: bool) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.set(x0, y0, c);
            if thick {
                self.set(x0, y0 + 1, c);
                self.set(x0 + 1, y0, c);
            }
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (1 << (4 - col)) != 0 {
                        self.set(x + i as i64 * 7 + col as i64, y + row as i64, c);
                    }
                }
            }
        }
    }

    /// One metric in the panel whose top-left corner is (ox, oy), with its own axes.
    fn panel(&mut self, ox: usize, oy: usize, title: &str, x_label: &str, s: &Series, color: [u8; 3]) {
        let (x0, x1, y0, y1) = bounds(std::slice::from_ref(s)).unwrap_or((0.0, 1.0, 0.0, 1.0));
        let (pw, ph) = ((PW - LEFT - RIGHT) as f64, (PH - TOP - BOTTOM) as f64);
        let (l, t, r, b) = ((ox + LEFT) as i64, (oy + TOP) as i64, (ox + PW - RIGHT) as i64, (oy + PH - BOTTOM) as i64);
        let map = |x: f64, y: f64| -> (i64, i64) {
            (l + ((x - x0) / (x1 - x0) * pw) as i64, t + ((y1 - y) / (y1 - y0) * ph) as i64)
        };
        let (grey, black) = ([225, 225, 225], [0, 0, 0]);
        for i in 0..=4 {
            let fy = y0 + (y1 - y0) * i as f64 / 4.0;
            let (_, py) = map(x0, fy);
            self.line((l, py), (r, py), grey, false);
            self.text(ox as i64 + 4, py - 3, &short(fy), black);
            let fx = x0 + (x1 - x0) * i as f64 / 4.0;
            let (px, _) = map(fx, y0);
            self.line((px, t), (px, b), grey, false);
            self.text(px - 10, b + 8, &short(fx), black);
        }
        self.line((l, t), (l, b), black, false);
        self.line((l, b), (r, b), black, false);
        self.text(l, oy as i64 + 8, title, black);
        self.text((ox + PW / 2) as i64 - 14, b + 22, x_label, black);
        let pts: Vec<(i64, i64)> =
            s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| map(x, y)).collect();
        for w in pts.windows(2) {
            self.line(w[0], w[1], color, true);
        }
        for p in &pts {
            self.line((p.0 - 1, p.1), (p.0 + 1, p.1), color, true);
        }
    }
}

/// 5x7 glyphs for digits, lowercase letters (upper case maps to lower) and a little punctuation.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'b' => [16, 16, 22, 25, 17, 17, 30],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'f' => [6, 9, 8, 28, 8, 8, 8],
        'g' => [0, 15, 17, 17, 15, 1, 14],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'j' => [2, 0, 6, 2, 2, 18, 12],
        'k' => [16, 16, 18, 20, 24, 20, 18],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'q' => [0, 0, 13, 19, 15, 1, 1],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 14, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        'x' => [0, 0, 17, 10, 4, 10, 17],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        'z' => [0, 0, 31, 2, 4, 8, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '@' => [14, 17, 23, 21, 23, 16, 14],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        _ => [0; 7],
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Encodes a PNG with one panel per series (each with its own y axis: losses, accuracies and throughput have
/// different scales), two panels per row.
pub fn png_chart(title: &str, x_label: &str, series: &[Series]) -> anyhow::Result<Vec<u8>> {
    let n = series.len().max(1);
    let cols = if n == 1 { 1 } else { 2 };
    let rows = n.div_ceil(cols);
    let (w, h) = (cols * PW, rows * PH);
    let mut cv = Canvas::new(w, h);
    for (i, s) in series.iter().enumerate() {
        let (ox, oy) = ((i % cols) * PW, (i / cols) * PH);
        cv.panel(ox, oy, &format!("{} - {title}", s.name), x_label, s, COLORS[i % COLORS.len()]);
    }
    cv.encode()
}

/// Groups metric points into one series per metric name, x = step.
pub fn series_by_name(points: &[aidos_api::MetricPoint], only: &[String]) -> Vec<Series> {
    let mut m: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        if only.is_empty() || only.iter().any(|o| o == &p.name) {
            m.entry(p.name.as_str()).or_default().push((p.step as f64, p.value));
        }
    }
    m.into_iter()
        .map(|(n, mut pts)| {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name: n.to_string(), points: pts }
        })
        .collect()
}

/// One trial in a parallel-coordinates plot: its position on each axis in [0, 1] (NaN: the parameter was
/// inactive), and whether it is the best trial.
pub struct TrialLine {
    pub at: Vec<f64>,
    pub best: bool,
    /// Its objective on [0, 1], 1 = best (drawn from light to dark).
    pub quality: f64,
}

/// A sweep: a parallel-coordinates plot (one axis per parameter, then the objective; the best trial in red) above
/// the best-so-far curve.
pub fn sweep_png(
    title: &str,
    axes: &[(String, String, String)],
    lines: &[TrialLine],
    best: &Series,
) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (2 * PW, 2 * PH);
    let mut cv = Canvas::new(w, h);
    let black = [0, 0, 0];
    cv.text(LEFT as i64, 8, &format!("parameters - {title}"), black);
    let (t, b) = (TOP as i64 + 14, (PH - BOTTOM) as i64);
    let n = axes.len().max(2);
    let x_of = |i: usize| LEFT as i64 + (i as i64 * (w - LEFT - RIGHT - 40) as i64) / (n as i64 - 1);
    let y_of = |v: f64| b - ((b - t) as f64 * v.clamp(0.0, 1.0)) as i64;
    // Worst first, so better trials are drawn on top; the best last.
    let mut order: Vec<&TrialLine> = lines.iter().collect();
    order.sort_by(|a, b| (a.best, a.quality).partial_cmp(&(b.best, b.quality)).unwrap_or(std::cmp::Ordering::Equal));
    for l in order {
        let shade = (200.0 - 170.0 * l.quality.clamp(0.0, 1.0)) as u8;
        let c = if l.best { [214, 39, 40] } else { [shade, shade, 255] };
        let pts: Vec<Option<(i64, i64)>> =
            l.at.iter().enumerate().map(|(i, v)| v.is_finite().then(|| (x_of(i), y_of(*v)))).collect();
        for win in pts.windows(2) {
            if let (Some(p), Some(q)) = (win[0], win[1]) {
                cv.line(p, q, c, l.best);
            }
        }
    }
    for (i, (name, lo, hi)) in axes.iter().enumerate() {
        let x = x_of(i);
        cv.line((x, t), (x, b), black, false);
        cv.text(x - 10, b + 8, name, black);
        cv.text(x + 3, t - 10, hi, black);
        cv.text(x + 3, b - 8, lo, black);
    }
    cv.panel(0, PH, &format!("{} - {title}", best.name), "trial", best, COLORS[0]);
    cv.encode()
}
