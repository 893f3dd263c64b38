//! Training progress in `aidos job logs --follow` / `aidos train --follow`: the trainer prints machine lines
//! `AIDOS_PROGRESS {json}` among its output; these drive a progress bar (epoch, loss, accuracy) instead of being
//! printed. Everything else passes through unchanged.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub const PREFIX: &str = "AIDOS_PROGRESS ";

#[derive(Default)]
pub struct ProgressView {
    bar: Option<ProgressBar>,
    partial: Vec<u8>,
    /// Whether to draw a bar at all (stderr is a terminal).
    draw: bool,
    pub last: Option<serde_json::Value>,
}

impl ProgressView {
    pub fn new() -> Self {
        Self { draw: std::io::stderr().is_terminal(), ..Default::default() }
    }

    /// Takes stdout bytes; returns the bytes to print (whole non-progress lines; a trailing partial line is held).
    pub fn filter(&mut self, data: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            match std::str::from_utf8(&line).ok().and_then(|l| l.strip_prefix(PREFIX)) {
                Some(json) => self.update(json.trim()),
                None => out.extend_from_slice(&line),
            }
        }
        out
    }

    /// Writes `f`'s output without tearing the bar.
    pub fn print(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    fn update(&mut self, json: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return };
        if self.draw {
            let steps = v["steps"].as_u64().unwrap_or(0);
            let bar = self.bar.get_or_insert_with(|| {
                let b = ProgressBar::new(steps.max(1));
                b.set_style(
                    ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} steps {msg} [{elapsed_precise}]")
                        .expect("valid template"),
                );
                b
            });
            bar.set_length(steps.max(1));
            bar.set_position(v["step"].as_u64().unwrap_or(0));
            let acc = v["accuracy"].as_f64().map(|a| format!("  acc {:.2}%", a * 100.0)).unwrap_or_default();
            bar.set_message(format!(
                "epoch {}/{}  loss {:.4}{acc}",
                v["epoch"].as_u64().unwrap_or(0),
                v["epochs"].as_u64().unwrap_or(0),
                v["loss"].as_f64().unwrap_or(f64::NAN)
            ));
        }
        self.last = Some(v);
    }

    pub fn finish(&mut self) -> Vec<u8> {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        std::mem::take(&mut self.partial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_consumed_and_others_pass() {
        let mut p = ProgressView::default();
        let out =
            p.filter(b"hello\nAIDOS_PROGRESS {\"epoch\":1,\"epochs\":2,\"step\":5,\"steps\":10,\"loss\":0.5}\nwor");
        assert_eq!(out, b"hello\n");
        assert_eq!(p.last.as_ref().unwrap()["step"], 5);
        assert_eq!(p.filter(b"ld\n"), b"world\n");
        assert!(p.finish().is_empty());
    }
}
