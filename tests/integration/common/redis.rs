//! A real `redis-server` (Debian's package; `.ci/run` installs it) on a free loopback port,
//! without persistence, killed when dropped.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(port)
    }

    /// On `port` (again, after [`Redis::kill`]: a restart that comes back empty).
    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install -y redis-server; .ci/run installs it)");
        let redis = Self {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + super::DEADLINE;
        while redis.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One command over RESP; the first line of the reply (or the bulk value), `None` when
    /// Redis cannot be reached.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            if complete(&reply) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&reply).into_owned();
        Some(text.trim_end().to_string())
    }

    /// Every key and value in the database, as text.
    pub fn dump(&self) -> String {
        let keys = self.command(&["KEYS", "*"]).unwrap_or_default();
        let mut out = keys.clone();
        for key in keys.lines().filter(|l| !l.starts_with(['*', '$'])) {
            out.push('\n');
            out.push_str(&self.command(&["GET", key]).unwrap_or_default());
        }
        out
    }
}

/// Whether a RESP reply has fully arrived (simple, integer, error, bulk or flat array).
fn complete(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    let lines: Vec<&str> = text.split("\r\n").collect();
    let Some(first) = lines.first() else {
        return false;
    };
    match first.chars().next() {
        Some('+' | '-' | ':') => text.ends_with("\r\n"),
        Some('$') => {
            let len: i64 = first[1..].parse().unwrap_or(0);
            len < 0 || text.len() >= first.len() + 2 + len as usize + 2
        }
        Some('*') => {
            let count: i64 = first[1..].parse().unwrap_or(0);
            // Flat arrays of bulk strings: a header and a value line per element.
            count <= 0 || (lines.len() as i64 > count * 2 && text.ends_with("\r\n"))
        }
        _ => false,
    }
}

/// A TCP relay in front of Redis that a test can cut, as a network partition between one
/// sidecar and Redis: while cut, the connections through it are closed and new ones are closed
/// at once.
pub struct Relay {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(redis_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = tokio::sync::watch::Sender::new(0u64);
        let task = tokio::spawn({
            let (cut, cuts) = (cut.clone(), cuts.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue;
                    }
                    let mut cuts = cuts.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cuts.changed() => {}
                        }
                    });
                }
            }
        });
        Self {
            port,
            cut,
            cuts,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
