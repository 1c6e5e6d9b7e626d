//! The server binary as a child process, for what only a process shows: its exit code, its
//! memory and descriptors, a SIGKILL or SIGTERM.
//!
//! The listening socket is bound here, on `127.0.0.1:0`, and handed to the child as fd 3 with
//! `LISTEN_FDS=1` (systemd's socket activation, which the server supports), so the address is
//! known before the child runs and no output is parsed for it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt as _, FdMapping};
use rustix::process::Signal;

use crate::PATIENCE;

pub struct ServerProcess {
    pub addr: SocketAddr,
    /// `None` once reaped; a process still running when its owner is dropped is killed.
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `binary` on a new loopback socket, with `storage` as its working and storage
    /// directory plus the environment in `env`, and returns once it answers `/healthz`.
    ///
    /// # Panics
    /// When the binary cannot start or does not answer within [`PATIENCE`].
    pub fn start(binary: &Path, storage: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary);
        command
            .current_dir(storage)
            .env("STORAGE", storage)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null());
        Self::start_command(command)
    }

    /// Like [`ServerProcess::start`] for a command the caller prepared (a wrapper that lowers
    /// a limit, a piped log): it is handed the socket as fd 3 and must run the server with
    /// its environment.
    pub fn start_command(mut command: Command) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        command
            .env("LISTEN_FDS", "1")
            .fd_mappings(vec![FdMapping {
                parent_fd: OwnedFd::from(listener),
                child_fd: 3,
            }])
            .expect("fd 3 is free in the child");
        let child = command.spawn().expect("server binary starts");
        // The command holds this process's copy of the socket: closing it leaves the child the
        // only holder, so a child that dies refuses connections instead of leaving them queued.
        drop(command);
        let server = Self {
            addr,
            child: Some(child),
        };
        server.wait_until_serving();
        server
    }

    /// Starts another server of the same Socket.IO protocol (`sh -c "exec <command>"`), which
    /// listens on the port its `PORT` variable names and stores under `STORAGE` (as the
    /// Node.js original does); returns once it answers an Engine.IO handshake.
    ///
    /// It cannot be handed a socket, so the port is found free and then released, and the
    /// handshake is retried until the server listens, within [`PATIENCE`].
    ///
    /// # Panics
    /// When the command cannot start or does not answer in time.
    pub fn start_other(command: &str, storage: &Path, env: &[(&str, &str)]) -> Self {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .current_dir(storage)
            .env("STORAGE", storage)
            .env("PORT", addr.port().to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("the other server starts");
        let server = Self {
            addr,
            child: Some(child),
        };
        let started = std::time::Instant::now();
        while !server.answers(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n") {
            assert!(
                started.elapsed() < PATIENCE,
                "the other server did not answer a handshake within {PATIENCE:?}: {command}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Whether `request` gets a 200 answer.
    fn answers(&self, request: &[u8]) -> bool {
        let answer = TcpStream::connect(self.addr).and_then(|mut stream| {
            stream.set_read_timeout(Some(PATIENCE))?;
            stream.write_all(request)?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        });
        answer.is_ok_and(|answer| answer.starts_with("HTTP/1.1 200"))
    }

    /// One `/healthz` exchange, bounded in time (the first request waits in the socket's
    /// backlog until the server accepts).
    fn wait_until_serving(&self) {
        assert!(
            self.answers(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
            "the server did not answer /healthz within {PATIENCE:?} of starting"
        );
    }

    /// The child's standard output and error, when the command piped them.
    pub fn take_output(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        let child = self.child.as_mut().expect("not reaped");
        (child.stdout.take(), child.stderr.take())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not reaped").id()
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("not reaped");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let child = self.child.as_ref().expect("not reaped");
        rustix::process::kill_process(rustix::process::Pid::from_child(child), Signal::TERM)
            .expect("SIGTERM");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(mut self) -> Option<i32> {
        let mut child = self.child.take().expect("not reaped");
        tokio::task::spawn_blocking(move || child.wait().expect("wait").code())
            .await
            .expect("wait task")
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Peak resident memory in bytes since the process started (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Open file descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("the process's descriptors")
            .count()
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}
