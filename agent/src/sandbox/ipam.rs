//! IPv4 address management for this node's pod CIDR, persisted on disk: one file per
//! allocated address (`<dir>/<ip>`, holding the owner's key), created with `O_EXCL` so two
//! callers never get the same address, and kept across agent restarts.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid pod CIDR `{0}`: expected an IPv4 network like 10.244.1.0/24 (prefix 8-30)")]
    Cidr(String),
    #[error("pod CIDR {cidr} has no free address left")]
    Exhausted { cidr: String },
    #[error("IPAM store {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An IPv4 network: base address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(text: &str) -> Result<Ipv4Cidr, IpamError> {
        let invalid = || IpamError::Cidr(text.to_owned());
        let (addr, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if !(8..=30).contains(&prefix) {
            return Err(invalid());
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(invalid());
        }
        Ok(Ipv4Cidr { base: addr, prefix })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// The usable host addresses: all but the network and broadcast addresses.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let base = u32::from(self.base);
        (1..self.size() - 1).map(move |offset| Ipv4Addr::from(base + offset))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(addr) & mask == u32::from(self.base)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The allocator. Addresses are handed out round-robin from the last one given, so an address
/// just released is not reused at once (a stale peer may still hold it in a cache).
#[derive(Debug)]
pub struct Ipam {
    cidr: Ipv4Cidr,
    dir: PathBuf,
}

impl Ipam {
    pub fn open(cidr: Ipv4Cidr, dir: &Path) -> Result<Ipam, IpamError> {
        std::fs::create_dir_all(dir).map_err(|source| IpamError::Store {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Ipam {
            cidr,
            dir: dir.to_owned(),
        })
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// The address held by `owner`, if any (a restarted agent finds its pods' addresses).
    pub fn find(&self, owner: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, holder)| holder == owner)
            .map(|(addr, _)| addr))
    }

    /// Every allocation: address and owner.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let store = |source| IpamError::Store {
            path: self.dir.clone(),
            source,
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(store)? {
            let entry = entry.map_err(store)?;
            let Some(addr) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            // Another pod may release its address between the listing and this read.
            let owner = match std::fs::read_to_string(entry.path()) {
                Ok(owner) => owner,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(store(error)),
            };
            found.push((addr, owner.trim().to_owned()));
        }
        Ok(found)
    }

    /// Allocates an address for `owner`; the address it already holds if it holds one.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(addr) = self.find(owner)? {
            return Ok(addr);
        }
        let last = self.read_last();
        let hosts: Vec<Ipv4Addr> = self.cidr.hosts().collect();
        let start = last
            .and_then(|last| hosts.iter().position(|addr| *addr == last))
            .map_or(0, |index| index + 1);
        for addr in hosts[start..].iter().chain(&hosts[..start]) {
            let path = self.dir.join(addr.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(owner.as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(|source| IpamError::Store { path, source })?;
                    let _ = std::fs::write(self.dir.join("last"), addr.to_string());
                    return Ok(*addr);
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(IpamError::Store { path, source }),
            }
        }
        Err(IpamError::Exhausted {
            cidr: self.cidr.to_string(),
        })
    }

    /// Releases whatever `owner` holds. Idempotent.
    pub fn release(&self, owner: &str) -> Result<(), IpamError> {
        for (addr, holder) in self.allocations()? {
            if holder == owner {
                let path = self.dir.join(addr.to_string());
                match std::fs::remove_file(&path) {
                    Err(source) if source.kind() != io::ErrorKind::NotFound => {
                        return Err(IpamError::Store { path, source });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn read_last(&self) -> Option<Ipv4Addr> {
        std::fs::read_to_string(self.dir.join("last"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_strictly() {
        let cidr = Ipv4Cidr::parse("198.18.4.0/24").unwrap();
        assert_eq!(cidr.to_string(), "198.18.4.0/24");
        assert!(cidr.contains("198.18.4.200".parse().unwrap()));
        assert!(!cidr.contains("198.18.5.1".parse().unwrap()));
        for bad in [
            "198.18.4.1/24",
            "198.18.4.0",
            "198.18.4.0/31",
            "x/24",
            "::1/64",
        ] {
            assert!(Ipv4Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allocations_are_unique_persistent_and_round_robin() {
        let dir = tempfile::tempdir().unwrap();
        let cidr = Ipv4Cidr::parse("198.18.4.0/29").unwrap();
        let ipam = Ipam::open(cidr, dir.path()).unwrap();
        let a = ipam.allocate("pod-a").unwrap();
        let b = ipam.allocate("pod-b").unwrap();
        assert_eq!(a, "198.18.4.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(b, "198.18.4.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            ipam.allocate("pod-a").unwrap(),
            a,
            "same owner, same address"
        );

        // A new allocator over the same directory (an agent restart) sees the same state.
        let ipam = Ipam::open(cidr, dir.path()).unwrap();
        assert_eq!(ipam.find("pod-b").unwrap(), Some(b));
        ipam.release("pod-a").unwrap();
        ipam.release("pod-a").unwrap();
        let c = ipam.allocate("pod-c").unwrap();
        assert_eq!(
            c,
            "198.18.4.3".parse::<Ipv4Addr>().unwrap(),
            "no instant reuse"
        );
        for owner in ["d", "e", "f"] {
            ipam.allocate(owner).unwrap();
        }
        // .1 is free again and the only one left: it is reused once the rest are taken.
        assert_eq!(
            ipam.allocate("g").unwrap(),
            "198.18.4.1".parse::<Ipv4Addr>().unwrap()
        );
        let error = ipam.allocate("h").unwrap_err();
        assert_eq!(
            error.to_string(),
            "pod CIDR 198.18.4.0/29 has no free address left"
        );
    }
}
