//! The keeper: one small process per node that outlives agent restarts and keeps containers'
//! exit codes. It is a child subreaper (`PR_SET_CHILD_SUBREAPER`) that runs `runc create` for
//! the agent, so every container's init process, orphaned when runc exits, is reparented to it;
//! when one exits it reaps it and writes the status to `<state>/exits/<container-id>`, where the
//! agent (this one or the next after a restart) reads it. No process stays per pod: this is
//! containerd's shim, once per node. Containers keep running if the keeper dies; only the exit
//! codes of those that end before a new keeper has them are lost (reported as unknown, as kubelet
//! reports a container it cannot find).
//!
//! Protocol: the agent connects to `<state>/keeper.sock`, writes one JSON [`CreateRequest`]
//! line, reads one JSON [`CreateResponse`] line.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub const SOCKET: &str = "keeper.sock";
const EXITS: &str = "exits";

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("cannot start the keeper ({exe})")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the keeper did not come up on {socket} within {seconds} s (see {log})")]
    NotUp {
        socket: PathBuf,
        seconds: u64,
        log: PathBuf,
    },
    #[error("talking to the keeper at {socket}")]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("runc create {id}: {message}")]
    Create { id: String, message: String },
}

/// Ask the keeper to `runc create` a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub id: String,
    pub runc: PathBuf,
    pub runc_root: PathBuf,
    pub bundle: PathBuf,
    /// FIFOs (made by the caller) that become the container's stdout and stderr.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateResponse {
    pub pid: Option<i32>,
    pub error: Option<String>,
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// The exit code, or 128 + the signal that killed it.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Seconds since the epoch.
    pub finished_at: i64,
}

// ---------------------------------------------------------------------------------------------
// The agent's side.

/// A handle on the node's keeper.
#[derive(Debug, Clone)]
pub struct Keeper {
    state_dir: PathBuf,
}

impl Keeper {
    /// Connects to the keeper under `state_dir`, starting one (`exe keeper <state_dir>`,
    /// detached in its own session) when none answers.
    pub fn ensure(state_dir: &Path, exe: &Path) -> Result<Keeper, KeeperError> {
        let keeper = Keeper {
            state_dir: state_dir.to_owned(),
        };
        let socket = keeper.socket();
        if UnixStream::connect(&socket).is_ok() {
            return Ok(keeper);
        }
        let log_path = state_dir.join("keeper.log");
        let spawn_error = |source| KeeperError::Spawn {
            exe: exe.to_owned(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(spawn_error)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(spawn_error)?;
        let mut command = Command::new(exe);
        command
            .arg("keeper")
            .arg(state_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(spawn_error)?)
            .stderr(log);
        // SAFETY: setsid, sigemptyset and sigprocmask are async-signal-safe and touch only the
        // child. The agent blocks SIGTERM and SIGINT to wait for them; the mask survives exec,
        // and the keeper must stay killable.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
                libc::sigemptyset(none.as_mut_ptr());
                if libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(spawn_error)?;
        // Reap it should it ever exit while this agent runs.
        std::thread::spawn(move || child.wait());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if UnixStream::connect(&socket).is_ok() {
                return Ok(keeper);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(KeeperError::NotUp {
            socket,
            seconds: 10,
            log: log_path,
        })
    }

    fn socket(&self) -> PathBuf {
        self.state_dir.join(SOCKET)
    }

    /// Has the keeper run `runc create`; returns the container's init pid.
    pub fn create(&self, request: &CreateRequest) -> Result<i32, KeeperError> {
        let socket = self.socket();
        let io_error = |source| KeeperError::Io {
            socket: socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&socket).map_err(io_error)?;
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        stream.write_all(&line).map_err(io_error)?;
        let mut reply = String::new();
        BufReader::new(&stream)
            .read_line(&mut reply)
            .map_err(io_error)?;
        let response: CreateResponse = serde_json::from_str(&reply)
            .map_err(|error| io_error(io::Error::new(io::ErrorKind::InvalidData, error)))?;
        match response {
            CreateResponse { pid: Some(pid), .. } => Ok(pid),
            CreateResponse { error, .. } => Err(KeeperError::Create {
                id: request.id.clone(),
                message: error.unwrap_or_else(|| "no reason given".to_owned()),
            }),
        }
    }

    /// The exit record of container `id`, once it has exited.
    pub fn exit_of(&self, id: &str) -> Option<ExitRecord> {
        let text = std::fs::read(self.state_dir.join(EXITS).join(id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Drops the exit record of a container that is gone for good.
    pub fn forget(&self, id: &str) {
        let _ = std::fs::remove_file(self.state_dir.join(EXITS).join(id));
    }
}

// ---------------------------------------------------------------------------------------------
// The keeper process.

#[derive(Debug, Default)]
struct Children {
    /// runc processes a request waits for.
    runc: HashMap<i32, mpsc::Sender<i32>>,
    /// Container init pids and their container ids.
    containers: HashMap<i32, String>,
    /// Statuses of pids nobody had claimed yet when they were reaped.
    unclaimed: HashMap<i32, i32>,
    /// How many children may exist; the reaper sleeps while there are none.
    spawned: u64,
}

#[derive(Debug)]
struct Shared {
    children: Mutex<Children>,
    wake: Condvar,
    exits: PathBuf,
}

/// Runs the keeper in this process until it is killed.
pub fn run(state_dir: &Path) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers and affects only this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let exits = state_dir.join(EXITS);
    std::fs::create_dir_all(&exits)?;
    let socket = state_dir.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    let shared = Arc::new(Shared {
        children: Mutex::new(Children::default()),
        wake: Condvar::new(),
        exits,
    });
    let reaper = Arc::clone(&shared);
    std::thread::spawn(move || reap(&reaper));
    eprintln!("keel-agent keeper: serving {}", socket.display());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            if let Err(error) = serve(&shared, stream) {
                eprintln!("keel-agent keeper: {error}");
            }
        });
    }
    Ok(())
}

fn serve(shared: &Shared, stream: UnixStream) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let request: CreateRequest = serde_json::from_str(&line)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    let response = match create(shared, &request) {
        Ok(pid) => CreateResponse {
            pid: Some(pid),
            error: None,
        },
        Err(message) => CreateResponse {
            pid: None,
            error: Some(message),
        },
    };
    let mut reply = serde_json::to_vec(&response).expect("responses serialise");
    reply.push(b'\n');
    (&stream).write_all(&reply)
}

fn create(shared: &Shared, request: &CreateRequest) -> Result<i32, String> {
    // O_RDWR: the container's end always has a reader, so its writes never fail with EPIPE
    // while no agent reads (during an agent restart they wait in the pipe instead).
    let open_fifo = |path: &Path| -> Result<File, String> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|error| format!("cannot open {}: {error}", path.display()))
    };
    let stdout = open_fifo(&request.stdout)?;
    let stderr = open_fifo(&request.stderr)?;
    let pid_file = request.bundle.join("init.pid");
    let log_file = request.bundle.join("runc.log");
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_file(&log_file);
    let (done_tx, done_rx) = mpsc::channel();
    {
        let mut children = shared.children.lock().expect("keeper lock");
        let child = Command::new(&request.runc)
            .arg("--root")
            .arg(&request.runc_root)
            .arg("--log")
            .arg(&log_file)
            .args(["--log-format", "json", "create", "--bundle"])
            .arg(&request.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&request.id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", request.runc.display()))?;
        let pid = i32::try_from(child.id()).expect("pids fit in i32");
        children.runc.insert(pid, done_tx);
        children.spawned += 1;
        shared.wake.notify_all();
    }
    let status = done_rx
        .recv()
        .map_err(|_| "the keeper lost track of runc".to_owned())?;
    if status != 0 {
        return Err(runc_error(&log_file).unwrap_or_else(|| format!("runc exited with {status}")));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| format!("runc left no pid in {}", pid_file.display()))?;
    let mut children = shared.children.lock().expect("keeper lock");
    match children.unclaimed.remove(&pid) {
        Some(status) => record_exit(&shared.exits, &request.id, status),
        None => {
            children.containers.insert(pid, request.id.clone());
        }
    }
    Ok(pid)
}

/// The last error runc logged (its JSON log's `msg` of level `error`).
fn runc_error(log_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log_file).ok()?;
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["level"] == "error")
        .find_map(|entry| entry["msg"].as_str().map(str::to_owned))
}

fn reap(shared: &Shared) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid local.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            // ECHILD: nothing to reap until the next spawn.
            let children = shared.children.lock().expect("keeper lock");
            let seen = children.spawned;
            let _unused = shared
                .wake
                .wait_timeout_while(children, Duration::from_secs(1), |c| c.spawned == seen);
            continue;
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            continue;
        };
        let mut children = shared.children.lock().expect("keeper lock");
        if let Some(waiter) = children.runc.remove(&pid) {
            let _ = waiter.send(code);
        } else if let Some(id) = children.containers.remove(&pid) {
            record_exit(&shared.exits, &id, status);
        } else {
            // A container whose create has not returned yet, or a stray grandchild.
            if children.unclaimed.len() > 4096 {
                children.unclaimed.clear();
            }
            children.unclaimed.insert(pid, status);
        }
    }
}

fn record_exit(exits: &Path, id: &str, status: i32) {
    let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    let record = ExitRecord {
        exit_code: signal.map_or_else(|| libc::WEXITSTATUS(status), |signal| 128 + signal),
        signal,
        finished_at: jiff::Timestamp::now().as_second(),
    };
    let path = exits.join(id);
    let temporary = exits.join(format!(".{id}.tmp"));
    let written = std::fs::write(&temporary, serde_json::to_vec(&record).expect("serialises"))
        .and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(error) = written {
        eprintln!(
            "keel-agent keeper: cannot record the exit of {id} in {}: {error}",
            path.display()
        );
    }
}
