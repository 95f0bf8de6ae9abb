//! A headless Chromium driven over the Chrome DevTools Protocol (CDP), for tests of web pages.
//!
//! [`Browser::launch`] starts `chromium` (or `chromium-browser`, `google-chrome` from `PATH`;
//! `KAD_TEST_CHROMIUM` overrides the path) with a throwaway profile and connects to its
//! DevTools WebSocket; [`Browser::open`] opens a page in a new tab; [`Page::eval`] evaluates
//! JavaScript in it and returns the result as JSON. The API is blocking (the WebSocket runs on
//! a thread of its own), for plain `#[test]` functions. Every step is bounded ([`STEP`]) and
//! panics with a clear message when it takes longer. A missing browser is a test failure, not
//! a skip: install Debian's `chromium` package.
//!
//! The browser is closed, and its process killed by its PID, when the [`Browser`] is dropped.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The longest any one step (launch, a CDP call, a page load) may take.
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// The browsers looked for on `PATH`, in order.
const NAMES: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// Lines of the browser's stderr and of each page's console kept for failure messages.
const LOG_LINES: usize = 200;

/// A headless Chromium with a temporary profile, closed and killed (by its PID) when dropped.
pub(crate) struct Browser {
    child: Child,
    cdp: Cdp,
    /// The tail of the browser's stderr.
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Its profile directory, removed on drop (after the browser is gone).
    profile: Option<tempfile::TempDir>,
}

/// A tab of a [`Browser`], closed when dropped.
pub(crate) struct Page<'b> {
    browser: &'b Browser,
    target_id: String,
    session_id: String,
}

/// Finds the browser binary: `KAD_TEST_CHROMIUM`, else the first of [`NAMES`] on `PATH`.
pub(crate) fn find_chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("KAD_TEST_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in NAMES {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no Chromium found: none of {NAMES:?} is on PATH (and KAD_TEST_CHROMIUM is not set). \
         The web page tests need a headless browser: install Debian's `chromium` package \
         (`apt-get install chromium`)"
    );
}

impl Browser {
    /// Launches a headless Chromium and connects to it; panics (with its stderr) when it is
    /// missing or does not come up within [`STEP`].
    pub(crate) fn launch() -> Self {
        let exe = find_chromium();
        let profile = tempfile::Builder::new()
            .prefix("kad-chromium-")
            .tempdir()
            .expect("create a temporary Chromium profile directory");
        let mut child = Command::new(&exe)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-breakpad",
                "--disable-crash-reporter",
                "--mute-audio",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); install Debian's `chromium` package",
                    exe.display()
                )
            });

        // Its stderr: the DevTools address, then kept (the tail) for failure messages.
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (url_tx, url_rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        let tail = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(at) = line.find("DevTools listening on ") {
                    let url = line[at + "DevTools listening on ".len()..]
                        .trim()
                        .to_owned();
                    let _ = url_tx.send(url);
                }
                push_bounded(&tail, line);
            }
        });
        let url = match url_rx.recv_timeout(STEP) {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "{} printed no `DevTools listening on ws://...` line within {STEP:?} \
                     ({e}; exit status {status:?}); its stderr:\n{}",
                    exe.display(),
                    joined(&stderr)
                );
            }
        };
        let cdp = match Cdp::connect(&url) {
            Ok(cdp) => cdp,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cannot connect to Chromium's DevTools at {url}: {e}; its stderr:\n{}",
                    joined(&stderr)
                );
            }
        };
        Self {
            child,
            cdp,
            stderr,
            profile: Some(profile),
        }
    }

    /// The browser's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Opens `url` in a new tab and waits (up to [`STEP`]) until it has loaded.
    pub(crate) fn open(&self, url: &str) -> Page<'_> {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }), None);
        let target_id = str_field(&target, "targetId");
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
            None,
        );
        let page = Page {
            browser: self,
            target_id,
            session_id: str_field(&attached, "sessionId"),
        };
        page.call("Runtime.enable", json!({}));
        page.call("Page.enable", json!({}));
        page.call("Log.enable", json!({}));
        let nav = page.call("Page.navigate", json!({ "url": url }));
        if let Some(err) = nav.get("errorText").and_then(Value::as_str) {
            panic!("cannot load {url}: {err}");
        }
        let loaded = if url == "about:blank" {
            "document.readyState === 'complete'".to_owned()
        } else {
            "document.readyState === 'complete' && location.href !== 'about:blank'".to_owned()
        };
        page.wait_for(&format!("{url} loaded"), &loaded, STEP);
        page
    }

    /// Sends one CDP command (to the browser, or to a page's session) and returns its result;
    /// panics on an error or after [`STEP`].
    fn call(&self, method: &str, params: Value, session: Option<&str>) -> Value {
        match self.cdp.call(method, params, session, STEP) {
            Ok(v) => v,
            Err(e) => panic!(
                "Chromium: {method}: {e}; the browser's stderr:\n{}",
                joined(&self.stderr)
            ),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Politely first (it then ends its helper processes itself), then by its PID.
        let _ = self
            .cdp
            .call("Browser.close", json!({}), None, Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.cdp.shut_down();
        if let Some(dir) = self.profile.take() {
            let _ = dir.close();
        }
    }
}

impl Page<'_> {
    /// Evaluates `js` (an expression; a promise is awaited) in the page and returns its value
    /// as JSON (`null` for `undefined`). Panics when it throws, or after [`STEP`].
    pub(crate) fn eval(&self, js: &str) -> Value {
        match self.try_eval(js) {
            Ok(v) => v,
            Err(e) => panic!("{e}\nthe page's console:\n{}", self.console().join("\n")),
        }
    }

    /// [`Page::eval`], returning the exception instead of panicking on one.
    pub(crate) fn try_eval(&self, js: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("an exception");
            return Err(format!("evaluating `{js}` threw: {what}"));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `js` every 50 ms until its value is truthy (not `null`, `false`, `0` or `""`)
    /// and returns that value; panics after `timeout` with `what`, the last value and the
    /// page's console.
    pub(crate) fn wait_for(&self, what: &str, js: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            last = self.try_eval(js);
            if let Ok(v) = &last {
                if truthy(v) {
                    return v.clone();
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what} (`{js}`: last {last:?}); \
             the page's console:\n{}",
            self.console().join("\n")
        );
    }

    /// A `data-*` attribute of the page's `<body>` (`name` in camelCase, as in
    /// `document.body.dataset`), or `None` when it is not set.
    pub(crate) fn body_data(&self, name: &str) -> Option<String> {
        let js = format!(
            "document.body ? document.body.dataset[{}] : undefined",
            json!(name)
        );
        self.eval(&js).as_str().map(str::to_owned)
    }

    /// What the page logged as errors or warnings (its console's and the browser's, such as
    /// failed requests), and its uncaught exceptions (the last [`LOG_LINES`] of all pages).
    pub(crate) fn console(&self) -> Vec<String> {
        let log = self
            .browser
            .cdp
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        log.iter()
            .filter(|(session, _)| session.as_deref() == Some(self.session_id.as_str()))
            .map(|(_, line)| line.clone())
            .collect()
    }

    fn call(&self, method: &str, params: Value) -> Value {
        self.browser.call(method, params, Some(&self.session_id))
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        let _ = self.browser.cdp.call(
            "Target.closeTarget",
            json!({ "targetId": self.target_id }),
            None,
            Duration::from_secs(2),
        );
    }
}

/// The JavaScript truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn str_field(v: &Value, name: &str) -> String {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("Chromium: no {name:?} in {v}"))
        .to_owned()
}

fn push_bounded(log: &Mutex<VecDeque<String>>, line: String) {
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    if log.len() >= LOG_LINES {
        log.pop_front();
    }
    log.push_back(line);
}

fn joined(log: &Mutex<VecDeque<String>>) -> String {
    let log = log.lock().unwrap_or_else(PoisonError::into_inner);
    log.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Console lines: (the page's session id, the line).
type ConsoleLog = Arc<Mutex<VecDeque<(Option<String>, String)>>>;

/// One command for the connection's thread.
struct Call {
    id: u64,
    text: String,
    reply: mpsc::Sender<Value>,
}

/// A CDP connection: a thread with its own tokio runtime owns the WebSocket, matches replies
/// to calls by id and records the pages' console errors and exceptions.
struct Cdp {
    calls: Option<tokio::sync::mpsc::UnboundedSender<Call>>,
    thread: Option<JoinHandle<()>>,
    next_id: AtomicU64,
    /// (session id, line) of console errors and warnings and uncaught exceptions.
    log: ConsoleLog,
}

impl Cdp {
    fn connect(url: &str) -> Result<Self, String> {
        let host = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| format!("not a ws:// URL: {url:?}"))?
            .to_owned();
        let (calls, mut rx) = tokio::sync::mpsc::unbounded_channel::<Call>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let log: ConsoleLog = Arc::new(Mutex::new(VecDeque::new()));
        let events = Arc::clone(&log);
        let url = url.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let connect = async {
                    let tcp = tokio::net::TcpStream::connect(&host)
                        .await
                        .map_err(|e| e.to_string())?;
                    tokio_tungstenite::client_async(url.as_str(), tcp)
                        .await
                        .map_err(|e| e.to_string())
                };
                let mut ws = match tokio::time::timeout(STEP, connect).await {
                    Ok(Ok((ws, _))) => ws,
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    Err(_) => {
                        let _ =
                            ready_tx.send(Err(format!("no WebSocket handshake within {STEP:?}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut pending: HashMap<u64, mpsc::Sender<Value>> = HashMap::new();
                loop {
                    tokio::select! {
                        call = rx.recv() => {
                            // None: the Browser is gone.
                            let Some(call) = call else { break };
                            if ws.send(Message::text(call.text)).await.is_err() {
                                break;
                            }
                            pending.insert(call.id, call.reply);
                        }
                        msg = ws.next() => {
                            let text = match msg {
                                Some(Ok(Message::Text(t))) => t,
                                Some(Ok(_)) => continue,
                                Some(Err(_)) | None => break,
                            };
                            let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                            if let Some(id) = v.get("id").and_then(Value::as_u64) {
                                if let Some(reply) = pending.remove(&id) {
                                    let _ = reply.send(v);
                                }
                            } else if let Some(line) = console_line(&v) {
                                let session = v["sessionId"].as_str().map(str::to_owned);
                                let mut log = events.lock().unwrap_or_else(PoisonError::into_inner);
                                if log.len() >= LOG_LINES {
                                    log.pop_front();
                                }
                                log.push_back((session, line));
                            }
                        }
                    }
                }
                // Dropping `pending` tells the callers still waiting that the connection is gone.
            });
        });
        match ready_rx.recv_timeout(STEP + Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self {
                calls: Some(calls),
                thread: Some(thread),
                next_id: AtomicU64::new(1),
                log,
            }),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("the CDP thread did not connect: {e}")),
        }
    }

    /// One command and its result (`Err` on a CDP error, a lost connection or a timeout).
    fn call(
        &self,
        method: &str,
        params: Value,
        session: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (reply, answer) = mpsc::channel();
        let calls = self.calls.as_ref().ok_or("the connection is shut down")?;
        calls
            .send(Call {
                id,
                text: msg.to_string(),
                reply,
            })
            .map_err(|_| "the connection to Chromium is closed".to_owned())?;
        let v = match answer.recv_timeout(timeout) {
            Ok(v) => v,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("no answer within {timeout:?}"));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the connection to Chromium was lost".to_owned());
            }
        };
        if let Some(e) = v.get("error") {
            return Err(format!("error {e}"));
        }
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Ends the connection's thread.
    fn shut_down(&mut self) {
        self.calls = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A line for the page's console log, from a `Runtime.consoleAPICalled` (errors and warnings)
/// or `Runtime.exceptionThrown` event.
fn console_line(v: &Value) -> Option<String> {
    let p = &v["params"];
    match v["method"].as_str()? {
        "Runtime.exceptionThrown" => {
            let ex = &p["exceptionDetails"];
            let what = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("?");
            Some(format!("uncaught: {what}"))
        }
        // Network failures and the like.
        "Log.entryAdded" => {
            let e = &p["entry"];
            if !matches!(e["level"].as_str()?, "error" | "warning") {
                return None;
            }
            let url = e["url"]
                .as_str()
                .map(|u| format!(" ({u})"))
                .unwrap_or_default();
            Some(format!(
                "{}: {}{url}",
                e["level"].as_str()?,
                e["text"].as_str()?
            ))
        }
        "Runtime.consoleAPICalled" => {
            let kind = p["type"].as_str()?;
            if !matches!(kind, "error" | "warning" | "assert") {
                return None;
            }
            let args: Vec<String> = p["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| match (x.get("value"), x["description"].as_str()) {
                            (Some(Value::String(s)), _) => s.clone(),
                            (Some(v), _) => v.to_string(),
                            (None, Some(d)) => d.to_owned(),
                            (None, None) => x["type"].as_str().unwrap_or("?").to_owned(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(format!("console.{kind}: {}", args.join(" ")))
        }
        _ => None,
    }
}
