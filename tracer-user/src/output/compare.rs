//! `leaktrace diff BEFORE.json AFTER.json`: which stacks grew between two reports, as text and
//! as a differential flamegraph (inferno's: sized by AFTER, red where a stack grew).

use std::{collections::BTreeMap, io::Write};

use anyhow::{Context, Result};

use crate::{
    output::report::{human_bytes, Report},
    resolve::frame::Frame,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackDelta {
    /// Frames joined as in folded output, outermost first.
    pub label: String,
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub delta_bytes: i64,
    pub before_allocs: u64,
    pub after_allocs: u64,
}

fn label(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(Frame::label)
        .collect::<Vec<_>>()
        .join(";")
}

/// `after - before`, saturated to the range of `i64`.
fn signed_delta(before: u64, after: u64) -> i64 {
    let d = i128::from(after) - i128::from(before);
    d.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Stacks of both reports matched by their frames, the largest growth first (ties by label).
pub fn deltas(before: &Report, after: &Report) -> Vec<StackDelta> {
    let mut by_label: BTreeMap<String, StackDelta> = BTreeMap::new();
    for (is_after, report) in [(false, before), (true, after)] {
        for s in &report.stacks {
            let l = label(&s.frames);
            let d = by_label.entry(l.clone()).or_insert_with(|| StackDelta {
                label: l,
                before_bytes: 0,
                after_bytes: 0,
                delta_bytes: 0,
                before_allocs: 0,
                after_allocs: 0,
            });
            // Reports read back may hold any number: sums saturate.
            if is_after {
                d.after_bytes = d.after_bytes.saturating_add(s.live_bytes);
                d.after_allocs = d.after_allocs.saturating_add(s.live_allocs);
            } else {
                d.before_bytes = d.before_bytes.saturating_add(s.live_bytes);
                d.before_allocs = d.before_allocs.saturating_add(s.live_allocs);
            }
        }
    }
    let mut out: Vec<StackDelta> = by_label
        .into_values()
        .map(|mut d| {
            d.delta_bytes = signed_delta(d.before_bytes, d.after_bytes);
            d
        })
        .collect();
    out.sort_by(|a, b| {
        b.delta_bytes
            .cmp(&a.delta_bytes)
            .then_with(|| a.label.cmp(&b.label))
    });
    out
}

/// A table of the stacks that grew most, for people.
pub fn summary(before: &Report, after: &Report, top: usize) -> String {
    let d = deltas(before, after);
    let total = signed_delta(before.totals.live_bytes, after.totals.live_bytes);
    let mut out = format!(
        "live: {} -> {} ({}{})\n",
        human_bytes(before.totals.live_bytes),
        human_bytes(after.totals.live_bytes),
        if total < 0 { "-" } else { "+" },
        human_bytes(total.unsigned_abs())
    );
    out.push_str("    GROWTH      BEFORE       AFTER  STACK (innermost frame last)\n");
    for s in d.iter().filter(|s| s.delta_bytes > 0).take(top) {
        let innermost: Vec<&str> = s.label.rsplit(';').take(3).collect();
        let short: Vec<&str> = innermost.into_iter().rev().collect();
        out.push_str(&format!(
            "{:>10} {:>11} {:>11}  {}{}\n",
            format!("+{}", human_bytes(s.delta_bytes as u64)),
            human_bytes(s.before_bytes),
            human_bytes(s.after_bytes),
            if s.label.matches(';').count() >= 3 {
                "...;"
            } else {
                ""
            },
            short.join(";")
        ));
    }
    out
}

/// inferno's differential folded lines, `stack BEFORE AFTER`, sorted.
pub fn differential_folded(before: &Report, after: &Report) -> Result<String> {
    let mut out = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        before.folded().as_bytes(),
        after.folded().as_bytes(),
        &mut out,
    )
    .context("cannot compare the two reports")?;
    // inferno emits the lines in hash order: sort them for deterministic output.
    let text = String::from_utf8(out)?;
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    Ok(lines.iter().map(|l| format!("{l}\n")).collect())
}

pub fn write_diff_svg(before: &Report, after: &Report, mut w: impl Write) -> Result<()> {
    let folded = differential_folded(before, after)?;
    if folded.trim().is_empty() {
        anyhow::bail!("neither report has a live stack: nothing to compare");
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!(
        "leaktrace diff: {} -> {} live (red grew, blue shrank)",
        human_bytes(before.totals.live_bytes),
        human_bytes(after.totals.live_bytes)
    );
    opts.count_name = "bytes".to_string();
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut w)
        .context("cannot render the differential flamegraph")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports() -> (Report, Report) {
        let before = crate::output::report::tests::sample();
        let mut after = before.clone();
        after.stacks[0].live_bytes *= 3;
        after.stacks[0].live_allocs *= 3;
        after.stacks[1].live_bytes = 0;
        after.totals.live_bytes = after.stacks.iter().map(|s| s.live_bytes).sum();
        (before, after)
    }

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data")
            .join(name);
        if std::env::var_os("LEAKTRACE_BLESS").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            actual,
            expected,
            "{} (LEAKTRACE_BLESS=1 rewrites it)",
            path.display()
        );
    }

    #[test]
    fn deltas_match_stacks_by_frames() {
        let (before, after) = reports();
        let d = deltas(&before, &after);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].delta_bytes, 2 * 4_096_000);
        assert_eq!((d[0].before_allocs, d[0].after_allocs), (1000, 3000));
        assert!(d[0].label.ends_with("leak_here (fixture.c:12);malloc"));
        assert_eq!(d[1].delta_bytes, -3700);
    }

    /// From the fuzz target `report_json`: a report read back may hold any u64, and the same
    /// stack twice.
    #[test]
    fn huge_numbers_do_not_overflow() {
        let mut big = crate::output::report::tests::sample();
        let twin = big.stacks[0].clone();
        big.stacks.push(twin);
        for s in &mut big.stacks {
            s.live_bytes = u64::MAX;
            s.live_allocs = u64::MAX;
        }
        big.totals.live_bytes = u64::MAX;
        let mut empty = big.clone();
        empty.stacks.clear();
        empty.totals = Default::default();
        for (before, after) in [(&big, &big), (&empty, &big), (&big, &empty)] {
            let d = deltas(before, after);
            assert!(!d.is_empty());
            let _ = summary(before, after, 10);
            let _ = write_diff_svg(before, after, std::io::sink());
        }
        let d = deltas(&big, &empty);
        assert_eq!(d[0].before_bytes, u64::MAX, "sums saturate");
        assert_eq!(
            d.last().unwrap().delta_bytes,
            i64::MIN,
            "-u64::MAX, saturated"
        );
    }

    #[test]
    fn golden_summary_and_differential_folded() {
        let (before, after) = reports();
        golden("diff-summary.txt", &summary(&before, &after, 10));
        golden(
            "diff-folded.txt",
            &differential_folded(&before, &after).unwrap(),
        );
        let mut svg = Vec::new();
        write_diff_svg(&before, &after, &mut svg).unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("leak_here"));
    }
}
