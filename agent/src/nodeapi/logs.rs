//! `/containerLogs/<ns>/<pod>/<container>`: the container's CRI log file (the current
//! instance's, or with `previous` the one before), rendered by [`cri`](super::cri), and with
//! `follow` streamed as it grows until the client goes or the container has stopped.
//!
//! Unlike kubelet, which reads only the live `<n>.log`, the rotated parts of the instance
//! (`<n>.log.<time>`) are read first, so `kubectl logs` shows all that is kept.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::NodeApi;
use super::cri::{LogOptions, instances, parse, pick_instance};
use super::follow::LiveLog;
use super::routes::{Body, find, pod_not_found, text};
use crate::pods::worker::Statuses;

/// How often a followed file is looked at.
const POLL: Duration = Duration::from_millis(100);
/// Polls without growth before a follow checks whether the container has stopped.
const IDLE_POLLS: u32 = 10;

pub(super) async fn container_logs(
    api: &NodeApi,
    namespace: &str,
    name: &str,
    container: &str,
    query: &str,
) -> Response<Body> {
    let options = match LogOptions::from_query(query) {
        Ok(options) => options,
        Err(error) => return text(StatusCode::BAD_REQUEST, format!("{error}\n")),
    };
    let Some(pod) = find(api, namespace, name) else {
        return pod_not_found(namespace, name);
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let known = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| &c.name)
        .chain(spec.ephemeral_containers.iter().flatten().map(|c| &c.name))
        .any(|c| c == container);
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" not found in pod \"{name}\"\n"),
        );
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = api
        .pod_logs_dir
        .join(format!("{namespace}_{name}_{uid}"))
        .join(container);
    let found = instances(&dir);
    let Some((number, files)) = pick_instance(&found, options.previous).cloned() else {
        let message = if options.previous {
            format!("previous terminated container \"{container}\" in pod \"{name}\" not found\n")
        } else {
            // kubelet names the reason the container waits for (`ContainerCreating` until
            // it has a status).
            let reason = pod
                .status
                .as_ref()
                .and_then(|status| {
                    let statuses = status.container_statuses.iter().flatten();
                    statuses
                        .chain(status.init_container_statuses.iter().flatten())
                        .find(|s| s.name == container)
                        .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone())
                })
                .unwrap_or_else(|| "ContainerCreating".to_owned());
            format!("container \"{container}\" in pod \"{name}\" is waiting to start: {reason}\n")
        };
        return text(StatusCode::BAD_REQUEST, message);
    };
    // The live file is opened before the rotated parts are read, so that a rotation while
    // they are read is seen as one. (A rotation between the listing above and this open skips
    // the part it made.)
    let live_path = dir.join(format!("{number}.log"));
    let mut live = LiveLog::open(&live_path);
    let rotated: Vec<PathBuf> = files.into_iter().filter(|f| *f != live_path).collect();
    let read = tokio::task::spawn_blocking(move || {
        let mut data = Vec::new();
        for file in &rotated {
            data.extend(std::fs::read(file).unwrap_or_default());
        }
        live.read_new(&mut data).map(|_| (live, data))
    })
    .await
    .expect("the log reader does not panic");
    let (live, data) = match read {
        Ok(read) => read,
        Err(error) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    };
    let (lines, rest) = parse(&data);
    let first = options.render(&lines, jiff::Timestamp::now());
    // A previous instance has stopped: there is nothing to follow.
    if !options.follow || options.previous {
        return plain(Full::new(Bytes::from(first)).boxed());
    }
    let remaining = options.limit_bytes.map(|limit| limit - first.len());
    let follow = Follow {
        live,
        carry: rest,
        options,
        remaining,
        statuses: api.statuses.clone(),
        uid,
        container: container.to_owned(),
        dir,
        number,
    };
    let (sender, receiver) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(follow.run(first, sender));
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (frame, receiver))
    });
    plain(StreamBody::new(stream).boxed())
}

fn plain(body: Body) -> Response<Body> {
    Response::builder()
        .header("content-type", "text/plain")
        .body(body)
        .expect("a valid response")
}

/// One followed container instance.
struct Follow {
    live: LiveLog,
    /// Entries read but not yet a full line.
    carry: Vec<u8>,
    options: LogOptions,
    /// What `limitBytes` still allows.
    remaining: Option<usize>,
    statuses: Statuses,
    uid: String,
    container: String,
    dir: PathBuf,
    number: u32,
}

impl Follow {
    async fn run(mut self, first: Vec<u8>, sender: mpsc::Sender<Result<Frame<Bytes>, Infallible>>) {
        if !first.is_empty()
            && sender
                .send(Ok(Frame::data(Bytes::from(first))))
                .await
                .is_err()
        {
            return;
        }
        let mut idle = 0;
        while self.remaining != Some(0) {
            tokio::select! {
                () = sender.closed() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            let out = match self.read() {
                Ok(out) => out,
                Err(error) => {
                    log::warn!(
                        "node api: following {}: {error}",
                        self.live.path().display()
                    );
                    return;
                }
            };
            if out.is_empty() {
                idle += 1;
                if idle >= IDLE_POLLS && self.finished() {
                    return;
                }
                continue;
            }
            idle = 0;
            if sender
                .send(Ok(Frame::data(Bytes::from(out))))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// The full lines written since the last read, rendered and cut to `limitBytes`.
    fn read(&mut self) -> Result<Vec<u8>, super::follow::FollowError> {
        if self.live.read_new(&mut self.carry)? == 0 {
            return Ok(Vec::new());
        }
        let (lines, rest) = parse(&self.carry);
        self.carry = rest;
        let mut out = Vec::new();
        for line in &lines {
            self.options.render_line(line, &mut out);
        }
        if let Some(remaining) = &mut self.remaining {
            out.truncate(*remaining);
            *remaining -= out.len();
        }
        Ok(out)
    }

    /// Whether the followed instance is done: its pod is gone, the container is not running,
    /// or a newer instance has started.
    fn finished(&self) -> bool {
        !running(&self.statuses, &self.uid, &self.container)
            || newest_instance(&self.dir).is_some_and(|newest| newest > self.number)
    }
}

pub(super) fn newest_instance(dir: &Path) -> Option<u32> {
    instances(dir).last().map(|(number, _)| *number)
}

/// Whether the pod `uid` is still on the node and runs `container`.
pub(super) fn running(statuses: &Statuses, uid: &str, container: &str) -> bool {
    statuses
        .lock()
        .expect("statuses lock")
        .get(uid)
        .and_then(|pod| pod.status.as_ref()?.container_statuses.clone())
        .into_iter()
        .flatten()
        .any(|s| s.name == container && s.state.as_ref().is_some_and(|st| st.running.is_some()))
}
