//! Saved JSON reports read back by `leaktrace report FILE.json` and `leaktrace diff`, and
//! everything those commands render from them.
#![no_main]
use leaktrace::output::{
    compare,
    format::Format,
    report::{Flame, Report},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(report) = Report::from_json(text) else {
        return;
    };
    for flame in [Flame::Live, Flame::Growth] {
        // One folded line per stack that has something to show, whatever its names hold.
        let shown = report
            .stacks
            .iter()
            .filter(|s| match flame {
                Flame::Live => s.live_bytes > 0,
                Flame::Growth => s.trend.as_deref() == Some("growing") && s.added_bytes > 0,
            })
            .count();
        assert_eq!(report.folded_by(flame).lines().count(), shown);
        for format in [Format::Json, Format::Folded, Format::Svg, Format::Pprof] {
            let _ = report.write_as(format, flame, std::io::sink());
        }
    }
    let mut empty = report.clone();
    empty.stacks.clear();
    empty.totals = Default::default();
    for (before, after) in [(&report, &report), (&empty, &report), (&report, &empty)] {
        let _ = compare::summary(before, after, 10);
        let _ = compare::write_diff_svg(before, after, std::io::sink());
    }
});
