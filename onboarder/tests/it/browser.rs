//! A WebDriver session on Debian's headless Chromium (chromedriver), for the tests of what
//! people see in a browser: the console and the live labels. Screenshots go to
//! `target/screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::free_port;

/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session on a chromedriver of our own; both end when it is dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/test installs it)");
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("{base}/status"))
            .call()
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let created = browser.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1000",
                             // The HTTPS listener's certificate chains to the test owner's root.
                             "--ignore-certificate-errors",
                             format!("--user-data-dir={}", browser._profile.path().display())]
                }
            }}}),
        );
        browser.session = created["sessionId"].as_str().unwrap().to_string();
        browser
    }

    pub fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// A WebDriver command; its error value if it failed.
    pub fn try_call(&self, method: &str, path: &str, body: Value) -> Result<Value, Value> {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let response = match method {
            "GET" => self.http.get(&url).call(),
            "DELETE" => self.http.delete(&url).call(),
            _ => self.http.post(&url).send_json(&body),
        }
        .unwrap();
        let status = response.status();
        let value: Value = response.into_body().read_json().unwrap();
        if status.is_success() {
            Ok(value["value"].clone())
        } else {
            Err(value["value"].clone())
        }
    }

    /// Runs `command` on the element `css`, finding it again if the page was reloaded under
    /// it (the campaign page reloads itself while the campaign runs).
    pub fn on_element(&self, css: &str, method: &str, command: &str, body: Value) -> Value {
        for _ in 0..20 {
            let e = self.element(css);
            match self.try_call(method, &format!("/element/{e}/{command}"), body.clone()) {
                Ok(v) => return v,
                // Gone with the page it was on: find it again on the new one. Chromium may say
                // so as an "unknown error" from its inspector when the page was replaced
                // between the find and the command.
                Err(err)
                    if err["error"] == "stale element reference"
                        || err["error"] == "no such element"
                        || err["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("does not belong to the document")) =>
                {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(err) => panic!("WebDriver {command} on {css}: {err}"),
            }
        }
        panic!("{css} kept going stale");
    }

    pub fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn find(&self, css: &str) -> Option<String> {
        let found = self.call(
            "POST",
            "/elements",
            json!({"using": "css selector", "value": css}),
        );
        found.as_array()?.first()?[ELEMENT]
            .as_str()
            .map(str::to_string)
    }

    /// The element `css`, waiting up to 10 s for it (a click's navigation may still be under
    /// way when the click returns).
    pub fn element(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            if Instant::now() > deadline {
                let source = self.call("GET", "/source", Value::Null);
                panic!(
                    "no {css} on {}:\n{}",
                    self.url(),
                    source.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn click(&self, css: &str) {
        self.on_element(css, "POST", "click", json!({}));
    }

    pub fn type_in(&self, css: &str, text: &str) {
        self.on_element(css, "POST", "value", json!({ "text": text }));
    }

    pub fn text(&self, css: &str) -> String {
        self.on_element(css, "GET", "text", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits (reloading the page) until `check` holds.
    pub fn until(&self, secs: u64, what: &str, check: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(300));
            self.call("POST", "/refresh", json!({}));
        }
    }

    /// Waits (without reloading) until `check` holds: what the page's script updates.
    pub fn until_live(&self, secs: u64, what: &str, check: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn screenshot(&self, name: &str) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `target/screenshots/` of the workspace.
pub fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots")
}
