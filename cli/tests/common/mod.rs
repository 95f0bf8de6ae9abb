//! Helpers shared by the tests that run `kad` processes.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) const KAD: &str = env!("CARGO_BIN_EXE_kad");

/// The JSON lines `child` prints on stdout, read on a thread of their own.
pub(crate) fn json_lines(child: &mut Child) -> mpsc::Receiver<Value> {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                let _ = tx.send(v);
            }
        }
    });
    lines
}

/// Where a spawned process's stderr goes: nowhere, or, when `KAD_TEST_LOGS` names a directory, a
/// file of its own there (`NAME-N.log`), to read after a failure. With `RUST_LOG` set as well,
/// every process logs at that level (`RUST_LOG=debug KAD_TEST_LOGS=/tmp/logs cargo test ...`).
fn stderr_sink(name: &str) -> Stdio {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("KAD_TEST_LOGS") else {
        return Stdio::null();
    };
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::path::Path::new(&dir).join(format!("{name}-{}-{n}.log", std::process::id()));
    match std::fs::File::create(&path) {
        Ok(f) => Stdio::from(f),
        Err(e) => panic!("KAD_TEST_LOGS: cannot create {}: {e}", path.display()),
    }
}

/// A node process, killed (by its PID) when dropped.
pub(crate) struct NodeProc {
    pub(crate) child: Child,
    pub(crate) lines: mpsc::Receiver<Value>,
    pub(crate) id: String,
    pub(crate) addr: String,
    /// Every address of its contact.
    pub(crate) addrs: Vec<String>,
    /// Its `listening` line.
    pub(crate) listening: Value,
}

impl NodeProc {
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_on("udp://127.0.0.1:0", args)
    }

    /// A node listening on `listen` (comma-separated URIs).
    pub(crate) fn start_on(listen: &str, args: &[&str]) -> Self {
        // Every node stops by itself: after 120 s unless the test gives its own --for.
        let default_for: &[&str] = if args.contains(&"--for") {
            &[]
        } else {
            &["--for", "120"]
        };
        let mut child = Command::new(KAD)
            .args(["node", "--listen", listen, "--json"])
            .args(default_for)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr_sink("node"))
            .spawn()
            .expect("start kad node");
        let lines = json_lines(&mut child);
        let mut p = Self {
            child,
            lines,
            id: String::new(),
            addr: String::new(),
            addrs: Vec::new(),
            listening: Value::Null,
        };
        let first = p.next_event("listening");
        p.listening = first.clone();
        p.id = first["id"].as_str().unwrap().to_owned();
        p.addr = first["addrs"][0].as_str().unwrap().to_owned();
        p.addrs = first["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        p
    }

    /// Its address of the given scheme (`udp`, `quic`, `ws`).
    pub(crate) fn addr_of(&self, scheme: &str) -> &str {
        self.addrs
            .iter()
            .find(|a| a.starts_with(&format!("{scheme}://")))
            .unwrap_or_else(|| panic!("node has no {scheme}:// address: {:?}", self.addrs))
    }

    pub(crate) fn next_event(&mut self, event: &str) -> Value {
        loop {
            let v = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {event:?} line within 30 s"));
            if v["event"] == event {
                return v;
            }
            assert_ne!(v["event"], "bootstrap_failed", "{v}");
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `kad ARGS` to the end: exit code, stdout, stderr.
pub(crate) fn kad(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(KAD).args(args).output().expect("run kad");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn kad_json(args: &[&str]) -> (i32, Value) {
    let out = Command::new(KAD).args(args).arg("--json").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.trim().lines().last().unwrap_or("{}").to_owned();
    let v = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (out.status.code().unwrap_or(-1), v)
}

/// A `kad` process printing JSON lines, killed (by its PID) when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) lines: mpsc::Receiver<Value>,
}

impl Proc {
    pub(crate) fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(KAD)
            .args(args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(stderr_sink(args.first().copied().unwrap_or("kad")))
            .spawn()
            .expect("start kad");
        let lines = json_lines(&mut child);
        Self { child, lines }
    }

    /// The next line matching `want`, within `limit`.
    pub(crate) fn next_where(&self, limit: Duration, want: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if want(&v) => return v,
                Ok(v) => assert_ne!(v["ok"], false, "{v}"),
                Err(_) => panic!("no matching line within {limit:?}"),
            }
        }
    }

    /// Every line until the process exits (or `limit` passes).
    pub(crate) fn rest(&self, limit: Duration) -> Vec<Value> {
        let end = Instant::now() + limit;
        let mut out = Vec::new();
        while let Ok(v) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            out.push(v);
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` node processes, the first one starting the network and the others joining through it
/// (each has finished joining when this returns).
pub(crate) fn network(n: usize) -> Vec<NodeProc> {
    let first = NodeProc::start(&[]);
    let boot = first.addr.clone();
    let mut nodes = vec![first];
    for _ in 1..n {
        let mut p = NodeProc::start(&["--bootstrap", &boot]);
        p.next_event("bootstrapped");
        nodes.push(p);
    }
    nodes
}

pub(crate) mod chromium;
