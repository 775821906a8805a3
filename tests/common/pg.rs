//! A throwaway PostgreSQL cluster for the PostgreSQL tests, and stores on it.
//!
//! [`shared`] starts one cluster per test binary on first use: `initdb` into a fresh directory
//! under `/tmp` (as the `postgres` user when running as root, since initdb refuses root), then
//! the server on a free loopback port (TCP only). No Docker and no external server are needed,
//! only the server binaries of Debian's `postgresql` package (`/usr/lib/postgresql/<major>/bin`,
//! or the directory named by `CONFLICT_PG_BIN`). Without them every PostgreSQL test fails with a
//! message naming that package; none is skipped.
//!
//! Clean-up does not depend on the test binary ending well: each cluster has a *guardian*, a
//! small shell process running as the server's user (in its own process group, so Ctrl-C does
//! not kill it first) that reads commands from a pipe whose only writer is the test process.
//! The guardian starts the server as its own child (`postgres -D ... -p ...`, then the fixture
//! waits with `pg_isready`), so it can reap it. When the test process exits — normally, by a
//! panic, or killed — the pipe closes, and the guardian stops the server
//! (`pg_ctl stop -m immediate`), reaps it and removes the directory. A [`Cluster`] that is
//! dropped (private clusters) closes the pipe and waits for the guardian, so it is gone on
//! return.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use conflict_runtime::Runtime;
use conflict_runtime::store::{EntityStore, PgStore};

use crate::suite::{Backend, Scale, Scales};

/// Where Debian installs the PostgreSQL server binaries, one directory per major version.
pub const PG_ROOT: &str = "/usr/lib/postgresql";

/// Environment variable naming a directory with the server binaries (`initdb`, `pg_ctl`,
/// `postgres`, `pg_isready`), overriding the search.
pub const BIN_ENV: &str = "CONFLICT_PG_BIN";

/// The major version the tests are written for, preferred when several are installed.
pub const PREFERRED_MAJOR: u32 = 15;

/// The binary directory of the installed PostgreSQL server.
///
/// # Errors
/// A message naming the Debian package `postgresql` if no server binaries are found.
pub fn find_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        return if has_server_binaries(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "{BIN_ENV}={} holds no initdb and pg_ctl. {}",
                dir.display(),
                install_hint()
            ))
        };
    }
    find_bin_in(Path::new(PG_ROOT))
}

/// The binary directory under `root` (`root/<major>/bin`), preferring [`PREFERRED_MAJOR`], else
/// the newest.
///
/// # Errors
/// A message naming the Debian package `postgresql` if `root` holds no server binaries.
pub fn find_bin_in(root: &Path) -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((major, bin))
        })
        .collect();
    found.sort();
    let preferred = found
        .iter()
        .position(|(major, _)| *major == PREFERRED_MAJOR);
    match preferred {
        Some(i) => Ok(found.swap_remove(i).1),
        None => found.pop().map(|(_, bin)| bin).ok_or_else(|| {
            format!(
                "PostgreSQL server binaries not found (no {}/*/bin/initdb). {}",
                root.display(),
                install_hint()
            )
        }),
    }
}

fn install_hint() -> String {
    format!(
        "The PostgreSQL tests start a throwaway PostgreSQL {PREFERRED_MAJOR} cluster and need its \
         server binaries: install the Debian package `postgresql` \
         (`apt-get install -y postgresql`; scripts/test does this), or set {BIN_ENV} to the directory \
         holding initdb and pg_ctl."
    )
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres", "pg_isready"]
        .iter()
        .all(|tool| dir.join(tool).is_file())
}

/// A running throwaway cluster; stopped and removed when dropped or when the process exits.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Run the server tools through `runuser -u postgres` (we are root).
    as_postgres: bool,
    /// The write end of the guardian's pipe: closing it stops and removes the cluster.
    guard: Option<ChildStdin>,
    guardian: Option<Child>,
}

/// The guardian: runs as the server's user, starts the server as its own child on each
/// `start <port>` line, and on end of input (the test process closed the pipe or exited) stops
/// the server, reaps it (so not even a zombie is left) and removes the directory.
const GUARDIAN: &str = r#"
cd "$3" || exit 1
while read -r command port; do
    if [ "$command" = start ]; then
        "$1/postgres" -D "$2" -p "$port" >>"$3/server.log" 2>&1 </dev/null &
    fi
done
"$1/pg_ctl" -D "$2" stop -m immediate -w -t 30 >/dev/null 2>&1
wait
cd /
rm -rf "$3"
"#;

/// Log lines of a server that gave up starting (its clients' FATAL lines do not count).
const SERVER_DIED: [&str; 3] = [
    "database system is shut down",
    PORT_TAKEN,
    "lock file \"postmaster.pid\" already exists",
];

/// The log line of a server whose port was taken.
const PORT_TAKEN: &str = "could not create any TCP/IP sockets";

impl Cluster {
    /// Starts a fresh cluster (see the [module docs](self)).
    ///
    /// # Errors
    /// What failed, with the server log where there is one.
    pub fn start() -> Result<Self, String> {
        let bin = find_bin()?;
        let as_postgres = running_as_root()?;
        if as_postgres && !succeeded(Command::new("id").args(["-u", "postgres"]).output()) {
            return Err(format!(
                "running as root, the tests start PostgreSQL as the `postgres` user, which does \
                 not exist. {}",
                install_hint()
            ));
        }
        let dir = make_dir(as_postgres)?;
        let data = dir.join("data");
        let mut guardian = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh"]);
            c
        } else {
            Command::new("sh")
        };
        let mut guardian = guardian
            .arg("-c")
            .arg(GUARDIAN)
            .arg("conflict-pg-guardian")
            .arg(&bin)
            .arg(&data)
            .arg(&dir)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("could not spawn the cluster's guardian (sh): {e}"))?;
        let guard = guardian.stdin.take();
        // From here on, an early return drops `cluster`, which stops and removes it.
        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            as_postgres,
            guard,
            guardian: Some(guardian),
        };
        cluster.initdb()?;
        let mut tries = 0;
        loop {
            tries += 1;
            cluster.port = free_port()?;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                // The port was taken between probing and binding: try another.
                Err(e) if tries < 5 && e.contains(PORT_TAKEN) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A `key=value` connection string for the superuser `postgres` on database `postgres`.
    #[must_use]
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=10",
            self.port
        )
    }

    /// The TCP port the server listens on (loopback only).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server has logged so far (statements that failed with an `ERROR` are logged
    /// with their SQLSTATE message).
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Stops the server; `mode` is `smart`, `fast` or `immediate` (a crash: recovery at the next
    /// start).
    ///
    /// # Errors
    /// pg_ctl's output if it failed.
    pub fn stop(&self, mode: &str) -> Result<(), String> {
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", mode, "-w", "-t", "60"])
            .output();
        self.check("pg_ctl stop", out)
    }

    /// Starts the stopped server again on the same port.
    ///
    /// # Errors
    /// The server log if it failed.
    pub fn start_again(&self) -> Result<(), String> {
        self.start_server()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The tools resolve the current directory, which the postgres user may not be allowed
        // to read.
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    fn initdb(&self) -> Result<(), String> {
        let out = self
            .tool("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .output();
        self.check("initdb", out)?;
        let conf = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .map_err(|e| format!("could not read {}: {e}", conf.display()))?;
        // Loopback TCP only (no socket directory to own), room for the tests' pools and worker
        // processes, and no fsync: the tests crash the server process, never the machine, and
        // written WAL survives that in the page cache.
        text.push_str(
            "\n# conflict tests\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             max_connections = 200\nfsync = off\nfull_page_writes = off\n",
        );
        std::fs::write(&conf, text).map_err(|e| format!("could not write {}: {e}", conf.display()))
    }

    /// Has the guardian start the server, and waits until it accepts connections.
    fn start_server(&self) -> Result<(), String> {
        let log_before = std::fs::metadata(self.log()).map_or(0, |m| m.len());
        let mut guard = self
            .guard
            .as_ref()
            .ok_or_else(|| "the cluster's guardian is gone".to_string())?;
        guard
            .write_all(format!("start {}\n", self.port).as_bytes())
            .map_err(|e| format!("could not reach the cluster's guardian: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-t",
                    "2",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("could not run pg_isready: {e}"))?;
            if ready.success() {
                return Ok(());
            }
            let log = std::fs::read(self.log()).unwrap_or_default();
            let new = String::from_utf8_lossy(log.get(log_before as usize..).unwrap_or_default());
            // Connection attempts during start-up log FATAL lines too; these say the server
            // itself gave up.
            let died = SERVER_DIED.iter().any(|m| new.contains(m));
            if died || Instant::now() > deadline {
                return Err(format!(
                    "the server did not start on port {}:\n{}",
                    self.port,
                    new.lines().rev().take(30).collect::<Vec<_>>().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check(&self, what: &str, out: std::io::Result<Output>) -> Result<(), String> {
        let out = out.map_err(|e| format!("could not run {what}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let mut msg = format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Ok(log) = std::fs::read_to_string(self.log()) {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let _ = write!(msg, "\nserver log (last lines):\n");
            for line in tail.iter().rev() {
                let _ = writeln!(msg, "{line}");
            }
        }
        Err(msg)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the pipe tells the guardian to stop the server and remove the directory.
        drop(self.guard.take());
        if let Some(mut guardian) = self.guardian.take() {
            let _ = guardian.wait();
        }
    }
}

fn running_as_root() -> Result<bool, String> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("could not run `id -u`: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn succeeded(out: std::io::Result<Output>) -> bool {
    out.is_ok_and(|o| o.status.success())
}

/// A fresh directory the server's user owns.
fn make_dir(as_postgres: bool) -> Result<PathBuf, String> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "mktemp"]);
        c
    } else {
        Command::new("mktemp")
    };
    // As root, /tmp rather than $TMPDIR: the postgres user must be able to reach it.
    let parent = if as_postgres {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let out = cmd
        .arg("-d")
        .arg("-p")
        .arg(&parent)
        .arg("conflict-pg.XXXXXX")
        .current_dir("/")
        .output()
        .map_err(|e| format!("could not run mktemp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mktemp -d in {} failed: {}",
            parent.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("could not find a free loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("could not find a free loopback port: {e}"))
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster shared by the tests of this binary, started on first use.
///
/// # Panics
/// With the reason (e.g. the missing `postgresql` package) if it cannot be started.
pub fn shared() -> &'static Cluster {
    match SHARED.get_or_init(Cluster::start) {
        Ok(cluster) => cluster,
        Err(e) => panic!("could not start the test PostgreSQL cluster: {e}"),
    }
}

/// A schema name no other store of this run uses, starting with `hint`.
#[must_use]
pub fn unique_schema(hint: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, 't');
    }
    format!("{name}_{n}")
}

/// A store on `cluster` in a fresh schema (so tests sharing the cluster do not interfere).
///
/// # Panics
/// If it cannot connect.
pub async fn store_on(cluster: &Cluster, hint: &str) -> PgStore {
    let schema = unique_schema(hint);
    PgStore::builder(cluster.url())
        .schema(schema.as_str())
        .max_connections(8)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("could not open a store in schema {schema}: {e}"))
}

/// A store on the shared cluster in a fresh schema.
///
/// # Panics
/// If the cluster cannot be started or reached.
pub async fn store(hint: &str) -> PgStore {
    store_on(shared(), hint).await
}

/// A runtime on a fresh [`store`], and the store (for ledger checks).
///
/// # Panics
/// As [`store`], or if the runtime configuration is invalid.
pub async fn runtime(hint: &str) -> (Runtime, PgStore) {
    let store = store(hint).await;
    let rt = Runtime::builder()
        .store(store.clone())
        .build()
        .unwrap_or_else(|e| panic!("runtime configuration: {e}"));
    (rt, store)
}

/// The backend suite's PostgreSQL backend (`backend_suite!(postgres, Postgres)`): each case on
/// a store in a fresh schema of the [`shared`] cluster, named after the case.
#[derive(Debug)]
pub struct Postgres;

impl Backend for Postgres {
    // Every attempt is a few round trips.
    const SCALES: Scales = Scales {
        one_entity: Scale {
            tasks: 16,
            calls: 25,
        },
        mixed_priorities: Scale {
            tasks: 16,
            calls: 25,
        },
        transfers: Scale {
            tasks: 16,
            calls: 25,
        },
        bank_transfers: 40,
    };
    const PAUSED_CLOCK: bool = false;

    async fn runtime(case: &'static str) -> Runtime {
        runtime(case).await.0
    }

    async fn store(case: &'static str) -> Arc<dyn EntityStore> {
        Arc::new(store(case).await)
    }
}
