//! Starting a command for `leaktrace run`: fork, stop the child before it runs anything of the
//! command, attach, then let it go. Only PIDs leaktrace started are signalled here.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::Result;

use crate::error::user;

/// The file `execvp` would run for `program`.
pub fn resolve_program(program: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        })
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then(|| p.canonicalize().unwrap_or(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_exec(p))
}

/// Forks and execs `argv` in a child that stops itself first; returns its PID, stopped, and the
/// program's path.
pub fn spawn_stopped(argv: &[String]) -> Result<(u32, PathBuf)> {
    let program = argv
        .first()
        .ok_or_else(|| user("no command given after `--`"))?;
    let path = resolve_program(program).ok_or_else(|| {
        user(format!(
            "command not found: `{program}` (give a path or a program on PATH)"
        ))
    })?;
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| user("the command's path contains a NUL byte"))?;
    let c_args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| user("an argument of the command contains a NUL byte"))?;
    let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    c_argv.push(std::ptr::null());
    // SAFETY: the child only calls async-signal-safe functions (raise, execv, _exit) on
    // memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(user(format!(
            "cannot fork: {}",
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        unsafe {
            libc::raise(libc::SIGSTOP);
            libc::execv(c_path.as_ptr(), c_argv.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
    if rc != pid || !libc::WIFSTOPPED(status) {
        return Err(user(format!("`{program}` ended before it could be traced")));
    }
    Ok((pid as u32, path))
}

/// Lets a stopped child go on.
pub fn resume(pid: u32) {
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

/// Ends a child we started and could not trace, so it does not linger stopped.
pub fn kill_and_reap(pid: u32) {
    // SAFETY: signalling and waiting for a child we started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid as i32, &mut status, 0);
    }
}

/// Waits for an exited child; returns its exit code, or 128+signal.
pub fn reap(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    if rc != pid as i32 {
        return crate::error::exit::FAILED;
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        crate::error::exit::FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_like_execvp() {
        assert!(resolve_program("sh").is_some_and(|p| p.is_absolute()));
        assert_eq!(
            resolve_program("/bin/sh").map(|p| p.is_absolute()),
            Some(true)
        );
        assert!(resolve_program("no-such-program-leaktrace").is_none());
        let plain = std::env::temp_dir().join(format!("leaktrace-plain-{}", std::process::id()));
        std::fs::write(&plain, "data").unwrap();
        assert!(
            resolve_program(plain.to_str().unwrap()).is_none(),
            "not executable"
        );
        std::fs::remove_file(&plain).unwrap();
    }
}
