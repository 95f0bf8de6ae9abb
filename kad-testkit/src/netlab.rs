//! Real networks for tests and benchmarks: Linux network namespaces that the caller builds, and
//! a userspace link emulator that delays, jitters and drops the frames crossing a link.
//!
//! Where the kernel has no `netem` queueing discipline, delay has to be added in userspace. A
//! [`Wan`] joins two *sites* (one namespace each) through a *router* namespace. Each site has
//! one interface on a shared /24 subnet, cabled by a veth pair to the router. In the router, one
//! thread per direction reads every Ethernet frame from one interface (an `AF_PACKET` socket),
//! drops IP frames with the configured probability, holds the rest for the one-way delay plus a
//! uniform jitter, and writes them to the other interface. ARP is forwarded but never dropped,
//! so that loss means lost datagrams, not unreachable neighbours.
//!
//! Frames re-sent from an `AF_PACKET` socket must carry complete checksums: checksum offload,
//! GSO and GRO are turned off on the veths (`ethtool -K`), without which UDP and TCP frames
//! would arrive with partial checksums and be dropped by the receiver.
//!
//! Everything is removed when the [`Wan`] is dropped: the threads stop, the namespaces are
//! deleted (with them, their veths). Processes a caller starts inside a site are the caller's to
//! kill. Building a [`Wan`] needs root, iproute2 (`ip`) and ethtool.
//!
//! ```no_run
//! use std::time::Duration;
//! use kad_testkit::netlab::{LinkShape, Wan};
//!
//! // 80 ms round trip, +-8 ms jitter each way, 3% of the IP frames lost in each direction.
//! let shape = LinkShape::new(Duration::from_millis(40)).jitter(Duration::from_millis(8)).loss(0.03);
//! let wan = Wan::up("demo", [10, 99, 0], shape).expect("root, iproute2 and ethtool");
//! let out = std::process::Command::new("ip")
//!     .args(["netns", "exec", wan.site(0), "ping", "-c", "3"])
//!     .arg(wan.addr(1).to_string())
//!     .output()
//!     .expect("ping");
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! println!("{:?}", wan.stats());
//! ```

use std::collections::BinaryHeap;
use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How one direction of a link treats the frames that cross it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LinkShape {
    /// One-way delay added to every frame.
    pub delay: Duration,
    /// Each frame's delay is `delay` plus a uniform draw in `[-jitter, +jitter]`.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that an IP (v4 or v6) frame is dropped.
    pub loss: f64,
    /// Whether frames leave in the order they came (a later frame never overtakes an earlier
    /// one, as on one path through routers with FIFO queues), or each at its own time, so that
    /// jitter reorders them.
    pub in_order: bool,
}

impl LinkShape {
    /// A link with this one-way delay, no jitter, no loss, in order.
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            in_order: true,
        }
    }

    /// Sets the jitter (see [`LinkShape::jitter`](Self#structfield.jitter)).
    #[must_use]
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the loss probability, clamped to `[0, 1]`.
    #[must_use]
    pub fn loss(mut self, loss: f64) -> Self {
        self.loss = if loss.is_finite() {
            loss.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Lets jitter reorder frames.
    #[must_use]
    pub fn reordering(mut self) -> Self {
        self.in_order = false;
        self
    }
}

/// Frames counted in one direction of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectionStats {
    /// Frames read from the incoming interface.
    pub received: u64,
    /// Frames written to the outgoing interface.
    pub forwarded: u64,
    /// Frames dropped on purpose (the loss probability).
    pub dropped: u64,
    /// Frames dropped because the queue held [`QUEUE_LIMIT`] frames already, or the write
    /// failed.
    pub overflowed: u64,
}

/// Frames counted in both directions of a [`Wan`]'s link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// From site 0 to site 1.
    pub forward: DirectionStats,
    /// From site 1 to site 0.
    pub backward: DirectionStats,
}

/// Frames one direction holds at most; beyond, new frames are dropped (a full router queue).
pub const QUEUE_LIMIT: usize = 20_000;

/// Why a [`Wan`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A command (`ip`, `ethtool`) could not run or failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output, or why it could not start.
        message: String,
    },
    /// A system call of the link emulator failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A name or parameter was refused.
    #[error("{0}")]
    Invalid(String),
}

fn run(program: &str, args: &[&str]) -> Result<(), LabError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| LabError::Command {
            command: command.clone(),
            message: format!("{e} (is it installed? it needs root, iproute2 and ethtool)"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Two sites joined through a router namespace whose link emulator shapes the frames between
/// them. See the [module docs](self).
pub struct Wan {
    sites: [String; 2],
    router: String,
    subnet: [u8; 3],
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: [Arc<Counters>; 2],
}

impl std::fmt::Debug for Wan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wan")
            .field("sites", &self.sites)
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl Wan {
    /// Builds the namespaces `TAG-s0`, `TAG-s1` and `TAG-r` (deleting leftovers of the same
    /// names first), gives site `i` the address `SUBNET.(i+1)/24` on its interface `eth0`, and
    /// starts the link emulator with `shape` in both directions. `tag`: 1 to 12 characters of
    /// `[A-Za-z0-9_-]`, unique among the labs that run at once (a process id fits).
    pub fn up(tag: &str, subnet: [u8; 3], shape: LinkShape) -> Result<Self, LabError> {
        Self::up_asymmetric(tag, subnet, shape, shape)
    }

    /// As [`up`](Self::up), with one shape from site 0 to site 1 and another back.
    pub fn up_asymmetric(
        tag: &str,
        subnet: [u8; 3],
        forward: LinkShape,
        backward: LinkShape,
    ) -> Result<Self, LabError> {
        if tag.is_empty()
            || tag.len() > 12
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(LabError::Invalid(format!(
                "tag {tag:?}: 1 to 12 characters of [A-Za-z0-9_-]"
            )));
        }
        let sites = [format!("{tag}-s0"), format!("{tag}-s1")];
        let router = format!("{tag}-r");
        for ns in sites.iter().chain([&router]) {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let mut wan = Self {
            sites,
            router,
            subnet,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            stats: [Arc::default(), Arc::default()],
        };
        // From here on, a failure drops `wan`, which deletes what was made.
        for ns in wan.sites.iter().chain([&wan.router]) {
            run("ip", &["netns", "add", ns])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        let r = wan.router.clone();
        in_ns(&r, "sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        in_ns(
            &r,
            "sysctl",
            &["-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        )?;
        for (i, site) in wan.sites.clone().iter().enumerate() {
            let port = format!("p{i}");
            run(
                "ip",
                &[
                    "-n", &r, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", site,
                ],
            )?;
            let addr = format!("{}/24", wan.addr(i));
            run("ip", &["-n", site, "addr", "add", &addr, "dev", "eth0"])?;
            for (ns, dev) in [(site.as_str(), "eth0"), (r.as_str(), port.as_str())] {
                in_ns(
                    ns,
                    "ethtool",
                    &[
                        "-K", dev, "tx", "off", "rx", "off", "gso", "off", "tso", "off", "gro",
                        "off",
                    ],
                )?;
            }
            run(
                "ip",
                &["-n", &r, "link", "set", &port, "promisc", "on", "up"],
            )?;
            run("ip", &["-n", site, "link", "set", "eth0", "up"])?;
        }
        let p0 = Arc::new(open_port(&r, "p0")?);
        let p1 = Arc::new(open_port(&r, "p1")?);
        for (dir, (from, to, shape)) in [
            (p0.clone(), p1.clone(), forward),
            (p1.clone(), p0.clone(), backward),
        ]
        .into_iter()
        .enumerate()
        {
            let q = Arc::new(Queue::default());
            let seed = 0x9E37_79B9_7F4A_7C15_u64
                ^ u64::from(std::process::id()) << 16
                ^ dir as u64
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
            let (stop, stats, q2) = (wan.stop.clone(), wan.stats[dir].clone(), q.clone());
            wan.threads.push(std::thread::spawn(move || {
                read_side(&from, &q2, &stats, &stop, shape, seed);
            }));
            let (stop, stats) = (wan.stop.clone(), wan.stats[dir].clone());
            wan.threads.push(std::thread::spawn(move || {
                write_side(&to, &q, &stats, &stop);
            }));
        }
        Ok(wan)
    }

    /// The namespace of site `i` (0 or 1), for `ip netns exec`.
    pub fn site(&self, i: usize) -> &str {
        &self.sites[i]
    }

    /// The router namespace.
    pub fn router(&self) -> &str {
        &self.router
    }

    /// The address of site `i` (0 or 1): `SUBNET.(i+1)`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, i as u8 + 1)
    }

    /// Runs `f` on a thread inside site `i`'s namespace and returns its result: sockets it
    /// opens belong to that site (and stay there when moved to other threads).
    pub fn in_site<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        in_namespace(&self.sites[i], f)
    }

    /// Frames counted so far in each direction.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            forward: self.stats[0].snapshot(),
            backward: self.stats[1].snapshot(),
        }
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in self.sites.iter().chain([&self.router]) {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    overflowed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
        }
    }
}

/// A frame waiting for its time, ordered so that the heap's top is the earliest (then the
/// first received).
struct Held {
    at: Instant,
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct Queue {
    held: Mutex<BinaryHeap<Held>>,
    ready: Condvar,
}

/// Runs `f` on a thread inside the named namespace (one of `/var/run/netns`).
pub fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    let file =
        std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|source| LabError::Sys {
            what: "opening the namespace",
            source,
        })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `setns` on a valid namespace descriptor, for this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(LabError::Sys {
                    what: "entering the namespace",
                    source: io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(LabError::Invalid("the namespace thread panicked".into())))
    })
}

/// An `AF_PACKET` socket bound to one interface of the router namespace, receiving every frame
/// that arrives on it (not the ones it sends).
fn open_port(router: &str, dev: &str) -> Result<OwnedFd, LabError> {
    let sys = |what| move |source| LabError::Sys { what, source };
    let dev = CString::new(dev).map_err(|_| LabError::Invalid("interface name".into()))?;
    in_namespace(router, || {
        // SAFETY: plain system calls on valid descriptors and initialised structs; every
        // result is checked.
        unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            if fd < 0 {
                return Err(sys("opening an AF_PACKET socket")(
                    io::Error::last_os_error(),
                ));
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let index = libc::if_nametoindex(dev.as_ptr());
            if index == 0 {
                return Err(sys("finding the router's interface")(
                    io::Error::last_os_error(),
                ));
            }
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            if libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                return Err(sys("binding the AF_PACKET socket")(
                    io::Error::last_os_error(),
                ));
            }
            let one: libc::c_int = 1;
            setopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)
                .map_err(sys("ignoring outgoing frames"))?;
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            setopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
                .map_err(sys("setting a receive timeout"))?;
            let buf: libc::c_int = 4 << 20;
            for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
                // Best effort: the defaults work, larger ones absorb bursts.
                let _ = setopt(&fd, libc::SOL_SOCKET, opt, &buf);
            }
            Ok(fd)
        }
    })?
}

/// `setsockopt` with a value of type `T`.
fn setopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// splitmix64: a few random bits per frame, no dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(state: &mut u64) -> f64 {
    (next(state) >> 11) as f64 / (1u64 << 53) as f64
}

fn read_side(
    port: &OwnedFd,
    q: &Queue,
    stats: &Counters,
    stop: &AtomicBool,
    shape: LinkShape,
    mut rng: u64,
) {
    let mut buf = vec![0u8; 65_536];
    let (mut seq, mut last) = (0u64, Instant::now());
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: reads into a buffer of the given length.
        let n = unsafe { libc::recv(port.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue; // the receive timeout: look at `stop` again
        }
        let frame = &buf[..n as usize];
        stats.received.fetch_add(1, Ordering::Relaxed);
        let ethertype = frame
            .get(12..14)
            .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
        let ip = matches!(ethertype, 0x0800 | 0x86DD);
        if ip && shape.loss > 0.0 && unit(&mut rng) < shape.loss {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let jitter = shape.jitter.as_secs_f64() * (2.0 * unit(&mut rng) - 1.0);
        let delay = (shape.delay.as_secs_f64() + jitter).max(0.0);
        let mut at = Instant::now() + Duration::from_secs_f64(delay);
        if shape.in_order {
            at = at.max(last);
            last = at;
        }
        let mut held = q.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() >= QUEUE_LIMIT {
            stats.overflowed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        seq += 1;
        held.push(Held {
            at,
            seq,
            frame: frame.to_vec(),
        });
        drop(held);
        q.ready.notify_one();
    }
    q.ready.notify_one();
}

fn write_side(port: &OwnedFd, q: &Queue, stats: &Counters, stop: &AtomicBool) {
    let mut held = q.held.lock().unwrap_or_else(PoisonError::into_inner);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = match held.peek() {
            Some(h) if h.at <= now => {
                let h = held.pop().expect("peeked");
                drop(held);
                // SAFETY: writes a frame of the given length.
                let n = unsafe {
                    libc::send(port.as_raw_fd(), h.frame.as_ptr().cast(), h.frame.len(), 0)
                };
                if n == h.frame.len() as isize {
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.overflowed.fetch_add(1, Ordering::Relaxed);
                }
                held = q.held.lock().unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            Some(h) => h.at - now,
            None => Duration::from_millis(50),
        };
        held = q
            .ready
            .wait_timeout(held, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_frames_leave_earliest_first_then_in_arrival_order() {
        let t = Instant::now();
        let mut h = BinaryHeap::new();
        for (ms, seq) in [(30, 1), (10, 2), (10, 3), (20, 4)] {
            h.push(Held {
                at: t + Duration::from_millis(ms),
                seq,
                frame: Vec::new(),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| h.pop().map(|x| x.seq)).collect();
        assert_eq!(order, [2, 3, 4, 1]);
    }

    #[test]
    fn loss_is_clamped_and_the_draws_are_uniform_enough() {
        assert_eq!(LinkShape::new(Duration::ZERO).loss(3.0).loss, 1.0);
        assert_eq!(LinkShape::new(Duration::ZERO).loss(f64::NAN).loss, 0.0);
        let mut s = 7;
        let below = (0..100_000).filter(|_| unit(&mut s) < 0.03).count();
        assert!((2_700..3_300).contains(&below), "{below}");
    }
}
