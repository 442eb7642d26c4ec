//! The send and receive paths allocate nothing per datagram once an endpoint has warmed up:
//! a message costs the same few allocations (its payload, its records) whether it travels in
//! one datagram or in nine. Counted with a global allocator, on this test's thread only.

use dabs_proto::{Addr, Config, Endpoint, Event, SessionId};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the counter is a
// thread-local `Cell` with a const initialiser, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn addr(port: u16) -> Addr {
    Addr::Udp(([127, 0, 0, 1], port).into())
}

/// Moves every queued datagram from `from` to `to` and gives the buffers back to `from`, as
/// the driver does. Returns how many went.
fn carry(from: &mut Endpoint, from_port: u16, to: &mut Endpoint, t: Duration) -> u64 {
    let mut n = 0;
    while let Some(d) = from.poll_transmit() {
        to.handle_datagram(t, addr(from_port), &d.data);
        from.recycle(d.data);
        n += 1;
    }
    n
}

struct Pair {
    client: Endpoint,
    server: Endpoint,
    session: SessionId,
    t: Duration,
}

impl Pair {
    fn open() -> Self {
        let t = Duration::ZERO;
        let mut client = Endpoint::new(Config::default(), 1, 0);
        let mut server = Endpoint::new(Config::default(), 2, 0);
        client.open(t, addr(2), 1, vec![]).unwrap();
        carry(&mut client, 1, &mut server, t);
        let Some(Event::Open { request, .. }) = server.poll_event() else { panic!("no open") };
        server.accept_open(t, &request, 7, vec![]).unwrap();
        carry(&mut server, 2, &mut client, t);
        let Some(Event::Opened { session, .. }) = client.poll_event() else { panic!("not opened") };
        carry(&mut client, 1, &mut server, t);
        Self { client, server, session, t }
    }

    /// One call of `len` bytes echoed back, with the ACK of the REPLY. Returns the
    /// datagrams it took.
    fn echo(&mut self, payload: Vec<u8>) -> u64 {
        self.t += Duration::from_millis(1);
        let t = self.t;
        self.client.call(t, self.session, 300, payload).unwrap();
        let mut datagrams = carry(&mut self.client, 1, &mut self.server, t);
        while let Some(e) = self.server.poll_event() {
            if let Event::Request(r) = e {
                self.server.reply(t, r.id, r.payload).unwrap();
            }
        }
        datagrams += carry(&mut self.server, 2, &mut self.client, t);
        let mut replied = false;
        while let Some(e) = self.client.poll_event() {
            replied |= matches!(e, Event::Reply { .. });
        }
        assert!(replied, "no REPLY");
        datagrams += carry(&mut self.client, 1, &mut self.server, t);
        while self.server.poll_event().is_some() {}
        datagrams
    }

    /// Allocations and datagrams of `rounds` echoes of `len` bytes, after a warm-up.
    fn measure(&mut self, len: usize, rounds: u64) -> (u64, u64) {
        for _ in 0..50 {
            self.echo(vec![7; len]);
        }
        COUNT.with(|c| c.set(0));
        COUNTING.with(|on| on.set(true));
        let mut datagrams = 0;
        for _ in 0..rounds {
            datagrams += self.echo(vec![7; len]);
        }
        COUNTING.with(|on| on.set(false));
        (COUNT.with(Cell::get), datagrams)
    }
}

#[test]
fn a_message_in_nine_buffers_allocates_as_little_as_one_in_one() {
    let rounds = 200;
    let mut pair = Pair::open();
    let (small_allocs, small_datagrams) = pair.measure(64, rounds);
    let (large_allocs, large_datagrams) = pair.measure(4096, rounds);
    let extra_datagrams = large_datagrams - small_datagrams;
    let per_extra = large_allocs.saturating_sub(small_allocs) as f64 / extra_datagrams as f64;
    println!(
        "64 B: {small_allocs} allocations for {small_datagrams} datagrams; \
         4 KiB: {large_allocs} for {large_datagrams}; {per_extra:.3} per extra datagram"
    );
    assert_eq!(small_datagrams, 3 * rounds, "REQUEST, REPLY, ACK");
    assert_eq!(large_datagrams, 19 * rounds, "9 + 9 buffers and an ACK");
    // A B-tree node per eleven buffers held is what reassembly still allocates: well under
    // one allocation in five datagrams. One per datagram (a buffer each) was the old cost.
    assert!(per_extra < 0.2, "{per_extra:.3} allocations per extra datagram");
}
