//! Runs every reference example (`examples/examples/*.rs`) as a user would, on 127.0.0.1, and
//! checks what each one prints.
//!
//! `cargo test -p kad-examples` builds the package's examples before it runs the tests; this
//! test finds them next to its own binary (`target/<profile>/examples/NAME`) and fails when one
//! is missing or older than its source. A run of this test alone (`cargo test -p kad-examples
//! --test reference_examples`) builds no examples: run `cargo build -p kad-examples --examples`
//! before it.
//!
//! A `bootstrap_node` is the network for the examples that take `--bootstrap` (the sensor
//! publisher and subscriber); the others run alone, each starting what it needs. Every example
//! runs in its own thread and under its own deadline: one that overruns is killed and fails
//! the test.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The longest any one example may take (they need a few seconds; the machine may be busy).
const LIMIT: Duration = Duration::from_secs(40);

/// The compiled example `name`, checked to exist and to be newer than its source.
fn binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/reference_examples-HASH -> target/<profile>/examples/NAME
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&path).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "example binary {} is missing: `cargo test -p kad-examples` builds the examples \
             before the tests, but a run of this test alone does not: run `cargo build -p \
             kad-examples --examples` first",
            path.display()
        );
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.rs"));
    let edited = std::fs::metadata(&source)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    assert!(
        built >= edited,
        "example binary {} is older than {}: rebuild the examples (`cargo build -p kad-examples \
         --examples`, or run the whole `cargo test -p kad-examples`)",
        path.display(),
        source.display()
    );
    path
}

/// A running example: its stdout arrives line by line, its stderr is kept for failure messages.
struct Running {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
    deadline: Instant,
}

/// What a finished example printed.
struct Finished {
    stdout: Vec<String>,
    status: ExitStatus,
    stderr: String,
}

impl Running {
    fn start(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(binary(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self {
            name: format!("{name} {}", args.join(" ")).trim_end().to_owned(),
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
            deadline: Instant::now() + LIMIT,
        }
    }

    /// Kills the example (it is our child) and fails with what it printed.
    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        panic!(
            "example `{}`: {why}\n--- stdout so far:\n{}\n--- stderr:\n{stderr}",
            self.name,
            self.seen.join("\n")
        );
    }

    /// The next line of stdout, waiting at most until the deadline.
    fn next_line(&mut self) -> String {
        let wait = self.deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.fail(&format!("no output line within {LIMIT:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => self.fail("exited before printing it"),
        }
    }

    /// Waits for the example to exit by itself; kills it and fails past the deadline.
    fn finish(mut self) -> Finished {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < self.deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => self.fail(&format!("still running after {LIMIT:?}: killed")),
                Err(e) => self.fail(&format!("cannot wait for it: {e}")),
            }
        };
        // The pipe closes at exit: the reader thread sends everything that is left.
        let mut stdout = std::mem::take(&mut self.seen);
        stdout.extend(self.lines.iter());
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let done = Finished {
            stdout,
            status,
            stderr,
        };
        assert!(
            done.status.success(),
            "example `{}` failed ({})\n--- stdout:\n{}\n--- stderr:\n{}",
            self.name,
            done.status,
            done.stdout.join("\n"),
            done.stderr
        );
        done
    }

    /// Kills an example that would run on (a bootstrap node the others are done with).
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    /// A failing test never leaves its examples behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Finished {
    /// The last line, which every example makes its `ok: ...` summary.
    fn last(&self) -> &str {
        self.stdout.last().map_or("", String::as_str)
    }

    fn has_line(&self, prefix: &str) -> bool {
        self.stdout.iter().any(|l| l.starts_with(prefix))
    }

    fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stdout
            .iter()
            .filter(|l| l.starts_with(prefix))
            .map(String::as_str)
            .collect()
    }

    fn lines_ending(&self, suffix: &str) -> Vec<&str> {
        self.stdout
            .iter()
            .filter(|l| l.ends_with(suffix))
            .map(String::as_str)
            .collect()
    }

    fn show(&self) -> String {
        self.stdout.join("\n")
    }
}

/// Runs an example alone to its end.
fn run(name: &str, args: &[&str]) -> Finished {
    Running::start(name, args).finish()
}

/// The number right after `key` in `line` (`latency=` in `... latency=4ms` gives 4).
fn number_after(line: &str, key: &str) -> u64 {
    let (_, rest) = line
        .split_once(key)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key} in {line:?}"))
}

fn two_nodes() {
    let out = run("two_nodes", &[]);
    let stored = out.lines_starting("b stored ");
    assert!(
        stored.len() == 1 && stored[0].ends_with(" on 2 node(s)"),
        "{}",
        out.show()
    );
    let read = out.lines_starting("a read ");
    assert!(
        read.len() == 1 && read[0].ends_with(r#": "hello, kad""#),
        "{}",
        out.show()
    );
    assert!(out.has_line("b pinged a"), "{}", out.show());
    assert_eq!(out.last(), r#"ok: two_nodes read back "hello, kad""#);
}

fn bootstrap_node_alone() {
    let mut node = Running::start("bootstrap_node", &["--for", "1"]);
    let addr = node.next_line();
    assert!(addr.starts_with("udp://127.0.0.1:"), "first line {addr:?}");
    let out = node.finish();
    assert!(out.has_line("id: "), "{}", out.show());
    assert!(
        out.last().starts_with("ok: bootstrap_node served "),
        "{}",
        out.show()
    );
}

fn storage_node() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("node");
    let data = data.to_str().expect("a UTF-8 temporary path");
    let out = run("storage_node", &["--data", data]);
    // `node ID: N record(s) on disk`, at the first start and at the restart: same id, the blob.
    let starts = out.lines_ending(" record(s) on disk");
    assert_eq!(starts.len(), 2, "{}", out.show());
    let id = starts[0].split(':').next().expect("an id");
    assert_eq!(
        starts[0],
        format!("{id}: 0 record(s) on disk"),
        "{}",
        out.show()
    );
    assert_eq!(
        starts[1],
        format!("{id}: 1 record(s) on disk"),
        "{}",
        out.show()
    );
    assert!(out.has_line("peer fetched "), "{}", out.show());
    assert!(
        out.last().starts_with("ok: storage_node "),
        "{}",
        out.show()
    );
    // A second process on the same directory is the same node, with the blob from its start.
    let again = run("storage_node", &["--data", data]);
    let restart = again.lines_ending(" record(s) on disk");
    assert_eq!(
        restart[0],
        format!("{id}: 1 record(s) on disk"),
        "{}",
        again.show()
    );
}

fn mainline_put_get() {
    let out = run("mainline_put_get", &[]);
    for want in [
        r#"get from another node: seq=1 value="first version""#,
        r#"get from another node: seq=2 value="second version""#,
        "stale put refused: ",
    ] {
        assert!(out.has_line(want), "no {want:?} in\n{}", out.show());
    }
    assert_eq!(
        out.last(),
        r#"ok: mainline_put_get read seq=2 "second version""#
    );
}

fn custom_plugin() {
    let out = run("custom_plugin", &[]);
    let answers = out.lines_starting("echo.UPPER -> ");
    assert_eq!(answers.len(), 2, "{}", out.show());
    assert!(
        answers[0].contains(r#""text":"HELLO, PLUGIN""#),
        "{}",
        out.show()
    );
    assert!(answers[1].contains(r#""served":2"#), "{}", out.show());
    assert!(
        out.has_line("echo.LOWER -> remote error -32601"),
        "{}",
        out.show()
    );
    assert_eq!(out.last(), r#"ok: custom_plugin answered "HELLO, PLUGIN""#);
}

fn custom_transport() {
    let out = run("custom_transport", &[]);
    assert!(
        out.has_line("a read it back from 2 node(s)"),
        "{}",
        out.show()
    );
    let counters = out.lines_starting("b's transport: ");
    assert_eq!(counters.len(), 1, "{}", out.show());
    assert!(number_after(counters[0], "sent ") > 0, "{}", counters[0]);
    assert!(
        number_after(counters[0], "received ") > 0,
        "{}",
        counters[0]
    );
    assert_eq!(
        out.last(),
        "ok: custom_transport interoperated with kad-transport-udp"
    );
}

fn sensor_publisher_alone() {
    let out = run("sensor_publisher", &[]);
    assert_eq!(
        out.lines_starting("published seq=").len(),
        5,
        "{}",
        out.show()
    );
    assert_eq!(out.last(), "ok: sensor_publisher published 5 readings");
}

fn sensor_subscriber_alone() {
    let out = run("sensor_subscriber", &["--count", "3"]);
    assert_eq!(out.lines_starting("seq=").len(), 3, "{}", out.show());
    assert_eq!(out.last(), "ok: sensor_subscriber received 3 readings");
}

/// A bootstrap node, and a sensor and its subscriber in two more processes meeting through it.
fn sensors_through_bootstrap_node() {
    // --for is a safety net: the node is stopped as soon as the others are done.
    let mut seed = Running::start("bootstrap_node", &["--for", "120"]);
    let addr = seed.next_line();
    assert!(addr.starts_with("udp://127.0.0.1:"), "first line {addr:?}");

    // Readings for about 5 s: the subscriber joins while they flow.
    let args = [
        "--bootstrap",
        &addr,
        "--readings",
        "25",
        "--every-ms",
        "200",
    ];
    let mut publisher = Running::start("sensor_publisher", &args);
    let first = publisher.next_line();
    let pubkey = first
        .strip_prefix("sensor ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("first line of sensor_publisher: {first:?}"))
        .to_owned();
    assert_eq!(pubkey.len(), 64, "{first:?}");

    let args = ["--bootstrap", &addr, "--pubkey", &pubkey, "--count", "3"];
    let subscriber = run("sensor_subscriber", &args);
    assert!(
        subscriber.has_line("subscribed at 1 rendezvous node(s)"),
        "{}",
        subscriber.show()
    );
    let readings = subscriber.lines_starting("seq=");
    assert_eq!(readings.len(), 3, "{}", subscriber.show());
    let mut last_seq = 0;
    for r in &readings {
        let seq = number_after(r, "seq=");
        assert!(
            seq > last_seq,
            "readings out of order:\n{}",
            subscriber.show()
        );
        last_seq = seq;
        // Same machine, same clock: a latency of seconds would mean something is wrong.
        assert!(number_after(r, "latency=") < 5_000, "{r}");
    }
    assert_eq!(
        subscriber.last(),
        "ok: sensor_subscriber received 3 readings"
    );

    let published = publisher.finish();
    assert_eq!(
        published.lines_starting("published seq=").len(),
        25,
        "{}",
        published.show()
    );
    assert_eq!(
        published.last(),
        "ok: sensor_publisher published 25 readings"
    );
    seed.stop();
}

#[test]
fn every_reference_example_runs_and_prints_what_it_promises() {
    let t0 = Instant::now();
    let cases: [(&str, fn()); 9] = [
        (
            "sensors through bootstrap_node",
            sensors_through_bootstrap_node,
        ),
        ("bootstrap_node alone", bootstrap_node_alone),
        ("two_nodes", two_nodes),
        ("storage_node", storage_node),
        ("mainline_put_get", mainline_put_get),
        ("custom_plugin", custom_plugin),
        ("custom_transport", custom_transport),
        ("sensor_publisher alone", sensor_publisher_alone),
        ("sensor_subscriber alone", sensor_subscriber_alone),
    ];
    // Each case in its own thread: they are independent, and mostly wait on the network.
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, case)| (name, thread::spawn(case)))
        .collect();
    let failed: Vec<&str> = handles
        .into_iter()
        .filter_map(|(name, h)| h.join().is_err().then_some(name))
        .collect();
    assert!(
        failed.is_empty(),
        "failed: {failed:?} (their panics are printed above)"
    );
    eprintln!(
        "all reference examples passed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
