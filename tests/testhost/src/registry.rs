//! A real OCI registry on loopback for image tests, and test images to push into it.
//!
//! [`TestRegistry`] runs Debian's `docker-registry` on `127.0.0.1:<free port>` with its storage
//! in a temp dir (optionally behind htpasswd basic auth); dropping it stops the registry and
//! removes the storage. [`TestImage`] builds an OCI image layout from the host's static
//! `/usr/bin/busybox` (Debian `busybox-static`) plus layers the test describes, and
//! [`TestRegistry::push`] copies it in with `skopeo`.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::net::Host;
use crate::process::{HostProcess, ProcessError, run_checked};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
const BUSYBOX: &str = "/usr/bin/busybox";
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The user [`TestRegistry::start_with_basic_auth`] accepts.
pub const BASIC_USER: &str = "kt-user";
/// That user's password.
pub const BASIC_PASSWORD: &str = "kt-secret";
/// bcrypt (cost 5) of [`BASIC_PASSWORD`], made once with Python's `crypt` module.
const BASIC_PASSWORD_BCRYPT: &str = "$2b$05$Y4Ox5tdah83Vil0ZojTfT.h7aRaIIwySzVW1OVS/SU1JjwIfOfP9S";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("docker-registry on {addr} did not become ready: {reason}")]
    NotReady { addr: SocketAddr, reason: String },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RegistryError {
    let path = path.to_owned();
    move |source| RegistryError::Io {
        action,
        path,
        source,
    }
}

/// A running `docker-registry`; stopped and its storage removed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    // Field order matters: the process stops before its directory goes.
    _process: HostProcess,
    addr: SocketAddr,
    basic_auth: bool,
    /// The network namespace it serves in (`None`: the test's own).
    netns: Option<String>,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// An anonymous registry.
    pub fn start() -> Result<TestRegistry, RegistryError> {
        TestRegistry::start_inner(false, None, Ipv4Addr::LOCALHOST)
    }

    /// A registry that wants [`BASIC_USER`] / [`BASIC_PASSWORD`] for everything.
    pub fn start_with_basic_auth() -> Result<TestRegistry, RegistryError> {
        TestRegistry::start_inner(true, None, Ipv4Addr::LOCALHOST)
    }

    /// An anonymous registry on the loopback of test host `host` (for an agent that runs
    /// there); pushes go there too.
    pub fn start_on(host: &Host) -> Result<TestRegistry, RegistryError> {
        TestRegistry::start_inner(false, Some(host), Ipv4Addr::LOCALHOST)
    }

    /// A registry on the loopback of test host `host` that wants [`BASIC_USER`] /
    /// [`BASIC_PASSWORD`].
    pub fn start_on_with_basic_auth(host: &Host) -> Result<TestRegistry, RegistryError> {
        TestRegistry::start_inner(true, Some(host), Ipv4Addr::LOCALHOST)
    }

    /// An anonymous registry in test host `host` on `address`, one of the host's addresses
    /// (for agents in other hosts that reach it there); pushes go there too.
    pub fn start_at(host: &Host, address: Ipv4Addr) -> Result<TestRegistry, RegistryError> {
        TestRegistry::start_inner(false, Some(host), address)
    }

    /// `program`, run in the registry's network namespace.
    fn command(netns: Option<&str>, program: &str) -> Command {
        match netns {
            None => Command::new(program),
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net=/run/netns/{netns}"))
                    .arg(program);
                command
            }
        }
    }

    fn start_inner(
        basic_auth: bool,
        host: Option<&Host>,
        address: Ipv4Addr,
    ) -> Result<TestRegistry, RegistryError> {
        let in_host = |f: &(dyn Fn() -> io::Result<SocketAddr> + Sync)| -> io::Result<SocketAddr> {
            match host {
                None => f(),
                Some(host) => host.enter(f).map_err(io::Error::other)?,
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("kt-registry-")
            .tempdir()
            .map_err(io_error("create a temp dir in", &std::env::temp_dir()))?;
        let addr = in_host(&|| free_port(address).map_err(io::Error::other))
            .map_err(io_error("bind a port for", Path::new(REGISTRY_BINARY)))?;
        let netns = host.map(|h| h.netns().to_owned());
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if basic_auth {
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, format!("{BASIC_USER}:{BASIC_PASSWORD_BCRYPT}\n"))
                .map_err(io_error("write", &htpasswd))?;
            write!(
                config,
                "auth:\n  htpasswd:\n    realm: kt-realm\n    path: {}\n",
                htpasswd.display()
            )
            .expect("writing to a String cannot fail");
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).map_err(io_error("write", &config_path))?;
        let log_path = dir.path().join("registry.log");
        let log = fs::File::create(&log_path).map_err(io_error("create", &log_path))?;
        let log_err = log.try_clone().map_err(io_error("open", &log_path))?;
        let mut process = HostProcess::spawn(
            TestRegistry::command(netns.as_deref(), REGISTRY_BINARY)
                .arg("serve")
                .arg(&config_path)
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err)),
        )?;
        match host {
            None => wait_ready(&mut process, addr, &log_path)?,
            Some(host) => host
                .enter(|| wait_ready(&mut process, addr, &log_path))
                .map_err(|error| RegistryError::NotReady {
                    addr,
                    reason: error.to_string(),
                })??,
        }
        Ok(TestRegistry {
            _process: process,
            addr,
            basic_auth,
            netns,
            dir,
        })
    }

    /// `<address>:<port>` (`127.0.0.1:<port>` unless started with [`TestRegistry::start_at`]),
    /// the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// What the registry logged so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes `image` as `<host>/<name>:<tag>` and returns that reference.
    pub fn push(&self, image: &TestImage, name: &str, tag: &str) -> Result<String, RegistryError> {
        let credentials = self
            .basic_auth
            .then(|| format!("{BASIC_USER}:{BASIC_PASSWORD}"));
        push_image(
            TestRegistry::command(self.netns.as_deref(), "skopeo"),
            &self.host(),
            image,
            &format!("{name}:{tag}"),
            credentials.as_deref(),
        )
    }
}

/// Copies `image` with `skopeo` (the command to run it, in whatever namespace) into the
/// plain-HTTP registry at `registry` (`host:port`) as `<registry>/<name_tag>`, logging in as
/// `credentials` (`user:password`) if given; returns that reference.
pub fn push_image(
    mut skopeo: Command,
    registry: &str,
    image: &TestImage,
    name_tag: &str,
    credentials: Option<&str>,
) -> Result<String, RegistryError> {
    let reference = format!("{registry}/{name_tag}");
    skopeo
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg("--all");
    if let Some(credentials) = credentials {
        skopeo.arg(format!("--dest-creds={credentials}"));
    }
    skopeo
        .arg(format!(
            "oci:{}:{}",
            image.layout.path().display(),
            image.tag
        ))
        .arg(format!("docker://{reference}"));
    run_checked(&mut skopeo)?;
    Ok(reference)
}

fn free_port(address: Ipv4Addr) -> Result<SocketAddr, RegistryError> {
    let listener = TcpListener::bind((address, 0))
        .map_err(io_error("bind a port for", Path::new(REGISTRY_BINARY)))?;
    listener.local_addr().map_err(io_error(
        "read the bound address for",
        Path::new(REGISTRY_BINARY),
    ))
}

/// Waits until `GET /v2/` answers (200, or 401 behind auth).
fn wait_ready(
    process: &mut HostProcess,
    addr: SocketAddr,
    log: &Path,
) -> Result<(), RegistryError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let not_ready = |reason: String| RegistryError::NotReady {
        addr,
        reason: format!(
            "{reason}; log: {}",
            fs::read_to_string(log).unwrap_or_default()
        ),
    };
    loop {
        if !process.is_running() {
            return Err(not_ready("it exited".to_owned()));
        }
        if let Ok(status) = get_status(addr, "/v2/")
            && (status == 200 || status == 401)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(not_ready(format!("no answer in {READY_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other("not an HTTP status line"))
}

/// One change in a test image layer.
#[derive(Debug, Clone)]
pub enum LayerEntry {
    /// A regular file (parents are created as directories).
    File {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
    },
    /// Deletes `path` from the layers below (`.wh.<name>`).
    Whiteout {
        path: String,
    },
    /// Hides everything the layers below have in directory `path` (`.wh..wh..opq`).
    OpaqueDir {
        path: String,
    },
}

/// The runtime settings of a test image.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// Layers on top of the busybox base layer.
    pub extra_layers: Vec<Vec<LayerEntry>>,
}

/// An OCI image layout in a temp dir, ready for [`TestRegistry::push`].
#[derive(Debug)]
pub struct TestImage {
    layout: tempfile::TempDir,
    tag: String,
    /// Digest of what the layout's tag points at (the manifest, or the index).
    pub digest: String,
}

struct Blob {
    digest: String,
    size: usize,
}

impl TestImage {
    /// A busybox image for this host's architecture.
    pub fn busybox(spec: &ImageSpec) -> Result<TestImage, RegistryError> {
        let layout = new_layout()?;
        let manifest = write_image(layout.path(), spec, host_architecture(), "")?;
        finish_layout(
            layout,
            manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
    }

    /// An image index of a fake `arm64` image (listed first) and this host's image; each
    /// image's env holds `PLATFORM=<arch>`, so a test can tell which one it got.
    pub fn busybox_multi_arch(spec: &ImageSpec) -> Result<TestImage, RegistryError> {
        let layout = new_layout()?;
        let other = if host_architecture() == "arm64" {
            "amd64"
        } else {
            "arm64"
        };
        let mut entries = Vec::new();
        for arch in [other, host_architecture()] {
            let manifest = write_image(layout.path(), spec, arch, &format!("PLATFORM={arch}"))?;
            entries.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest.digest,
                "size": manifest.size,
                "platform": {"architecture": arch, "os": "linux"},
            }));
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        });
        let index = write_blob(layout.path(), &serde_json::to_vec(&index).expect("json"))?;
        finish_layout(layout, index, "application/vnd.oci.image.index.v1+json")
    }
}

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn new_layout() -> Result<tempfile::TempDir, RegistryError> {
    let layout = tempfile::Builder::new()
        .prefix("kt-oci-layout-")
        .tempdir()
        .map_err(io_error("create a temp dir in", &std::env::temp_dir()))?;
    let blobs = layout.path().join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_error("create", &blobs))?;
    Ok(layout)
}

fn finish_layout(
    layout: tempfile::TempDir,
    top: Blob,
    media_type: &str,
) -> Result<TestImage, RegistryError> {
    let tag = "kt".to_owned();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": top.digest,
            "size": top.size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    for (name, content) in [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", serde_json::to_vec(&index).expect("json")),
    ] {
        let path = layout.path().join(name);
        fs::write(&path, content).map_err(io_error("write", &path))?;
    }
    Ok(TestImage {
        layout,
        tag,
        digest: top.digest,
    })
}

fn write_blob(layout: &Path, content: &[u8]) -> Result<Blob, RegistryError> {
    let hex = format!("{:x}", Sha256::digest(content));
    let path = layout.join("blobs/sha256").join(&hex);
    fs::write(&path, content).map_err(io_error("write", &path))?;
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size: content.len(),
    })
}

/// Writes layers, config and manifest of one image; returns the manifest blob.
fn write_image(
    layout: &Path,
    spec: &ImageSpec,
    arch: &str,
    extra_env: &str,
) -> Result<Blob, RegistryError> {
    let mut layers = vec![busybox_layer()?];
    for entries in &spec.extra_layers {
        layers.push(layer_tar(entries));
    }
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in &layers {
        diff_ids.push(format!("sha256:{:x}", Sha256::digest(tar)));
        let blob = write_blob(layout, &gzip(tar))?;
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": blob.digest,
            "size": blob.size,
        }));
    }
    let mut env = spec.env.clone();
    if !extra_env.is_empty() {
        env.push(extra_env.to_owned());
    }
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "Env": env,
            "WorkingDir": spec.working_dir.clone().unwrap_or_default(),
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = write_blob(layout, &serde_json::to_vec(&config).expect("json"))?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.digest,
            "size": config.size,
        },
        "layers": descriptors,
    });
    write_blob(layout, &serde_json::to_vec(&manifest).expect("json"))
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(tar)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_size(size);
    header
}

fn append_dir(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut dir = header(tar::EntryType::Directory, mode, 0);
    builder
        .append_data(&mut dir, format!("{path}/"), io::empty())
        .expect("writing to a Vec cannot fail");
}

fn append_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, content: &[u8], mode: u32) {
    let mut file = header(tar::EntryType::Regular, mode, content.len() as u64);
    builder
        .append_data(&mut file, path, content)
        .expect("writing to a Vec cannot fail");
}

/// `/bin/busybox`, a symlink per applet, `/etc/passwd` and `/etc/group` with root and nobody,
/// `/tmp`, `/root`.
fn busybox_layer() -> Result<Vec<u8>, RegistryError> {
    let busybox = fs::read(BUSYBOX).map_err(io_error("read", Path::new(BUSYBOX)))?;
    let applets = run_checked(Command::new(BUSYBOX).arg("--list"))?;
    let mut builder = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        append_dir(&mut builder, dir, mode);
    }
    append_file(&mut builder, "bin/busybox", &busybox, 0o755);
    for applet in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
        if applet == "busybox" {
            continue;
        }
        let mut link = header(tar::EntryType::Symlink, 0o777, 0);
        builder
            .append_link(&mut link, format!("bin/{applet}"), "busybox")
            .expect("writing to a Vec cannot fail");
    }
    append_file(
        &mut builder,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    append_file(
        &mut builder,
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\n",
        0o644,
    );
    Ok(builder.into_inner().expect("writing to a Vec cannot fail"))
}

fn layer_tar(entries: &[LayerEntry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        match entry {
            LayerEntry::File {
                path,
                content,
                mode,
            } => append_file(&mut builder, path, content, *mode),
            LayerEntry::Dir { path } => append_dir(&mut builder, path, 0o755),
            LayerEntry::Whiteout { path } => {
                let (parent, name) = split_parent(path);
                append_file(&mut builder, &format!("{parent}.wh.{name}"), b"", 0o644);
            }
            LayerEntry::OpaqueDir { path } => {
                append_dir(&mut builder, path, 0o755);
                append_file(&mut builder, &format!("{path}/.wh..wh..opq"), b"", 0o644);
            }
        }
    }
    builder.into_inner().expect("writing to a Vec cannot fail")
}

/// `a/b/c` -> (`a/b/`, `c`); `c` -> (``, `c`).
fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(slash) => (&path[..=slash], &path[slash + 1..]),
        None => ("", path),
    }
}
