//! A headless Chromium driven through WebDriver (Debian's `chromedriver`, with the `fantoccini`
//! client), for tests of web pages.
//!
//! [`Browser::launch`] starts `chromedriver` on a free loopback port and opens a session of a
//! headless `chromium` with a throwaway profile; [`Browser::open`] loads a page; [`Page::eval`]
//! evaluates JavaScript in it and returns the result as JSON. The API is blocking (a runtime of
//! its own drives the client), for plain `#[test]` functions. Every step is bounded ([`STEP`])
//! and panics with a clear message when it takes longer. A missing browser or driver is a test
//! failure, not a skip: install Debian's `chromium` and `chromium-driver` packages.
//!
//! `KAD_TEST_CHROMIUM` and `KAD_TEST_CHROMEDRIVER` override where the two are looked for. The
//! session is closed (the driver then ends the browser) and the driver killed by its PID when
//! the [`Browser`] is dropped.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The longest any one step (launch, a WebDriver call, a page load) may take.
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// The browsers looked for on `PATH`, in order.
const BROWSERS: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// Lines of the driver's log (the browser's stderr included) kept for failure messages.
const LOG_LINES: usize = 200;

/// A headless Chromium session behind a `chromedriver` of its own, ended when dropped.
pub(crate) struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Driver,
    /// The driver's log file, in `dir`.
    log: PathBuf,
    /// The browser's profile and the driver's log, removed on drop. Fields drop in order: the
    /// driver is killed (by [`Driver`]'s drop) before this folder goes.
    _dir: tempfile::TempDir,
}

/// The `chromedriver` process, killed by its PID when dropped (also when a launch panics).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The page a [`Browser`] has loaded.
pub(crate) struct Page<'b> {
    browser: &'b Browser,
}

/// `KAD_TEST_<var>`, else the first of `names` on `PATH`.
fn find(var: &str, names: &[&str], package: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "none of {names:?} is on PATH (and {var} is not set). The web page tests need a \
         headless browser and its WebDriver: install Debian's `{package}` package \
         (`apt-get install chromium chromium-driver`)"
    );
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium session; panics (with the driver's log)
    /// when either is missing or does not come up within [`STEP`].
    pub(crate) fn launch() -> Self {
        let chromium = find("KAD_TEST_CHROMIUM", BROWSERS, "chromium");
        let chromedriver = find(
            "KAD_TEST_CHROMEDRIVER",
            &["chromedriver"],
            "chromium-driver",
        );
        let dir = tempfile::Builder::new()
            .prefix("kad-chromium-")
            .tempdir()
            .expect("create a temporary Chromium profile directory");
        let log = dir.path().join("chromedriver.log");
        let mut driver = Driver(
            Command::new(&chromedriver)
                .arg("--port=0")
                .arg(format!("--log-path={}", log.display()))
                .arg("--enable-chrome-logs")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {} ({e}); install Debian's `chromium-driver` package",
                        chromedriver.display()
                    )
                }),
        );
        // Its stdout names the port it picked.
        let (port_tx, port_rx) = mpsc::channel();
        let out = driver.0.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = port_tx.send(port);
                }
            }
        });
        let port = match port_rx.recv_timeout(STEP) {
            Ok(port) => port,
            Err(e) => {
                let _ = driver.0.kill();
                let status = driver.0.wait();
                panic!(
                    "{} named no port within {STEP:?} ({e}; exit status {status:?}); its log:\n{}",
                    chromedriver.display(),
                    tail(&log)
                );
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the WebDriver client");
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
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
                    format!("--user-data-dir={}", dir.path().join("profile").display()),
                ],
            }),
        );
        // The page's console, read back by `Page::console`.
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        let url = format!("http://127.0.0.1:{port}");
        let client =
            match rt.block_on(async { tokio::time::timeout(STEP, builder.connect(&url)).await }) {
                Ok(Ok(client)) => client,
                failed => {
                    drop(driver);
                    panic!(
                        "no Chromium session through {} within {STEP:?}: {failed:?}; its log:\n{}",
                        chromedriver.display(),
                        tail(&log)
                    );
                }
            };
        Self {
            rt,
            client: Some(client),
            driver,
            log,
            _dir: dir,
        }
    }

    /// Loads `url` and waits (up to [`STEP`]) until it has loaded.
    pub(crate) fn open(&self, url: &str) -> Page<'_> {
        let client = self.client();
        self.step(&format!("load {url}"), client.goto(url));
        let page = Page { browser: self };
        page.wait_for(
            &format!("{url} loaded"),
            "document.readyState === 'complete'",
            STEP,
        );
        page
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Runs one WebDriver call; panics on an error or after [`STEP`], with the driver's log.
    fn step<T, E: fmt::Debug>(&self, what: &str, call: impl Future<Output = Result<T, E>>) -> T {
        match self
            .rt
            .block_on(async { tokio::time::timeout(STEP, call).await })
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!(
                "WebDriver: {what}: {e:?}; the driver's log:\n{}",
                self.log()
            ),
            Err(_) => panic!(
                "WebDriver: {what}: no answer within {STEP:?}; the driver's log:\n{}",
                self.log()
            ),
        }
    }

    /// The tail of the driver's log (the browser's stderr included).
    fn log(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends the browser (the driver quits it). The driver is then
        // killed by its PID, and the folder removed, as the fields drop.
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.close()).await
            });
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
        let b = self.browser;
        let script = format!("return ({js});");
        let call = b.client().execute(&script, Vec::new());
        match b
            .rt
            .block_on(async { tokio::time::timeout(STEP, call).await })
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("evaluating `{js}` failed: {e}")),
            Err(_) => panic!(
                "WebDriver: evaluating `{js}`: no answer within {STEP:?}; the driver's log:\n{}",
                b.log()
            ),
        }
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

    /// What the page logged (its console, failed requests, uncaught exceptions) since the last
    /// call, as `LEVEL message` lines.
    pub(crate) fn console(&self) -> Vec<String> {
        let b = self.browser;
        let call = b.client().issue_cmd(BrowserLog);
        let entries = match b
            .rt
            .block_on(async { tokio::time::timeout(STEP, call).await })
        {
            Ok(Ok(v)) => v,
            other => return vec![format!("(the console could not be read: {other:?})")],
        };
        let mut lines: Vec<String> = entries
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or_default()
                )
            })
            .collect();
        if lines.len() > LOG_LINES {
            lines.drain(..lines.len() - LOG_LINES);
        }
        lines
    }
}

/// Chromedriver's `POST /session/{id}/se/log` for the `browser` log (not in the W3C standard,
/// so not among the client's own commands).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

/// The last [`LOG_LINES`] lines of the file at `path`.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_LINES)..].join("\n")
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
