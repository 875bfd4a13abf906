//! Network faults: a seeded UDP proxy on 127.0.0.1 between two daemons drops, delays,
//! duplicates, reorders and corrupts datagrams, and cuts the link entirely for a few
//! seconds in the middle of a transfer. Sync must converge once the link heals, with every
//! byte identical: QUIC's AEAD discards corrupted datagrams, tandem's hashes stay a second
//! line that should never fire here.
//!
//! Only A knows the way to B, and it is the proxy: B's address for A is a port nobody
//! listens on, so every packet of the session crosses the proxy (checked in A's log).
//! `TANDEM_CHAOS_SEED=<n>` replays a run (the seed is printed);
//! `TANDEM_CHAOS_RATES=drop,duplicate,corrupt,reorder` (probabilities, default
//! `0.02,0.02,0.01,0.02`) makes the link worse or better.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{Device, Rng, free_port, random_bytes, wait_until};

/// What the proxy does to each datagram (each decision drawn from a seeded RNG).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Faults {
    /// Probability that a datagram is dropped.
    pub(crate) drop: f64,
    /// Probability that a datagram is sent twice.
    pub(crate) duplicate: f64,
    /// Probability that one bit of a datagram is flipped.
    pub(crate) corrupt: f64,
    /// Every datagram (and duplicate) is held this long, in microseconds.
    pub(crate) delay_us: u64,
    /// Probability that a datagram is held longer, by a uniform extra delay in
    /// `reorder_us`: the datagrams behind it overtake it.
    pub(crate) reorder: f64,
    /// The extra delay range of a reordered datagram, in microseconds.
    pub(crate) reorder_us: (u64, u64),
    /// Once this many bytes went from A to B, the link is cut (everything dropped both
    /// ways) until [`Proxy::heal`].
    pub(crate) cut_after_bytes_to_b: Option<u64>,
}

/// Counters, for assertions and the report.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) corrupted: AtomicU64,
    pub(crate) reordered: AtomicU64,
    pub(crate) dropped_while_cut: AtomicU64,
    pub(crate) bytes_to_b: AtomicU64,
}

impl Stats {
    fn get(n: &AtomicU64) -> u64 {
        n.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Direction {
    ToB,
    ToA,
}

/// A datagram waiting for its delivery time.
type Queued = Reverse<(Instant, u64, Direction, Vec<u8>)>;

struct Shared {
    faults: Faults,
    stats: Stats,
    cut: AtomicBool,
    /// The cut was made (it is made once; healing is up to the test).
    was_cut: AtomicBool,
    stop: AtomicBool,
    /// A's address as the proxy last saw it (where B's datagrams go).
    client: Mutex<Option<SocketAddr>>,
    queue: Mutex<BinaryHeap<Queued>>,
    ready: Condvar,
}

/// The proxy: `front` faces A (A dials it as if it were B), `back` faces B.
pub(crate) struct Proxy {
    pub(crate) front_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn udp_socket() -> UdpSocket {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    // big buffers: the faults are the ones chosen here, not the kernel's
    socket.set_recv_buffer_size(4 << 20).ok();
    socket.set_send_buffer_size(4 << 20).ok();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&addr.into()).expect("bind");
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    socket
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (B's real address).
    pub(crate) fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> Self {
        let front = Arc::new(udp_socket());
        let back = Arc::new(udp_socket());
        back.connect(upstream).unwrap();
        let shared = Arc::new(Shared {
            faults,
            stats: Stats::default(),
            cut: AtomicBool::new(false),
            was_cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            client: Mutex::new(None),
            queue: Mutex::new(BinaryHeap::new()),
            ready: Condvar::new(),
        });
        let mut threads = Vec::new();
        for (direction, socket, n) in
            [(Direction::ToB, front.clone(), 1u64), (Direction::ToA, back.clone(), 2)]
        {
            let shared = shared.clone();
            let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(n));
            threads.push(std::thread::spawn(move || {
                receive(&shared, &socket, direction, &mut rng);
            }));
        }
        let sender = {
            let (shared, front, back) = (shared.clone(), front.clone(), back);
            std::thread::spawn(move || deliver(&shared, &front, &back))
        };
        threads.push(sender);
        Self { front_addr: front.local_addr().unwrap(), shared, threads }
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::Relaxed)
    }

    /// Restores the link (the faults stay).
    pub(crate) fn heal(&self) {
        self.shared.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Receives datagrams on one side, applies the faults and queues what survives.
fn receive(shared: &Shared, socket: &UdpSocket, direction: Direction, rng: &mut Rng) {
    let (faults, stats) = (&shared.faults, &shared.stats);
    let mut buf = vec![0u8; 65_536];
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        stats.received.fetch_add(1, Ordering::Relaxed);
        if direction == Direction::ToB {
            *shared.client.lock().unwrap() = Some(from);
            let total = stats.bytes_to_b.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            let due = faults.cut_after_bytes_to_b.is_some_and(|limit| total >= limit);
            if due && !shared.was_cut.swap(true, Ordering::Relaxed) {
                shared.cut.store(true, Ordering::Relaxed);
                eprintln!("proxy: link cut after {total} bytes towards B");
            }
        }
        if shared.cut.load(Ordering::Relaxed) {
            stats.dropped_while_cut.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if rng.chance(faults.drop) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut copies = vec![buf[..n].to_vec()];
        if rng.chance(faults.duplicate) {
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
            copies.push(buf[..n].to_vec());
        }
        if n > 0 && rng.chance(faults.corrupt) {
            let at = rng.below(n as u64) as usize;
            copies[0][at] ^= 1 << rng.below(8);
            stats.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        let mut queue = shared.queue.lock().unwrap();
        for copy in copies {
            let mut delay = faults.delay_us;
            if rng.chance(faults.reorder) {
                let (lo, hi) = faults.reorder_us;
                delay += lo + rng.below(hi - lo + 1);
            }
            let at = Instant::now() + Duration::from_micros(delay);
            queue.push(Reverse((at, seq, direction, copy)));
        }
        seq += 1;
        drop(queue);
        shared.ready.notify_one();
    }
}

/// Sends queued datagrams when their time comes: towards B from `back`, towards A (to the
/// address A last sent from) from `front`.
fn deliver(shared: &Shared, front: &UdpSocket, back: &UdpSocket) {
    let mut last_seq = [None::<u64>; 2];
    let mut queue = shared.queue.lock().unwrap();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due = match queue.peek() {
            Some(Reverse((at, ..))) if *at <= now => queue.pop(),
            Some(Reverse((at, ..))) => {
                let wait = *at - now;
                queue = shared.ready.wait_timeout(queue, wait).unwrap().0;
                continue;
            }
            None => {
                queue = shared.ready.wait_timeout(queue, Duration::from_millis(50)).unwrap().0;
                continue;
            }
        };
        let Some(Reverse((_, seq, direction, data))) = due else { continue };
        let slot = &mut last_seq[direction as usize];
        if slot.is_some_and(|last| seq < last) {
            shared.stats.reordered.fetch_add(1, Ordering::Relaxed);
        }
        *slot = Some(slot.map_or(seq, |last| last.max(seq)));
        drop(queue);
        let sent = match direction {
            Direction::ToB => back.send(&data).is_ok(),
            Direction::ToA => match *shared.client.lock().unwrap() {
                Some(client) => front.send_to(&data, client).is_ok(),
                None => false,
            },
        };
        if sent {
            shared.stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        queue = shared.queue.lock().unwrap();
    }
}

/// (path, content) pairs.
fn corpus(seed: u64, prefix: &str, n: u64, big: usize) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (format!("{prefix}/f{i}.bin"), random_bytes(seed + i, (i as usize * 7919) % 200_000))
        })
        .collect();
    if big > 0 {
        out.push((format!("{prefix}/big.bin"), random_bytes(seed ^ 0xB16, big)));
    }
    out
}

/// How long the link stays cut.
const CUT: Duration = Duration::from_secs(3);

#[test]
fn sync_converges_bit_identical_through_a_lossy_reordering_corrupting_link_that_is_cut_mid_transfer()
 {
    let seed = Rng::seed_from_env("TANDEM_CHAOS_SEED");
    let started = Instant::now();
    let (a, b) = (Device::peer(), Device::peer());
    // A reaches B only through the proxy; B's address for A leads nowhere
    let big = 32 << 20;
    // TANDEM_CHAOS_RATES=drop,duplicate,corrupt,reorder overrides the probabilities
    let rates: Vec<f64> = std::env::var("TANDEM_CHAOS_RATES")
        .map(|v| v.split(',').map(|r| r.trim().parse().expect("a probability")).collect())
        .unwrap_or_else(|_| vec![0.02, 0.02, 0.01, 0.02]);
    let faults = Faults {
        drop: rates[0],
        duplicate: rates[1],
        corrupt: rates[2],
        delay_us: 200,
        reorder: rates[3],
        reorder_us: (500, 3_000),
        cut_after_bytes_to_b: Some(big as u64 / 4),
    };
    eprintln!("chaos: {faults:?}");
    let proxy = Proxy::start(b.listen().parse().unwrap(), faults, seed);
    let (a_id, b_id) = (a.id(), b.id());
    a.ok(&["peer", "add", &b_id, "--addr", &proxy.front_addr.to_string()]);
    a.ok(&["folder", "share", "docs", &b_id]);
    b.ok(&["peer", "add", &a_id, "--addr", &format!("127.0.0.1:{}", free_port())]);
    b.ok(&["folder", "share", "docs", &a_id]);
    let from_a = corpus(seed, "from-a", 20, big);
    let from_b = corpus(seed + 1000, "from-b", 8, 0);
    for (path, data) in &from_a {
        a.write(path, data);
    }
    for (path, data) in &from_b {
        b.write(path, data);
    }
    let serve_b = b.serve();
    let serve_a = a.serve();
    // the cut comes a quarter into the big transfer, while it is in flight
    assert!(wait_until(120, || proxy.is_cut()), "the transfer never got a quarter through");
    assert!(!b.path("from-a/big.bin").exists(), "the big file arrived before the cut");
    let cut_at = Instant::now();
    std::thread::sleep(CUT);
    let dropped_during_cut = Stats::get(&proxy.stats().dropped_while_cut);
    assert!(dropped_during_cut > 0, "nothing tried to cross the cut link");
    assert!(!b.path("from-a/big.bin").exists(), "data crossed a cut link");
    proxy.heal();
    let converged = wait_until(180, || a.tree() == b.tree() && b.path("from-a/big.bin").exists());
    assert!(
        converged,
        "no convergence after the link healed\nA: {}\nB: {}",
        serve_a.log_text(),
        serve_b.log_text()
    );
    let healed_after = cut_at.elapsed();
    // bit-identical: every file on both sides hashes to what was written
    let mut verified = 0u64;
    for (path, data) in from_a.iter().chain(&from_b) {
        let want = blake3::hash(data);
        for device in [&a, &b] {
            let got = blake3::hash(&std::fs::read(device.path(path)).unwrap());
            assert_eq!(got, want, "{path} differs");
        }
        verified += data.len() as u64;
    }
    // and edits keep flowing over the still-faulty link
    a.write("after-heal.txt", b"written after the link came back");
    assert!(
        wait_until(60, || std::fs::read(b.path("after-heal.txt"))
            .is_ok_and(|d| d == b"written after the link came back")),
        "a change after the heal did not arrive"
    );
    // the session ran through the proxy, and QUIC (not tandem's hash check) caught the
    // corrupted datagrams
    assert!(
        serve_a.log_text().contains(&format!(" at {}", proxy.front_addr)),
        "A did not connect through the proxy: {}",
        serve_a.log_text()
    );
    for log in [serve_a.log_text(), serve_b.log_text()] {
        assert!(!log.contains("failed verification"), "a corrupted chunk reached tandem: {log}");
    }
    let stats = proxy.stats();
    let get = Stats::get;
    assert!(get(&stats.dropped) > 0 && get(&stats.duplicated) > 0, "{stats:?}");
    assert!(get(&stats.corrupted) > 0 && get(&stats.reordered) > 0, "{stats:?}");
    eprintln!(
        "chaos: seed {seed}; {} datagrams in, {} out: {} dropped, {} duplicated, {} corrupted, \
         {} reordered, {} dropped during a {:.1} s cut; {} MiB verified on both sides; \
         converged {:.1} s after the cut began; {:.1} s in all",
        get(&stats.received),
        get(&stats.sent),
        get(&stats.dropped),
        get(&stats.duplicated),
        get(&stats.corrupted),
        get(&stats.reordered),
        get(&stats.dropped_while_cut),
        CUT.as_secs_f64(),
        verified >> 20,
        healed_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
