//! `keel-agent`: Keel's node agent.
//!
//! This first version runs the dataplane's observability base: it attaches the per-interface
//! counters to the interfaces named with `--devices` and logs them every `--stats-interval`
//! seconds until SIGINT or SIGTERM, when it detaches everything it attached.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use keel_agent::dataplane::{StatsDataplane, XdpAttachMode};

#[derive(Debug, Parser)]
#[command(name = "keel-agent", version, about = "Keel's node agent")]
struct Args {
    /// Interfaces that get the XDP and TC programs, comma-separated (e.g. `eth0,eth1`).
    #[arg(long, value_delimiter = ',', required = true)]
    devices: Vec<String>,
    /// XDP attach mode on those interfaces.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
    /// Seconds between two counter reports in the log.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    stats_interval: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let xdp_mode = match args.xdp_mode {
        XdpModeArg::Auto => XdpAttachMode::Auto,
        XdpModeArg::Native => XdpAttachMode::Native,
        XdpModeArg::Generic => XdpAttachMode::Generic,
    };
    let devices = resolve_devices(&args.devices)?;

    let stop = signals::block_termination()?;
    let mut dataplane = StatsDataplane::load().context("cannot load the eBPF dataplane")?;
    for (name, _) in &devices {
        dataplane
            .attach(name, xdp_mode)
            .with_context(|| format!("cannot attach the counters to --devices entry `{name}`"))?;
        log::info!("counting packets on {name}");
    }

    let interval = Duration::from_secs(args.stats_interval);
    while !stop.wait(interval)? {
        let stats = dataplane.iface_stats()?;
        for (name, ifindex) in &devices {
            let s = stats.get(ifindex).copied().unwrap_or_default();
            log::info!(
                "{name}: xdp {}p/{}B tc_ingress {}p/{}B tc_egress {}p/{}B",
                s.xdp.packets,
                s.xdp.bytes,
                s.tc_ingress.packets,
                s.tc_ingress.bytes,
                s.tc_egress.packets,
                s.tc_egress.bytes
            );
        }
        for (reason, count) in dataplane.drop_stats()? {
            if count > 0 {
                log::info!("dropped {count} packets: {}", reason.as_str());
            }
        }
    }
    log::info!("stopping: detaching from {} interfaces", devices.len());
    Ok(())
}

/// Checks every `--devices` entry names an interface here, and returns its ifindex.
fn resolve_devices(names: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    let mut devices = Vec::with_capacity(names.len());
    for name in names {
        let Ok(c_name) = std::ffi::CString::new(name.as_str()) else {
            bail!("--devices: `{name}` is not an interface name");
        };
        // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            bail!("--devices: there is no interface `{name}` on this host");
        }
        devices.push((name.clone(), ifindex));
    }
    Ok(devices)
}

mod signals {
    //! SIGINT / SIGTERM as a condition to wait on, without a signal handler.

    use std::io;
    use std::mem::MaybeUninit;
    use std::time::Duration;

    #[derive(Debug)]
    pub struct Termination {
        set: libc::sigset_t,
    }

    /// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later), so they
    /// stay pending until [`Termination::wait`] takes them.
    pub fn block_termination() -> io::Result<Termination> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set; sigaddset and pthread_sigmask get valid
        // pointers to it.
        let set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
            libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
            let set = set.assume_init();
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            set
        };
        Ok(Termination { set })
    }

    impl Termination {
        /// Waits up to `timeout`; true if SIGINT or SIGTERM arrived.
        pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
            let timeout = libc::timespec {
                tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_nsec: timeout.subsec_nanos().into(),
            };
            // SAFETY: `self.set` is an initialised signal set and `timeout` a valid timespec.
            let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timeout) };
            if signal > 0 {
                return Ok(true);
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(false),
                _ => Err(error),
            }
        }
    }
}
