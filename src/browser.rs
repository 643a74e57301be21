//! Opening a sign-in page in the user's browser, where one exists: `mcp-sidecar login` and
//! `mcp-sidecar stdio` run by hand in a terminal (as the Go seed does). Never in a container or
//! without a terminal (a host spawned the process, or CI), never a URL that is not http(s) (the
//! URL comes from the authorization server), and never through a shell: the URL is one argument.

use std::collections::HashMap;
use std::process::{Command, Stdio};

/// The command that opens a URL here, if any: the first entry of `BROWSER` (the convention of
/// `xdg-open` and Python's `webbrowser`), else `open` on macOS, else `xdg-open` when a graphical
/// session is there (`DISPLAY` or `WAYLAND_DISPLAY`).
pub fn opener(env: &HashMap<String, String>) -> Option<String> {
    if let Some(browser) = env
        .get("BROWSER")
        .and_then(|b| b.split(':').map(str::trim).find(|b| !b.is_empty()))
    {
        return Some(browser.to_string());
    }
    if cfg!(target_os = "macos") {
        return Some("open".into());
    }
    let graphical = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|key| env.get(*key).is_some_and(|v| !v.is_empty()));
    graphical.then(|| "xdg-open".into())
}

/// Whether `url` may be handed to a browser: http or https, nothing else (`file:`, `javascript:`
/// or a command-looking string from a hostile authorization server are refused).
pub fn openable(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// Tries to open `url`; true when the opener started. It is not waited for (a browser may run
/// for hours); a thread reaps it. `in_container`: the caller's [`crate::stdio::in_container`]
/// (a container's "browser" is nobody's).
pub fn open(url: &str, env: &HashMap<String, String>, in_container: bool) -> bool {
    if !openable(url) || in_container {
        return false;
    }
    let Some(opener) = opener(env) else {
        return false;
    };
    start(&opener, url)
}

/// Starts `opener URL`, the URL one argument, and reaps it in a thread.
fn start(opener: &str, url: &str) -> bool {
    let child = Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(mut child) => {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            true
        }
        Err(e) => {
            tracing::debug!(opener, error = %e, "cannot start the browser");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_http_urls_are_opened() {
        assert!(openable("https://idp.example/device?user_code=AB-CD"));
        assert!(openable("http://localhost:8080/device"));
        for refused in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "--help",
            "; rm -rf ~",
            "",
        ] {
            assert!(!openable(refused), "{refused}");
        }
    }

    #[test]
    fn nothing_is_opened_in_a_container_or_for_a_refused_url() {
        let graphical = env(&[("DISPLAY", ":0"), ("BROWSER", "true")]);
        assert!(!open("https://idp.example/device", &graphical, true));
        assert!(!open("file:///etc/passwd", &graphical, false));
        assert!(open("https://idp.example/device", &graphical, false));
    }

    #[test]
    fn the_opener_follows_browser_then_the_graphical_session() {
        assert_eq!(
            opener(&env(&[
                ("BROWSER", " :firefox:chromium"),
                ("DISPLAY", ":0")
            ]))
            .as_deref(),
            Some("firefox")
        );
        if !cfg!(target_os = "macos") {
            assert_eq!(opener(&env(&[])), None, "no graphical session, no browser");
            assert_eq!(
                opener(&env(&[("WAYLAND_DISPLAY", "wayland-0")])).as_deref(),
                Some("xdg-open")
            );
        }
    }

    #[test]
    fn the_browser_gets_the_url_as_one_argument() {
        // The "browser" is a script that records its arguments.
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let script = dir.path().join("browser");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$#\" \"$1\" > {}\n",
                seen.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let url = "https://idp.example/device?user_code=AB CD&x=$(id)";
        assert!(start(script.to_str().unwrap(), url));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !seen.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let recorded = std::fs::read_to_string(&seen).unwrap();
        assert_eq!(recorded, format!("1\n{url}\n"));
    }
}
