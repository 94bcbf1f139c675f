//! A throw-away PostgreSQL cluster for the tests that need real database connections: Debian's
//! `postgresql` (installed by `./dev setup`), run as the `postgres` user, on 127.0.0.1 only,
//! in a temp folder, stopped and removed on drop. The same recipe as tests/scenarios/run.py.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::free_port;

pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

fn as_postgres(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runuser")
}

impl Postgres {
    /// initdb and start; panics with the server's last log line when it does not start.
    pub fn start(name: &str) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL is not installed: run ./dev setup (it installs Debian's postgresql)",
            )
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("pg_ctl").exists())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/pg_ctl: run ./dev setup");
        let out = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .unwrap();
        let uid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("no `postgres` user: run ./dev setup (Debian's postgresql package creates it)");
        // Under /tmp, not target/: the postgres user must reach it (a checkout may sit in a
        // folder only root can enter).
        let dir = std::env::temp_dir().join(format!("leaktrace-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
        let data = dir.join("data");
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let r = as_postgres(
            &dir,
            &[
                &s(&bin.join("initdb")),
                "-D",
                &s(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            r.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let port = free_port();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c fsync=off -c shared_buffers=16MB",
            s(&dir)
        );
        let pg = Postgres { bin, dir, port };
        let r = as_postgres(
            &pg.dir,
            &[
                &s(&pg.bin.join("pg_ctl")),
                "-D",
                &s(&data),
                "-o",
                &opts,
                "-l",
                &s(&pg.dir.join("log")),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            r.status.success(),
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(pg.dir.join("log")).unwrap_or_default()
        );
        pg
    }

    /// A libpq-style DSN (asyncpg and psycopg take it).
    pub fn dsn(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        as_postgres(
            &self.dir,
            &[
                self.bin.join("pg_ctl").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
