//! The image store against a real registry (Debian's `docker-registry` on loopback, images
//! pushed with `skopeo`, built from the host's static busybox): pulls, whiteouts and opaque
//! directories through a real overlayfs, dedup of concurrent pulls, platform selection, basic
//! auth and the error messages a pod's status shows. Needs root (mount, chroot, mknod).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;
use std::process::Command;

use keel_agent::image::{
    ImageStore, RegistryCredentials, credentials_from_docker_config, registry_host,
};
use keel_testhost::registry::{
    BASIC_PASSWORD, BASIC_USER, ImageSpec, LayerEntry, TestImage, TestRegistry,
};

fn require_everything() {
    keel_testhost::require_root();
    keel_testhost::require_tool("docker-registry", "docker-registry");
    keel_testhost::require_tool("skopeo", "skopeo");
    keel_testhost::require_tool("busybox", "busybox-static");
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

fn open_store(root: &Path, registry: &TestRegistry) -> ImageStore {
    ImageStore::open(root, vec![registry.host()]).unwrap()
}

/// Unmounts the container's rootfs when the test ends, passing or not.
struct Container<'a> {
    store: &'a ImageStore,
    dir: tempfile::TempDir,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.store.unmount_rootfs(self.dir.path()) {
            eprintln!("cannot unmount the test rootfs: {error}");
        }
    }
}

fn file(path: &str, content: &str) -> LayerEntry {
    LayerEntry::File {
        path: path.to_owned(),
        content: content.as_bytes().to_vec(),
        mode: 0o644,
    }
}

fn layered_spec() -> ImageSpec {
    ImageSpec {
        entrypoint: vec!["/bin/sh".to_owned()],
        cmd: vec!["-c".to_owned(), "sleep 1".to_owned()],
        env: vec!["PATH=/bin".to_owned(), "GREETING=hi".to_owned()],
        working_dir: Some("/data".to_owned()),
        extra_layers: vec![
            vec![
                LayerEntry::Dir {
                    path: "data".to_owned(),
                },
                file("data/a", "a"),
                file("data/b", "b"),
                file("etc/gone", "soon deleted"),
                file("etc/motd", "first"),
            ],
            vec![
                LayerEntry::Whiteout {
                    path: "etc/gone".to_owned(),
                },
                LayerEntry::Whiteout {
                    path: "bin/sed".to_owned(),
                },
                LayerEntry::OpaqueDir {
                    path: "data".to_owned(),
                },
                file("data/c", "c"),
                file("etc/motd", "second"),
            ],
        ],
    }
}

fn mount_count(path: &Path) -> usize {
    let wanted = path.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(wanted))
        .count()
}

fn chroot(rootfs: &Path, args: &[&str]) -> std::process::Output {
    Command::new("chroot")
        .arg(rootfs)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_layers_with_whiteouts_and_mounts_a_rootfs() {
    require_everything();
    let registry = TestRegistry::start().unwrap();
    let reference = registry
        .push(
            &TestImage::busybox(&layered_spec()).unwrap(),
            "layered",
            "v1",
        )
        .unwrap();
    let root = temp_dir("kt-images-");
    let store = open_store(root.path(), &registry);
    assert_eq!(store.get(&reference).unwrap(), None);

    let image = store
        .pull(&reference, &RegistryCredentials::Anonymous)
        .await
        .unwrap();
    assert_eq!(image.reference, reference);
    assert!(image.digest.starts_with("sha256:"), "{}", image.digest);
    assert_eq!(image.chain_ids.len(), 3);
    assert_eq!(image.config.entrypoint, ["/bin/sh"]);
    assert_eq!(image.config.cmd, ["-c", "sleep 1"]);
    assert_eq!(image.config.env, ["PATH=/bin", "GREETING=hi"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/data"));
    assert_eq!(image.config.user, None);
    assert!(
        image.size > 100_000,
        "busybox alone is bigger: {}",
        image.size
    );
    assert_eq!(store.get(&reference).unwrap(), Some(image.clone()));

    // The top snapshot holds overlay whiteouts, not `.wh.` files.
    let top = root
        .path()
        .join("snapshots")
        .join(image.chain_ids[2].trim_start_matches("sha256:"));
    let whiteout = fs::symlink_metadata(top.join("etc/gone")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);

    let container = Container {
        store: &store,
        dir: temp_dir("kt-container-"),
    };
    let rootfs = store.mount_rootfs(&image, container.dir.path()).unwrap();
    assert_eq!(rootfs, container.dir.path().join("rootfs"));
    assert_eq!(
        store.mount_rootfs(&image, container.dir.path()).unwrap(),
        rootfs
    );
    assert_eq!(mount_count(&rootfs), 1, "mounting twice mounts once");

    assert!(
        !rootfs.join("etc/gone").exists(),
        "whiteout from the top layer"
    );
    assert!(
        fs::symlink_metadata(rootfs.join("bin/sed")).is_err(),
        "whiteout of a base file"
    );
    assert!(
        fs::symlink_metadata(rootfs.join("bin/sh"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "second"
    );
    assert!(rootfs.join("etc/passwd").is_file());
    let data: BTreeSet<String> = fs::read_dir(rootfs.join("data"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        data,
        BTreeSet::from(["c".to_owned()]),
        "opaque dir shows only its own layer"
    );

    let output = chroot(&rootfs, &["/bin/busybox", "true"]);
    assert!(output.status.success(), "{output:?}");
    let output = chroot(
        &rootfs,
        &["/bin/sh", "-c", "echo written > /tmp/new && cat /etc/motd"],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "second");
    assert_eq!(
        fs::read_to_string(container.dir.path().join("upper/tmp/new")).unwrap(),
        "written\n",
        "writes land in the container's upper dir"
    );
    assert!(!top.join("tmp/new").exists());

    store.unmount_rootfs(container.dir.path()).unwrap();
    assert_eq!(mount_count(&rootfs), 0);
    for dir in ["rootfs", "upper", "work"] {
        assert!(!container.dir.path().join(dir).exists(), "{dir} removed");
    }
    store.unmount_rootfs(container.dir.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_again_downloads_nothing() {
    require_everything();
    let registry = TestRegistry::start().unwrap();
    let reference = registry
        .push(&TestImage::busybox(&layered_spec()).unwrap(), "again", "v1")
        .unwrap();
    let root = temp_dir("kt-images-");
    let store = open_store(root.path(), &registry);
    let first = store
        .pull(&reference, &RegistryCredentials::Anonymous)
        .await
        .unwrap();
    assert_eq!(store.blob_downloads(), 4, "config and three layers");
    let blob = root
        .path()
        .join("blobs/sha256")
        .join(first.digest.trim_start_matches("sha256:"));
    let second = store
        .pull(&reference, &RegistryCredentials::Anonymous)
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(store.blob_downloads(), 4);

    // A restarted agent finds the image on disk.
    let reopened = open_store(root.path(), &registry);
    assert_eq!(reopened.get(&reference).unwrap(), Some(first.clone()));
    reopened
        .pull(&reference, &RegistryCredentials::Anonymous)
        .await
        .unwrap();
    assert_eq!(reopened.blob_downloads(), 0);
    assert!(blob.is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_downloads() {
    require_everything();
    let registry = TestRegistry::start().unwrap();
    let layered = registry
        .push(
            &TestImage::busybox(&layered_spec()).unwrap(),
            "layered",
            "v1",
        )
        .unwrap();
    let plain = registry
        .push(
            &TestImage::busybox(&ImageSpec::default()).unwrap(),
            "plain",
            "v1",
        )
        .unwrap();
    let root = temp_dir("kt-images-");
    let store = open_store(root.path(), &registry);
    let mut pulls = Vec::new();
    for reference in [&layered, &layered, &layered, &plain, &plain] {
        let (store, reference) = (store.clone(), reference.clone());
        pulls.push(tokio::spawn(async move {
            store
                .pull(&reference, &RegistryCredentials::Anonymous)
                .await
        }));
    }
    let mut images = Vec::new();
    for pull in pulls {
        images.push(pull.await.unwrap().unwrap());
    }
    assert_eq!(images[0], images[1]);
    assert_eq!(images[0], images[2]);
    assert_eq!(images[3].chain_ids.len(), 1);
    assert_eq!(
        images[3].chain_ids[0], images[0].chain_ids[0],
        "same busybox layer"
    );
    // layered: config + 3 layers; plain: its own config, its layer is layered's base.
    assert_eq!(store.blob_downloads(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_pulls_pick_this_hosts_platform() {
    require_everything();
    let registry = TestRegistry::start().unwrap();
    let image = TestImage::busybox_multi_arch(&ImageSpec::default()).unwrap();
    let reference = registry.push(&image, "multi", "v1").unwrap();
    let root = temp_dir("kt-images-");
    let store = open_store(root.path(), &registry);
    let pulled = store
        .pull(&reference, &RegistryCredentials::Anonymous)
        .await
        .unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(pulled.config.env, [format!("PLATFORM={arch}")]);
    assert_ne!(
        pulled.digest, image.digest,
        "the platform manifest, not the index"
    );
    let host = registry.host();
    for digest in [&image.digest, &pulled.digest] {
        let by_digest = format!("{host}/multi@{digest}");
        let found = store.get(&by_digest).unwrap().expect("found by digest");
        assert_eq!(found.digest, pulled.digest);
    }
    let other = format!("{host}/multi@sha256:{}", "0".repeat(64));
    assert_eq!(store.get(&other).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_and_unreachable_registries_read_clearly() {
    require_everything();
    let registry = TestRegistry::start().unwrap();
    registry
        .push(
            &TestImage::busybox(&ImageSpec::default()).unwrap(),
            "exists",
            "v1",
        )
        .unwrap();
    let root = temp_dir("kt-images-");
    let store =
        ImageStore::open(root.path(), vec![registry.host(), "127.0.0.1:1".to_owned()]).unwrap();
    let anonymous = RegistryCredentials::Anonymous;

    let host = registry.host();
    let error = store
        .pull(&format!("{host}/exists:nope"), &anonymous)
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("pull {host}/exists:nope: manifest unknown")
    );

    let error = store
        .pull(&format!("{host}/nope:1"), &anonymous)
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
    // docker-registry 2.8 answers MANIFEST_UNKNOWN for unknown repositories too.
    assert_eq!(
        error.to_string(),
        format!("pull {host}/nope:1: manifest unknown")
    );

    // Registries not named insecure are spoken to over TLS only.
    let strict = ImageStore::open(root.path(), vec![]).unwrap();
    let error = strict
        .pull(&format!("{host}/exists:v1"), &anonymous)
        .await
        .unwrap_err();
    assert!(error.is_unreachable(), "{error:?}");
    assert!(
        error.to_string().contains("tls handshake failed")
            && error.to_string().ends_with("must be listed as insecure"),
        "{error}"
    );

    let error = store.pull("127.0.0.1:1/x:1", &anonymous).await.unwrap_err();
    assert!(error.is_unreachable() && !error.is_not_found(), "{error:?}");
    assert_eq!(
        error.to_string(),
        "pull 127.0.0.1:1/x:1: cannot reach registry 127.0.0.1:1: connection refused"
    );
    assert_eq!(store.get("127.0.0.1:1/x:1").unwrap(), None);
    assert_eq!(store.blob_downloads(), 0);
    assert!(
        fs::read_dir(root.path().join("blobs/ingest"))
            .unwrap()
            .next()
            .is_none(),
        "failed pulls leave no partial downloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_an_image_pull_secret() {
    require_everything();
    let registry = TestRegistry::start_with_basic_auth().unwrap();
    let reference = registry
        .push(
            &TestImage::busybox(&ImageSpec::default()).unwrap(),
            "private",
            "v1",
        )
        .unwrap();
    let root = temp_dir("kt-images-");
    let store = open_store(root.path(), &registry);

    let error = store
        .pull(&reference, &RegistryCredentials::Anonymous)
        .await
        .unwrap_err();
    assert!(!error.is_not_found(), "{error:?}");
    let host = registry.host();
    assert_eq!(
        error.to_string(),
        format!(
            "pull {reference}: registry {host} refused access: unauthorized (pulled without credentials)"
        )
    );

    let wrong = RegistryCredentials::Basic {
        username: BASIC_USER.to_owned(),
        password: "wrong".to_owned(),
    };
    let error = store.pull(&reference, &wrong).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("pull {reference}: registry {host} refused access: unauthorized")
    );

    let secret = format!(
        r#"{{"auths":{{"{}":{{"username":"{BASIC_USER}","password":"{BASIC_PASSWORD}"}}}}}}"#,
        registry.host()
    );
    let credentials = credentials_from_docker_config(secret.as_bytes(), &registry_host(&reference))
        .unwrap()
        .expect("the secret names the registry");
    let image = store.pull(&reference, &credentials).await.unwrap();
    assert_eq!(image.chain_ids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_image_frees_what_only_it_used_and_keeps_shared_layers() {
    require_everything();
    let registry = TestRegistry::start().unwrap();
    let plain = registry
        .push(
            &TestImage::busybox(&ImageSpec::default()).unwrap(),
            "plain",
            "v1",
        )
        .unwrap();
    let layered = registry
        .push(
            &TestImage::busybox(&layered_spec()).unwrap(),
            "layered",
            "v1",
        )
        .unwrap();
    let root = temp_dir("kt-images-");
    let store = open_store(root.path(), &registry);
    let plain_image = store
        .pull(&plain, &RegistryCredentials::Anonymous)
        .await
        .unwrap();
    let layered_image = store
        .pull(&layered, &RegistryCredentials::Anonymous)
        .await
        .unwrap();
    let snapshots = |image: &keel_agent::image::Image| -> Vec<std::path::PathBuf> {
        image
            .chain_ids
            .iter()
            .map(|c| {
                root.path()
                    .join("snapshots")
                    .join(c.trim_start_matches("sha256:"))
            })
            .collect()
    };
    let base = snapshots(&plain_image)[0].clone();
    assert_eq!(
        snapshots(&layered_image)[0],
        base,
        "the busybox base layer is shared"
    );
    assert_eq!(store.images().unwrap().len(), 2);

    let freed = store.remove(&layered_image.reference).unwrap();
    assert!(freed > 0, "the layered image's own blobs went");
    for own in &snapshots(&layered_image)[1..] {
        assert!(!own.exists(), "{} removed", own.display());
    }
    assert!(base.is_dir(), "the shared base stays");
    assert_eq!(store.get(&layered).unwrap(), None);
    assert_eq!(
        store.get(&plain).unwrap(),
        Some(plain_image.clone()),
        "the other image is intact"
    );
    let listed: Vec<String> = store
        .images()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&plain_image.reference));
    // Pulled again, it comes back whole.
    let again = store
        .pull(&layered, &RegistryCredentials::Anonymous)
        .await
        .unwrap();
    assert_eq!(again, layered_image);
}
