//! What a delivery given back to the queue had already done.
//!
//! A delivery is requeued (nack with requeue) only when its retry or park
//! copy could not be published for the whole settle patience. A requeue
//! returns the message exactly as it was: the handlers that succeeded on
//! this attempt are not in its headers, and its redelivery would run them
//! again (a second webhook call, a second event on the topic exchange).
//! The broker cannot be told, so this process remembers it, keyed by the
//! event id (the message id), and the redelivery merges it back. A
//! redelivery to another worker process runs those handlers again; every
//! handler must tolerate that anyway (at-least-once), this only keeps the
//! common case, one process and a broker that refused our publishes for a
//! while, free of duplicates.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::envelope::Progress;

/// Entries kept at most; the oldest is forgotten first. A requeue happens
/// after minutes of broker trouble, so this is far above what one process
/// requeues (at most its prefetch per patience period).
const CAPACITY: usize = 10_000;

/// Bounded memory of requeued deliveries' progress. Cheap to clone.
#[derive(Clone, Default)]
pub struct RequeueMemory {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    progress: HashMap<String, Progress>,
    order: VecDeque<String>,
}

impl RequeueMemory {
    /// Remembers `progress` for the message `id` that is being requeued.
    pub fn remember(&self, id: &str, progress: Progress) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.progress.insert(id.to_owned(), progress).is_none() {
            inner.order.push_back(id.to_owned());
        }
        while inner.order.len() > CAPACITY {
            if let Some(oldest) = inner.order.pop_front() {
                inner.progress.remove(&oldest);
            }
        }
    }

    /// Takes what was remembered for message `id`, if anything.
    pub fn take(&self, id: &str) -> Option<Progress> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let progress = inner.progress.remove(id)?;
        inner.order.retain(|entry| entry != id);
        Some(progress)
    }
}

/// The delivery's own progress plus what an earlier, requeued attempt of
/// it had done: the later attempt number, every handler done by either.
pub fn merged(mut progress: Progress, earlier: Progress) -> Progress {
    progress.attempt = progress.attempt.max(earlier.attempt);
    for handler in earlier.done {
        if !progress.done.contains(&handler) {
            progress.done.push(handler);
        }
    }
    progress
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::HandlerKind;

    #[test]
    fn a_remembered_progress_is_taken_once() {
        let memory = RequeueMemory::default();
        memory.remember("e1", Progress { attempt: 2, done: vec![HandlerKind::Amqp.into()] });
        assert_eq!(memory.take("e1"), Some(Progress { attempt: 2, done: vec![HandlerKind::Amqp.into()] }));
        assert_eq!(memory.take("e1"), None);
    }

    #[test]
    fn the_oldest_entries_are_forgotten_past_the_capacity() {
        let memory = RequeueMemory::default();
        for n in 0..CAPACITY + 5 {
            memory.remember(&format!("e{n}"), Progress { attempt: 1, done: vec![] });
        }
        assert_eq!(memory.take("e0"), None);
        assert!(memory.take(&format!("e{}", CAPACITY + 4)).is_some());
    }

    #[test]
    fn merging_keeps_every_done_handler_once_and_the_later_attempt() {
        let own = Progress { attempt: 1, done: vec![HandlerKind::Postgres.into()] };
        let earlier =
            Progress { attempt: 3, done: vec![HandlerKind::Postgres.into(), HandlerKind::Amqp.into()] };
        assert_eq!(
            merged(own, earlier),
            Progress { attempt: 3, done: vec![HandlerKind::Postgres.into(), HandlerKind::Amqp.into()] }
        );
    }
}
