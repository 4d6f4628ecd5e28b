//! Attaching the dataplane's programs: counters (XDP, TC) and Service load-balancing (TC,
//! cgroup socket hooks). A pinned dataplane pins each link, and where a pin of the same
//! program and target exists (an agent before this one made it) swaps the program inside
//! that link instead, so the hook never runs without a program.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use aya::programs::ProgramError;
use aya::programs::links::FdLink;
use aya::programs::links::LinkError;
use aya::programs::tc::TcAttachType;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, Xdp};
use keel_ebpf_common::program;

use super::object::{DataplaneError, attach_classifier, program_mut, tcx_links};
use super::pins::{self, LinkTarget};
use super::services::Dataplane;
use super::stats::{Direction, XdpAttachMode};

/// The Service TC programs: ingress, then egress.
pub(super) const LB_TC_PROGRAMS: [&str; 2] = [program::TC_LB_INGRESS, program::TC_LB_EGRESS];

/// The XDP programs, of which an interface runs one.
pub(super) const XDP_PROGRAMS: [&str; 2] = [program::XDP_STATS, program::XDP_LB];

/// The socket-level programs, in attach order.
pub(super) const SOCKET_PROGRAMS: [&str; 4] = [
    program::SOCK_CONNECT4,
    program::SOCK_SENDMSG4,
    program::SOCK_RECVMSG4,
    program::SOCK_GETPEERNAME4,
];

impl Dataplane {
    /// Attaches XDP, TC ingress and TC egress counting to `interface` (a name in the calling
    /// thread's network namespace).
    pub fn attach_counters(
        &mut self,
        interface: &str,
        xdp_mode: XdpAttachMode,
    ) -> Result<(), DataplaneError> {
        self.attach_counters_xdp(interface, xdp_mode)?;
        self.attach_counters_tc(interface, Direction::Ingress)?;
        self.attach_counters_tc(interface, Direction::Egress)
    }

    /// Attaches XDP counting to `interface`.
    pub fn attach_counters_xdp(
        &mut self,
        interface: &str,
        mode: XdpAttachMode,
    ) -> Result<(), DataplaneError> {
        self.attach_xdp(program::XDP_STATS, interface, mode)
    }

    /// Attaches XDP load-balancing (`xdp_lb`: the counters of `xdp_stats`, and external flows
    /// SNATed to a backend beside the client sent straight back out) to `interface`, in place
    /// of `xdp_stats`. Needs `attach_tc` on the same interface for what it passes on.
    pub fn attach_xdp_lb(
        &mut self,
        interface: &str,
        mode: XdpAttachMode,
    ) -> Result<(), DataplaneError> {
        self.attach_xdp(program::XDP_LB, interface, mode)
    }

    /// Attaches the XDP program `name` to `interface`. An interface runs one XDP program:
    /// the other one's pinned link there, if any, is detached first (for that moment the
    /// frames go to the stack, where TC serves them all).
    fn attach_xdp(
        &mut self,
        name: &'static str,
        interface: &str,
        mode: XdpAttachMode,
    ) -> Result<(), DataplaneError> {
        let target = LinkTarget::Interface(ifindex(interface)?);
        if let Some(pins) = &mut self.pins {
            for other in XDP_PROGRAMS.into_iter().filter(|other| *other != name) {
                if pins.release_link(other, target)? {
                    log::info!("detached `{other}` from {interface}: `{name}` takes its place");
                }
            }
        }
        self.attach_link(name, target, |ebpf| {
            let xdp: &mut Xdp = program_mut(ebpf, name)?;
            let id =
                xdp.attach(interface, mode.aya())
                    .map_err(|source| DataplaneError::Attach {
                        program: name,
                        interface: interface.to_owned(),
                        source,
                    })?;
            let link = xdp.take_link(id).map_err(take_error(name))?;
            Ok(Some(FdLink::try_from(link)))
        })
    }

    /// Attaches TC counting to `interface` in `direction`.
    pub fn attach_counters_tc(
        &mut self,
        interface: &str,
        direction: Direction,
    ) -> Result<(), DataplaneError> {
        let (name, attach_type) = match direction {
            Direction::Ingress => (program::TC_STATS_INGRESS, TcAttachType::Ingress),
            Direction::Egress => (program::TC_STATS_EGRESS, TcAttachType::Egress),
        };
        self.attach_classifier_link(name, interface, attach_type)
    }

    /// Attaches socket-level load-balancing to the cgroup2 group at `cgroup` (the cgroup2
    /// root serves every process on the node; tests use a group they created).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        let cgroup_error = |source| DataplaneError::Cgroup {
            path: cgroup.to_owned(),
            source,
        };
        let group = File::open(cgroup).map_err(cgroup_error)?;
        let inode = group.metadata().map_err(cgroup_error)?.ino();
        for name in SOCKET_PROGRAMS {
            self.attach_link(name, LinkTarget::Cgroup(inode), |ebpf| {
                let socket: &mut CgroupSockAddr = program_mut(ebpf, name)?;
                let id = socket
                    .attach(group.as_fd(), CgroupAttachMode::Single)
                    .map_err(|source| DataplaneError::AttachCgroup {
                        program: name,
                        cgroup: cgroup.to_owned(),
                        source,
                    })?;
                let link = socket.take_link(id).map_err(take_error(name))?;
                Ok(Some(FdLink::try_from(link)))
            })?;
        }
        Ok(())
    }

    /// Load-balances Service traffic routed through the node: `tc_lb_ingress` translates
    /// what arrives on `interface` (a name in the calling thread's network namespace),
    /// `tc_lb_egress` translates the replies leaving through it.
    pub fn attach_tc(&mut self, interface: &str) -> Result<(), DataplaneError> {
        for (name, direction) in LB_TC_PROGRAMS
            .into_iter()
            .zip([TcAttachType::Ingress, TcAttachType::Egress])
        {
            self.attach_classifier_link(name, interface, direction)?;
        }
        Ok(())
    }

    /// Forgets the TC load-balancing pins of an interface that is gone (a pod's, deleted
    /// with it: the kernel detached its programs already).
    pub fn release_tc(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        if let Some(pins) = &mut self.pins {
            for name in LB_TC_PROGRAMS {
                pins.release_link(name, LinkTarget::Interface(ifindex))?;
            }
        }
        Ok(())
    }

    /// Detaches every pinned attachment this agent did not make or take over since it was
    /// opened (interfaces or cgroups it no longer serves). Call once every attachment is made.
    pub fn prune_stale_links(&mut self) -> Result<(), DataplaneError> {
        if let Some(pins) = &self.pins {
            for path in pins.prune_links()? {
                log::info!("detached {} (no longer configured)", path.display());
            }
        }
        Ok(())
    }

    fn attach_classifier_link(
        &mut self,
        name: &'static str,
        interface: &str,
        direction: TcAttachType,
    ) -> Result<(), DataplaneError> {
        let target = LinkTarget::Interface(ifindex(interface)?);
        self.attach_link(name, target, |ebpf| {
            let id = attach_classifier(ebpf, name, interface, direction)?;
            if !tcx_links() {
                // A netlink filter (kernel before 6.6) is no link: it stays with the program.
                return Ok(None);
            }
            let classifier: &mut SchedClassifier = program_mut(ebpf, name)?;
            let link = classifier.take_link(id).map_err(take_error(name))?;
            Ok(Some(FdLink::try_from(link)))
        })
    }

    /// Attaches `name` to `target` with `attach`, which returns the new link if it is one
    /// that can outlive the process. Pinned: an existing pin for the pair gets the program
    /// swapped in (and `attach` is not called), else the new link is pinned. Unpinned: the
    /// link lives as long as this value.
    fn attach_link(
        &mut self,
        name: &'static str,
        target: LinkTarget,
        attach: impl FnOnce(&mut aya::Ebpf) -> Result<Option<Result<FdLink, LinkError>>, DataplaneError>,
    ) -> Result<(), DataplaneError> {
        let path = match &mut self.pins {
            Some(pins) => {
                let path = pins.link_path(name, target);
                let program = self
                    .ebpf
                    .program(name)
                    .ok_or(DataplaneError::MissingProgram { program: name })?;
                let fd = program.fd().map_err(|source| DataplaneError::ProgramLoad {
                    program: name,
                    source,
                })?;
                if pins::replace_program(&path, fd.as_fd())? {
                    log::debug!("{} now runs the new `{name}`", path.display());
                    return Ok(());
                }
                Some(path)
            }
            None => None,
        };
        let Some(link) = attach(&mut self.ebpf)? else {
            if path.is_some() {
                log::warn!(
                    "`{name}` is attached without a link (TC before kernel 6.6): it is not \
                     pinned and detaches when the agent exits"
                );
            }
            return Ok(());
        };
        let link = link.map_err(|source| DataplaneError::Unpinnable {
            program: name,
            source,
        })?;
        match path {
            Some(path) => {
                link.pin(&path).map_err(|source| DataplaneError::PinLink {
                    program: name,
                    path: path.clone(),
                    source,
                })?;
            }
            None => self.held_links.push(link),
        }
        Ok(())
    }
}

fn take_error(program: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::TakeLink { program, source }
}

/// The index of `interface` in the calling thread's network namespace.
fn ifindex(interface: &str) -> Result<u32, DataplaneError> {
    let missing = || DataplaneError::NoInterface {
        interface: interface.to_owned(),
    };
    let name = std::ffi::CString::new(interface).map_err(|_| missing())?;
    // SAFETY: a NUL-terminated name that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(missing()),
        index => Ok(index),
    }
}
