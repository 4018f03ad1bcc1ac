//! The real `switchboard` binary as a child process: started on a free loopback port, waited on
//! until ready, killed with SIGKILL or stopped with SIGTERM, and always reaped.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use switchboard::client::Client;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
const READY_POLL: Duration = Duration::from_millis(15);
const START_ATTEMPTS: usize = 5;

/// Where a test's child servers keep their data, config and log, and how they are launched.
#[derive(Clone)]
pub struct Launcher {
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    token: &'static str,
    env_remove: &'static [&'static str],
    /// Extra command-line arguments for every child.
    pub args: Vec<String>,
    /// A program and its arguments that run the binary (`strace …`); empty: run it directly.
    pub wrapper: Vec<String>,
}

impl Launcher {
    /// This launcher, its children also given `--worker-threads 1` (the README's benchmark
    /// setting) if `one_worker`.
    pub fn with_one_worker(&self, one_worker: bool) -> Launcher {
        let mut launcher = self.clone();
        if one_worker {
            launcher.args.extend(["--worker-threads".into(), "1".into()]);
        }
        launcher
    }

    /// For logs: which runtime the children get.
    pub fn runtime(&self) -> &'static str {
        if self.args.iter().any(|arg| arg == "--worker-threads") { "one worker" } else { "default workers" }
    }

    /// Everything under `root`; the children get `token` as admin token and do not inherit the
    /// environment variables in `env_remove`.
    pub fn new(root: &Path, token: &'static str, env_remove: &'static [&'static str]) -> Launcher {
        Launcher {
            root: root.to_owned(),
            data_dir: root.join("data"),
            config: root.join("switchboard.toml"),
            log: root.join("server.log"),
            token,
            env_remove,
            args: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The child process; killed (SIGKILL) and reaped on drop if still running.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    token: &'static str,
    /// `child` is the launcher's wrapper, whose own child is the server.
    wrapped: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

impl Server {
    /// Starts the binary on a free port (not waiting for readiness). `configure` runs first with
    /// the chosen address: it writes `launcher.config` and returns a note for the server log.
    pub fn spawn(launcher: &Launcher, what: &str, configure: impl FnOnce(SocketAddr) -> Result<String>) -> Result<Server> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let note = configure(addr)?;
        let mut log = OpenOptions::new().create(true).append(true).open(&launcher.log).context("opening the server log")?;
        std::io::Write::write_all(&mut log, format!("==== {what}: listen {addr}, {note}\n").as_bytes())?;
        let binary = env!("CARGO_BIN_EXE_switchboard");
        let mut command = match launcher.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("--data-dir")
            .arg(&launcher.data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--config")
            .arg(&launcher.config)
            .args(&launcher.args)
            .env("SWITCHBOARD_ADMIN_TOKEN", launcher.token)
            .env("SWITCHBOARD_LOG", "warn");
        for name in launcher.env_remove {
            command.env_remove(name);
        }
        let child = command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn().context("spawning the switchboard binary")?;
        Ok(Server { child, addr, token: launcher.token, wrapped: !launcher.wrapper.is_empty() })
    }

    /// Starts the binary and waits until `/readyz` answers 200; retries on another port if the
    /// child exits first (another process took the port). `configure` is as for [`Server::spawn`],
    /// once per attempt.
    pub async fn start(
        launcher: &Launcher,
        what: &str,
        mut configure: impl FnMut(SocketAddr) -> Result<String>,
    ) -> Result<(Server, Client, Duration)> {
        let mut last_error = None;
        for attempt in 0..START_ATTEMPTS {
            let started = Instant::now();
            let mut server = Server::spawn(launcher, &format!("{what} (attempt {attempt})"), &mut configure)?;
            match server.wait_ready().await {
                Ok(client) => return Ok((server, client, started.elapsed())),
                Err(error) if server.exited() => {
                    eprintln!("{what}: server exited before ready ({error:#}); retrying on another port");
                    last_error = Some(error);
                }
                Err(error) => return Err(error.context(format!("{what}: server on {} never became ready", server.addr))),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow!("no attempt"))
            .context(format!("{what}: server did not start in {START_ATTEMPTS} attempts")))
    }

    /// The child has exited (or cannot be asked).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Polls `/readyz` until it answers 200; returns a connected client.
    async fn wait_ready(&mut self) -> Result<Client> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut client: Option<Client> = None;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("server exited with {status} before it was ready");
            }
            if client.is_none() {
                client = match tokio::time::timeout(Duration::from_secs(1), Client::connect(self.addr, Some(self.token.to_owned()))).await {
                    Ok(Ok(client)) => Some(client),
                    _ => None,
                };
            }
            if let Some(c) = client.as_mut() {
                match tokio::time::timeout(Duration::from_secs(1), c.get("/readyz")).await {
                    Ok(Ok(response)) if response.status == 200 => break,
                    Ok(Ok(response)) if response.status == 503 => {}
                    Ok(Ok(response)) => bail!("GET /readyz answered {}: {}", response.status, response.text()),
                    _ => client = None,
                }
            }
            if Instant::now() >= deadline {
                bail!("not ready within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(READY_POLL).await;
        }
        ensure!(!self.exited(), "the server exited right after answering /readyz (was it another process on the port?)");
        client.context("ready implies a client")
    }

    /// SIGKILL a server that must still be running (one that exited by itself is a crash).
    pub fn sigkill(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server on {} had already exited ({status}) before it was killed", self.addr);
        }
        self.child.kill().context("SIGKILL")?;
        let status = self.child.wait().context("reaping the killed server")?;
        ensure!(status.signal() == Some(9), "the server was SIGKILLed but exited with {status}");
        Ok(())
    }

    /// SIGTERM, then the server must exit 0 within `EXIT_TIMEOUT`. A wrapped server gets the
    /// signal itself, and its wrapper (strace) exits with its status.
    pub async fn sigterm(&mut self) -> Result<Duration> {
        let pid = if self.wrapped {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))?;
            children.split_whitespace().next().context("the wrapper has no child")?.to_owned()
        } else {
            self.child.id().to_string()
        };
        let started = Instant::now();
        let kill = Command::new("kill").arg("-TERM").arg(&pid).status().context("running kill -TERM")?;
        ensure!(kill.success(), "kill -TERM {pid} failed: {kill}");
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.code() == Some(0), "after SIGTERM the server exited with {status}, not 0");
                return Ok(started.elapsed());
            }
            ensure!(started.elapsed() < EXIT_TIMEOUT, "the server did not exit within {EXIT_TIMEOUT:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
