//! What leaktrace prints when it stops: the totals, the top stacks in one line each, the
//! report's notes, and where the report went.

use std::path::Path;

use crate::{
    analysis::aggregate::StackReport,
    output::{
        report::{human_bytes, Report},
        view::{table_line, SortBy},
    },
    resolve::frame::{Frame, FrameKind},
};

/// Prints the summary of `report`; `why` says why tracing stopped (`SIGINT received`).
pub fn print_summary(report: &Report, why: &str, sort: SortBy, top: usize, output: &Path) {
    println!(
            "leaktrace: stopped ({why}); detached. {} live in {} allocations older than {} s; {} allocs and {} frees seen; dropped {}",
            human_bytes(report.totals.live_bytes),
            report.totals.live_allocs,
            report.min_age_s,
            report.totals.allocs_seen,
            report.totals.frees_seen,
            report.totals.dropped,
        );
    let mut ranked: Vec<&StackReport> = report.stacks.iter().collect();
    if sort == SortBy::Growth {
        ranked.sort_by(|a, b| {
            let g = |s: &StackReport| s.growth_bytes_per_s.unwrap_or(f64::NEG_INFINITY);
            g(b).total_cmp(&g(a)).then(b.live_bytes.cmp(&a.live_bytes))
        });
    }
    let hint = ranked
        .first()
        .filter(|_| sort == SortBy::Growth)
        .and_then(|s| {
            crate::output::view::arena_hint(
                &short_stack(&s.frames),
                s.growth_bytes_per_s,
                report.target.pids.first().copied().unwrap_or(0),
            )
        });
    for s in ranked.into_iter().take(top) {
        println!(
            "{}",
            table_line(
                s.live_bytes,
                s.live_allocs,
                s.growth_bytes_per_s,
                s.trend.as_deref(),
                s.live_samples,
                &short_stack(&s.frames)
            )
        );
    }
    if let Some(hint) = hint {
        println!("{hint}");
    }
    for note in &report.notes {
        eprintln!("leaktrace: note: {note}");
    }
    eprintln!(
        "leaktrace: wrote `{}` ({} stacks)",
        output.display(),
        report.stacks.len()
    );
}

/// A one-line stack for tables, innermost first. With Python frames: the Python frames (file
/// names only) and the allocator, `leaky (app.py:12) < main (app.py:30) [malloc]`; without:
/// the innermost native frames, `malloc < leak_here (fixture.c:30) < main (fixture.c:98)`.
pub fn short_stack(frames: &[Frame]) -> String {
    const SHOWN: usize = 4;
    let python: Vec<&Frame> = frames
        .iter()
        .rev()
        .filter(|f| f.kind == FrameKind::Python)
        .collect();
    if python.is_empty() {
        let mut parts: Vec<String> = frames.iter().rev().take(SHOWN).map(Frame::label).collect();
        if frames.len() > SHOWN {
            parts.push("...".into());
        }
        return parts.join(" < ");
    }
    let short = |f: &Frame| {
        let file = f.file.as_deref().map(|p| {
            Path::new(p)
                .file_name()
                .map_or(p.into(), |n| n.to_string_lossy().into_owned())
        });
        match (file, f.line) {
            (Some(file), Some(line)) => format!("{} ({file}:{line})", f.function),
            _ => f.function.clone(),
        }
    };
    let mut parts: Vec<String> = python.iter().take(SHOWN).map(|f| short(f)).collect();
    if python.len() > SHOWN {
        parts.push("...".into());
    }
    let allocator = frames.last().map(|f| f.function.as_str()).unwrap_or("?");
    if allocator.starts_with('[') {
        // Already bracketed: `[page fault]`.
        return format!("{} {allocator}", parts.join(" < "));
    }
    format!("{} [{allocator}]", parts.join(" < "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_stacks_lead_with_python_frames() {
        let py = |f: &str, line| Frame {
            function: f.into(),
            file: Some(format!("/srv/app/{f}.py")),
            line: Some(line),
            module: None,
            kind: FrameKind::Python,
        };
        let frames = vec![
            py("main", 30),
            py("leaky", 12),
            Frame::native("_PyObject_Malloc", Some("libpython3.12.so".into())),
            Frame::native("malloc", Some("libc.so.6".into())),
        ];
        assert_eq!(
            short_stack(&frames),
            "leaky (leaky.py:12) < main (main.py:30) [malloc]"
        );
        let native = vec![Frame::native("main", None), Frame::native("malloc", None)];
        assert_eq!(short_stack(&native), "malloc < main");
    }
}
