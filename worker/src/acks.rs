//! Coalesced acknowledgements for one consumer channel.
//!
//! One `basic.ack` per delivery costs the broker about as much CPU as the
//! delivery itself: measured on RabbitMQ 3.10 with a quorum queue and
//! prefetch 300, 60-68 us of broker CPU per message acked one by one
//! against 14-16 us when every 10th or 50th delivery is acked with
//! `multiple`. Handlers finish out of order (a postgres batch commits 50
//! events at once, a webhook is slower than a log line), so a `multiple`
//! ack may only cover a run of deliveries that are all done: it acks
//! *every* unsettled delivery up to its tag.
//!
//! [`AckWindow`] is that bookkeeping, kept free of I/O so it can be tested
//! exhaustively; [`Settler`] is the one task per channel that owns a window
//! and writes its frames. One task, so frames go out in the order the
//! window decided them: an `ack multiple` overtaken by a later one would
//! name a tag the broker no longer knows, and the broker closes the channel
//! for that.
//!
//! A delivery that is done but sits behind a slow one (a webhook waiting
//! for its timeout) is acked on its own after [`HOLD`]: holding it longer
//! would keep its prefetch slot, and enough of them would stall the
//! consumer behind one slow event.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;

/// How long a done delivery waits for the deliveries before it to finish
/// before it is acked on its own.
pub const HOLD: Duration = Duration::from_millis(20);

/// A frame that settles deliveries at the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `basic.ack` with `multiple`: every unsettled delivery up to the tag.
    AckUpTo(u64),
    /// `basic.ack` of this delivery alone.
    Ack(u64),
    /// `basic.nack` with requeue of this delivery alone.
    Requeue(u64),
}

impl Frame {
    /// The label of `dlr_worker_settle_frames_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Frame::AckUpTo(_) => "ack_multiple",
            Frame::Ack(_) => "ack",
            Frame::Requeue(_) => "nack",
        }
    }
}

/// Where a delivery stands, for the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Its handlers are still running.
    InFlight,
    /// It may be acked; it has been waiting since then.
    Done(Instant),
}

/// The deliveries of one channel that the broker still counts as unacked,
/// and which of them may be acked.
#[derive(Debug, Default)]
pub struct AckWindow {
    unsettled: BTreeMap<u64, Standing>,
}

impl AckWindow {
    /// A delivery arrived. Every delivery of the channel must be reported
    /// here before it can be done: a tag the window does not know could be
    /// covered by an `ack multiple` while it is still being handled.
    pub fn delivered(&mut self, tag: u64) {
        self.unsettled.insert(tag, Standing::InFlight);
    }

    /// A delivery may be acked.
    pub fn done(&mut self, tag: u64, now: Instant) {
        // Inserted even if unknown: a done delivery left out would never
        // be acked and would hold its prefetch slot until the channel closes.
        self.unsettled.insert(tag, Standing::Done(now));
    }

    /// A delivery goes back to the queue: its nack is due now, on its own.
    pub fn requeue(&mut self, tag: u64) -> Option<Frame> {
        self.unsettled.remove(&tag).map(|_| Frame::Requeue(tag))
    }

    /// Deliveries still being handled.
    pub fn in_flight(&self) -> usize {
        self.unsettled.values().filter(|s| **s == Standing::InFlight).count()
    }

    /// The frames due at `now`, in the order they must be sent: one
    /// `ack multiple` for the longest run of done deliveries from the
    /// oldest unsettled one, then single acks for done deliveries that have
    /// waited `hold` behind one still in flight. `hold` zero acks every
    /// done delivery now (the drain's last call).
    pub fn due(&mut self, now: Instant, hold: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut up_to = None;
        while let Some(entry) = self.unsettled.first_entry() {
            if *entry.get() == Standing::InFlight {
                break;
            }
            up_to = Some(*entry.key());
            entry.remove();
        }
        if let Some(tag) = up_to {
            frames.push(Frame::AckUpTo(tag));
        }
        let waited_enough: Vec<u64> = self
            .unsettled
            .iter()
            .filter_map(|(tag, standing)| match standing {
                Standing::Done(since) if now.saturating_duration_since(*since) >= hold => Some(*tag),
                _ => None,
            })
            .collect();
        for tag in waited_enough {
            self.unsettled.remove(&tag);
            frames.push(Frame::Ack(tag));
        }
        frames
    }

    /// When the oldest done delivery held behind one in flight is due.
    pub fn next_deadline(&self, hold: Duration) -> Option<Instant> {
        self.unsettled
            .values()
            .filter_map(|standing| match standing {
                Standing::Done(since) => Some(*since + hold),
                Standing::InFlight => None,
            })
            .min()
    }
}

/// What a delivery's task tells the settler.
#[derive(Debug)]
enum Note {
    Delivered(u64),
    Done(u64),
    Requeue(u64),
}

/// Settles the deliveries of one channel: the consume loop reports each
/// delivery, its task reports the outcome, and one background task writes
/// the frames. Cheap to clone.
#[derive(Clone)]
pub struct Settler {
    notes: mpsc::UnboundedSender<Note>,
}

/// The settler's task, kept by the drain so it can write the last acks
/// before the channel closes.
pub struct SettlerTask {
    releasing: CancellationToken,
    closing: CancellationToken,
    task: JoinHandle<()>,
}

impl Settler {
    /// Starts the task that settles deliveries on `channel`.
    pub fn start(channel: lapin::Channel, metrics: WorkerMetrics) -> (Self, SettlerTask) {
        let (notes, inbox) = mpsc::unbounded_channel();
        let (releasing, closing) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(write_frames(channel, inbox, releasing.clone(), closing.clone(), metrics));
        (Self { notes }, SettlerTask { releasing, closing, task })
    }

    /// Reports a delivery; called before its task starts.
    pub fn delivered(&self, tag: u64) {
        self.note(Note::Delivered(tag));
    }

    /// The delivery may be acked.
    pub fn ack(&self, tag: u64) {
        self.note(Note::Done(tag));
    }

    /// The delivery goes back to the queue.
    pub fn requeue(&self, tag: u64) {
        self.note(Note::Requeue(tag));
    }

    fn note(&self, note: Note) {
        if self.notes.send(note).is_err() {
            // Only after the drain gave up on this delivery: the broker
            // redelivers it when the channel closes.
            tracing::debug!("settler closed; the delivery stays unsettled");
        }
    }
}

impl SettlerTask {
    /// From now on holds nothing back: every ack that is due, and every
    /// delivery settled later, is written at once (the drain's last phase,
    /// when nothing is left to coalesce with but the channel is still open).
    pub fn release(&self) {
        self.releasing.cancel();
    }

    /// Writes every ack that is due now, without holding any back, and ends
    /// the task; waits for that up to `timeout`. Deliveries still in flight
    /// stay unsettled (the broker redelivers them when the channel closes).
    pub async fn finish(self, timeout: Duration) {
        self.closing.cancel();
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("the last acks were not written in time; the broker redelivers those deliveries");
        }
    }
}

/// The settler's task: applies notes, writes the frames that are due, in
/// order, until the settler closes or every handle is gone.
async fn write_frames(
    channel: lapin::Channel,
    mut inbox: mpsc::UnboundedReceiver<Note>,
    releasing: CancellationToken,
    closing: CancellationToken,
    metrics: WorkerMetrics,
) {
    let mut window = AckWindow::default();
    let mut failed = false;
    let mut open = true;
    let mut holding = true;
    while open {
        let mut frames = Vec::new();
        tokio::select! {
            biased;
            note = inbox.recv() => match note {
                Some(note) => frames.extend(apply(&mut window, note)),
                None => open = false,
            },
            () = closing.cancelled() => open = false,
            () = releasing.cancelled(), if holding => holding = false,
            () = sleep_until(window.next_deadline(HOLD)), if holding => {}
        }
        // Whatever else has arrived meanwhile goes into the same frames:
        // under load this is what makes one ack cover many deliveries.
        while let Ok(note) = inbox.try_recv() {
            frames.extend(apply(&mut window, note));
        }
        let hold = if open && holding { HOLD } else { Duration::ZERO };
        frames.extend(window.due(Instant::now(), hold));
        for frame in frames {
            match send(&channel, frame).await {
                Ok(()) => metrics.settle_frames.with_label_values(&[frame.kind()]).inc(),
                Err(error) if !failed => {
                    failed = true;
                    tracing::warn!(%error, "could not settle deliveries (channel gone); the broker redelivers them");
                }
                Err(_) => {}
            }
        }
    }
}

fn apply(window: &mut AckWindow, note: Note) -> Option<Frame> {
    match note {
        Note::Delivered(tag) => window.delivered(tag),
        Note::Done(tag) => window.done(tag, Instant::now()),
        Note::Requeue(tag) => return window.requeue(tag),
    }
    None
}

async fn send(channel: &lapin::Channel, frame: Frame) -> Result<(), lapin::Error> {
    match frame {
        Frame::AckUpTo(tag) => channel.basic_ack(tag, BasicAckOptions { multiple: true }).await,
        Frame::Ack(tag) => channel.basic_ack(tag, BasicAckOptions { multiple: false }).await,
        Frame::Requeue(tag) => {
            channel.basic_nack(tag, BasicNackOptions { multiple: false, requeue: true }).await
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::{AckWindow, Frame, HOLD};
    use std::time::Duration;
    use tokio::time::Instant;

    fn window(tags: std::ops::RangeInclusive<u64>) -> AckWindow {
        let mut window = AckWindow::default();
        for tag in tags {
            window.delivered(tag);
        }
        window
    }

    #[test]
    fn a_run_of_done_deliveries_is_one_multiple_ack() {
        let now = Instant::now();
        let mut window = window(1..=5);
        for tag in [3, 1, 2] {
            window.done(tag, now);
        }
        assert_eq!(window.due(now, HOLD), vec![Frame::AckUpTo(3)]);
        assert_eq!(window.due(now, HOLD), vec![], "nothing twice");
        assert_eq!(window.in_flight(), 2);
    }

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_in_flight() {
        let now = Instant::now();
        let mut window = window(1..=6);
        for tag in [2, 3, 5, 6] {
            window.done(tag, now);
        }
        assert_eq!(window.due(now, HOLD), vec![], "1 is in flight: 2 to 6 wait");
        window.done(1, now);
        assert_eq!(window.due(now, HOLD), vec![Frame::AckUpTo(3)], "4 is in flight");
        window.done(4, now);
        assert_eq!(window.due(now, HOLD), vec![Frame::AckUpTo(6)]);
    }

    #[test]
    fn done_deliveries_behind_a_slow_one_are_acked_alone_after_the_hold() {
        let start = Instant::now();
        let mut window = window(1..=4);
        window.done(2, start);
        window.done(4, start + Duration::from_millis(15));
        assert_eq!(window.next_deadline(HOLD), Some(start + HOLD));
        assert_eq!(window.due(start + HOLD - Duration::from_millis(1), HOLD), vec![]);
        assert_eq!(window.due(start + HOLD, HOLD), vec![Frame::Ack(2)], "4 has not waited long enough");
        assert_eq!(window.due(start + Duration::from_millis(35), HOLD), vec![Frame::Ack(4)]);
        assert_eq!(window.next_deadline(HOLD), None);
        // The slow one finishes: a multiple ack up to it covers only it,
        // since 2 and 4 are settled already and 3 is still in flight.
        window.done(1, start);
        assert_eq!(window.due(start + Duration::from_millis(40), HOLD), vec![Frame::AckUpTo(1)]);
        window.done(3, start);
        assert_eq!(window.due(start + Duration::from_millis(40), HOLD), vec![Frame::AckUpTo(3)]);
        assert_eq!(window.in_flight(), 0);
    }

    #[test]
    fn a_requeued_delivery_is_settled_alone_and_does_not_block_the_run() {
        let now = Instant::now();
        let mut window = window(1..=3);
        window.done(1, now);
        assert_eq!(window.requeue(2), Some(Frame::Requeue(2)));
        assert_eq!(window.requeue(2), None, "never settled twice");
        window.done(3, now);
        assert_eq!(window.due(now, HOLD), vec![Frame::AckUpTo(3)]);
    }

    #[test]
    fn a_zero_hold_acks_everything_done_and_leaves_what_is_in_flight() {
        let now = Instant::now();
        let mut window = window(1..=4);
        window.done(2, now);
        window.done(4, now);
        assert_eq!(window.due(now, Duration::ZERO), vec![Frame::Ack(2), Frame::Ack(4)]);
        assert_eq!(window.in_flight(), 2);
    }

    /// Random interleavings: every delivery is settled exactly once, and no
    /// frame ever covers a delivery that was in flight when it was sent.
    #[test]
    fn any_completion_order_settles_each_delivery_once_and_never_early() {
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for round in 0..200 {
            let start = Instant::now();
            let count = 1 + next(60);
            let mut window = AckWindow::default();
            let mut delivered = 0u64;
            let mut in_flight: Vec<u64> = Vec::new();
            // Per tag: settled at the broker yet?
            let mut settled = vec![false; count as usize + 1];
            let mut clock = start;
            while delivered < count || !in_flight.is_empty() {
                clock += Duration::from_millis(next(8));
                if delivered < count && (in_flight.is_empty() || next(2) == 0) {
                    delivered += 1;
                    window.delivered(delivered);
                    in_flight.push(delivered);
                } else {
                    let tag = in_flight.swap_remove(next(in_flight.len() as u64) as usize);
                    if next(10) == 0 {
                        let frame = window.requeue(tag);
                        assert_eq!(frame, Some(Frame::Requeue(tag)), "round {round}");
                        settled[tag as usize] = true;
                    } else {
                        window.done(tag, clock);
                    }
                }
                for frame in window.due(clock, HOLD) {
                    settle_checked(frame, &mut settled, &in_flight, round);
                }
            }
            for frame in window.due(clock, Duration::ZERO) {
                settle_checked(frame, &mut settled, &in_flight, round);
            }
            assert!(settled[1..].iter().all(|s| *s), "round {round}: every delivery settled");
            assert_eq!(window.in_flight(), 0);
        }
    }

    /// Marks what `frame` settles at the broker, failing if it names a
    /// delivery settled already or covers one still in flight.
    fn settle_checked(frame: Frame, settled: &mut [bool], in_flight: &[u64], round: u32) {
        let (covered, named) = match frame {
            Frame::AckUpTo(up_to) => (1..=up_to, up_to),
            Frame::Ack(tag) => (tag..=tag, tag),
            Frame::Requeue(_) => unreachable!("due() never requeues"),
        };
        assert!(!settled[named as usize], "round {round}: {named} acked twice");
        for tag in covered {
            assert!(!in_flight.contains(&tag), "round {round}: {tag} acked while in flight");
            settled[tag as usize] = true;
        }
    }
}
