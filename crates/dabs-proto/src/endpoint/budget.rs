//! Reassembly memory: the bytes half-received messages hold, charged to their session, their
//! peer and the endpoint, and the budgets (`Config::reassembly_*`) that bound each.

use super::io::Spare;
use dabs_wire::{Datagram, NakCode, Progress, Reassembly, ReassemblyError};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running byte count shared by every [`Charge`] made against it.
#[derive(Clone, Default)]
pub(super) struct Meter(Arc<AtomicUsize>);

impl Meter {
    pub(super) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The meters one partial message is charged to: its session's (if it has one yet), its
/// peer's and the endpoint's.
#[derive(Clone)]
pub(super) struct Meters {
    pub(super) session: Option<Meter>,
    pub(super) peer: Meter,
    pub(super) total: Meter,
}

/// The bytes one partial message holds, given back to every meter when it is dropped,
/// whichever way it goes (completed, refused, replaced, or with its session): nothing has to
/// remember to release it.
struct Charge {
    meters: Meters,
    bytes: usize,
}

impl Charge {
    fn grow(&mut self, n: usize) {
        if let Some(m) = &self.meters.session {
            m.add(n);
        }
        self.meters.peer.add(n);
        self.meters.total.add(n);
        self.bytes += n;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(m) = &self.meters.session {
            m.sub(self.bytes);
        }
        self.meters.peer.sub(self.bytes);
        self.meters.total.sub(self.bytes);
    }
}

/// The reassembly budgets of `Config`, in bytes.
#[derive(Clone, Copy)]
pub(super) struct Budgets {
    pub(super) session: usize,
    pub(super) source: usize,
    pub(super) endpoint: usize,
}

impl Budgets {
    pub(super) fn of(c: &crate::Config) -> Self {
        Self {
            session: c.reassembly_per_session,
            source: c.reassembly_per_source,
            endpoint: c.reassembly_total,
        }
    }
}

/// Whose budget a buffer would have taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    Session,
    Source,
    Endpoint,
}

/// Why a buffer was not added.
#[derive(Debug)]
pub(super) enum Refused {
    /// It does not belong to the message, or conflicts with it.
    Bad(ReassemblyError),
    /// A budget (its size in bytes) would be exceeded.
    Budget(Scope, usize),
}

impl Refused {
    /// The NAK that refuses the message, and its text. A session's or source's budget is the
    /// sender's own doing: 5, "message too large to accept" (as for too many partial messages
    /// from one peer). The endpoint's is everyone's: 8, "overloaded: try another server".
    pub(super) fn nak(&self) -> (NakCode, String) {
        match self {
            Refused::Bad(e) => (NakCode::Malformed, e.to_string()),
            Refused::Budget(Scope::Session, n) => {
                (NakCode::TooLarge, format!("the session's half-received messages would exceed {n} bytes"))
            }
            Refused::Budget(Scope::Source, n) => {
                (NakCode::TooLarge, format!("this address's half-received messages would exceed {n} bytes"))
            }
            Refused::Budget(Scope::Endpoint, n) => (
                NakCode::Overloaded,
                format!("half-received messages would exceed this endpoint's {n} bytes"),
            ),
        }
    }
}

/// A message being reassembled, with the memory it holds charged.
pub(super) struct Partial {
    r: Reassembly,
    charge: Charge,
}

impl Partial {
    pub(super) fn new(r: Reassembly, meters: Meters) -> Self {
        let mut p = Self { r, charge: Charge { meters, bytes: 0 } };
        p.settle();
        p
    }

    /// Adds one buffer and charges what the message holds now, unless that would take its
    /// session, its source or the endpoint over budget: then nothing is added, and the
    /// caller refuses the message (dropping it gives back what it held).
    pub(super) fn add(
        &mut self,
        d: &Datagram<'_>,
        budgets: Budgets,
        spare: &mut Spare,
    ) -> Result<Progress, Refused> {
        let grow = self.r.growth(d);
        if grow > 0 {
            let m = &self.charge.meters;
            if m.session.as_ref().is_some_and(|s| s.get() + grow > budgets.session) {
                return Err(Refused::Budget(Scope::Session, budgets.session));
            }
            if m.peer.get() + grow > budgets.source {
                return Err(Refused::Budget(Scope::Source, budgets.source));
            }
            if m.total.get() + grow > budgets.endpoint {
                return Err(Refused::Budget(Scope::Endpoint, budgets.endpoint));
            }
        }
        let progress = self.r.add_into(d, || spare.take()).map_err(Refused::Bad);
        self.settle();
        progress
    }

    fn settle(&mut self) {
        let held = self.r.reserved();
        if held > self.charge.bytes {
            self.charge.grow(held - self.charge.bytes);
        }
    }

    pub(super) fn header(&self) -> &dabs_wire::Header {
        self.r.header()
    }

    /// The complete message (the charge is given back, the buffers' storage to `spare`).
    pub(super) fn finish(self, spare: &mut Spare) -> Option<Vec<u8>> {
        self.r.finish_with(|b| spare.give(b)).ok()
    }
}
