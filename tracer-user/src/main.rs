//! The `leaktrace` binary: parse the command line, run, and turn errors into one line.

use leaktrace::error::{code_of, exit, one_line};

fn main() {
    // A bug must not print a backtrace at an on-call engineer: one line, and the probes are
    // detached by the kernel when the process ends.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("leaktrace: internal error: {info} (please report this)");
    }));
    let cli = leaktrace::cli::parse();
    let code = match leaktrace::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if std::env::var_os("LEAKTRACE_FULL_ERRORS").is_some() {
                // For bug reports: the whole chain, verifier logs included.
                eprintln!("leaktrace: error: {err:#}");
            } else {
                eprintln!("leaktrace: error: {}", one_line(&err));
            }
            match code_of(&err) {
                exit::OK => exit::FAILED,
                code => code,
            }
        }
    };
    std::process::exit(code);
}
