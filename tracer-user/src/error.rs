//! Errors a user can act on: one line, a hint, and an exit code.

use std::fmt;

/// Exit codes of the `leaktrace` binary (documented in the README).
pub mod exit {
    /// Traced to the end; the report was written.
    pub const OK: i32 = 0;
    /// Something failed; nothing useful was written.
    pub const FAILED: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// The target exited while being traced; the report covers the time until then.
    pub const TARGET_EXITED: i32 = 3;
}

/// An error meant for the person at the terminal.
#[derive(Debug)]
pub struct UserError {
    pub message: String,
    pub code: i32,
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// Builds an [`anyhow::Error`] carrying a [`UserError`] with the generic failure code.
pub fn user(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError {
        message: message.into(),
        code: exit::FAILED,
    })
}

/// Longest text kept from one cause (a verifier log can be megabytes).
const MAX_CAUSE_CHARS: usize = 600;

/// The one line printed for an error: its context chain joined, newlines folded, each cause
/// cut to a readable length.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let mut s = cause.to_string().replace('\n', " ");
        if s.chars().count() > MAX_CAUSE_CHARS {
            let total = s.len();
            s = s.chars().take(MAX_CAUSE_CHARS).collect();
            s.push_str(&format!("... ({total} bytes in all)"));
        }
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// The exit code for an error: the [`UserError`]'s own, else [`exit::FAILED`].
pub fn code_of(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|c| c.downcast_ref::<UserError>())
        .map_or(exit::FAILED, |u| u.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn one_line_joins_context_without_repeats() {
        let err: anyhow::Result<()> = Err(user("no process with PID 5\nsecond line"));
        let err = err.context("cannot attach").unwrap_err();
        assert_eq!(
            one_line(&err),
            "cannot attach: no process with PID 5 second line"
        );
        assert_eq!(code_of(&err), exit::FAILED);
        assert_eq!(code_of(&anyhow::anyhow!("x")), exit::FAILED);
    }

    #[test]
    fn one_line_cuts_huge_causes() {
        let err = anyhow::anyhow!("{}", "verifier says\n".repeat(10_000)).context("load failed");
        let line = one_line(&err);
        assert!(line.len() < 800, "{}", line.len());
        assert!(line.starts_with("load failed: verifier says verifier says"));
        assert!(line.ends_with("(140000 bytes in all)"), "{line}");
    }
}
