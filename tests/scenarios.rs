//! The leak scenario suite (tests/scenarios/): a FastAPI app with one endpoint per way FastAPI
//! services leak and two controls, traced on every pyenv CPython 3.8-3.13 and Debian's 3.14/3.15
//! (sid root), static and shared, under a bounded load;
//! `run.py` checks, per version and scenario, that the top stack names the culprit and grows,
//! that no control stack grows, and that the leaks outrank the controls. It prints the table
//! and exits 1 on a miss. About a minute per interpreter; `./dev scenarios` runs it alone.

use std::process::Command;

use leaktrace_tests::*;

#[test]
fn every_leak_is_found_and_named_and_no_control_is_called_a_leak() {
    require_root();
    let out = root().join("target/test-out/scenarios");
    let status = Command::new(venv_python())
        .arg(root().join("tests/scenarios/run.py"))
        .arg("--leaktrace")
        .arg(leaktrace_bin())
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run.py starts");
    assert!(
        status.success(),
        "the scenario suite missed (table above; reports, logs and results.md in {})",
        out.display()
    );
}
