//! Publishes waiting for a channel, and how they are grouped onto one.
//!
//! Under load, requests that arrive while every channel is busy wait here;
//! the next free channel takes the oldest one together with the others
//! heading for the same exchange and routing key, and pipelines them as one
//! group (one round trip, one multiple ack from the broker instead of one
//! confirm per channel). A group stands or falls together: any return or
//! nack fails every request in it, so which confirm lapin hands a return to
//! cannot matter (see the parent module). Requests with the same destination
//! are routed alike by the broker (an exchange routes on the routing key
//! and its bindings), so a return fails requests that would have failed
//! anyway, save for a binding that changes during the group's round trip.
//!
//! This module holds only the bookkeeping, free of I/O, so the grouping
//! rules are tested on their own.

use std::collections::VecDeque;

use lapin::BasicProperties;
use tokio::sync::oneshot;

use super::{Outgoing, PublishError};

/// Most messages pipelined in one group made of several requests. A single
/// request (a provider's batch) is never split, whatever its size.
pub(super) const MAX_GROUP_MESSAGES: usize = 128;

/// One message, owned: the request's caller may stop waiting (its future
/// dropped) while a channel publishes its messages.
#[derive(Debug)]
pub(super) struct OwnedMessage {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
}

impl OwnedMessage {
    fn borrowed(&self) -> Outgoing<'_> {
        Outgoing {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            body: &self.body,
            properties: self.properties.clone(),
        }
    }
}

/// One caller's messages (stored all or none) and where its answer goes.
#[derive(Debug)]
pub(super) struct Request {
    /// The exchange and routing key every message shares; `None` when they
    /// differ: such a request is always a group of its own.
    destination: Option<(String, String)>,
    messages: Vec<OwnedMessage>,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

impl Request {
    /// Copies `messages` into a request whose answer goes to `reply`.
    pub(super) fn new(messages: &[Outgoing<'_>], reply: oneshot::Sender<Result<(), PublishError>>) -> Self {
        let destination = match messages.split_first() {
            Some((first, rest))
                if rest
                    .iter()
                    .all(|m| m.exchange == first.exchange && m.routing_key == first.routing_key) =>
            {
                Some((first.exchange.to_owned(), first.routing_key.to_owned()))
            }
            _ => None,
        };
        let messages = messages
            .iter()
            .map(|m| OwnedMessage {
                exchange: m.exchange.to_owned(),
                routing_key: m.routing_key.to_owned(),
                body: m.body.to_vec(),
                properties: m.properties.clone(),
            })
            .collect();
        Self { destination, messages, reply }
    }

    /// The caller stopped waiting: publishing its messages would store what
    /// nobody will answer for.
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Requests published together on one channel.
#[derive(Debug, Default)]
pub(super) struct Group {
    requests: Vec<Request>,
}

impl Group {
    /// Every message of every request, in arrival order.
    pub(super) fn messages(&self) -> Vec<Outgoing<'_>> {
        self.requests.iter().flat_map(|r| r.messages.iter().map(OwnedMessage::borrowed)).collect()
    }

    /// Sends the group's one result to every request in it.
    pub(super) fn answer(self, result: &Result<(), PublishError>) {
        for request in self.requests {
            // A caller that stopped waiting has nobody to tell.
            let _ = request.reply.send(result.clone());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.requests.len()
    }
}

/// Waiting requests and the channels (runners) working on them.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    requests: VecDeque<Request>,
    runners: usize,
}

impl Waiting {
    /// Queues `request`; true when the caller must start a runner because
    /// fewer than `max_runners` are at work (decided under the same lock as
    /// [`Waiting::next_group`], so no request is left without a runner).
    pub(super) fn push(&mut self, request: Request, max_runners: usize) -> bool {
        self.requests.push_back(request);
        if self.runners < max_runners {
            self.runners += 1;
            true
        } else {
            false
        }
    }

    /// The oldest live request and the others with its destination (up to
    /// [`MAX_GROUP_MESSAGES`]); `None` when nothing waits, in which case
    /// the calling runner is counted out and must stop.
    pub(super) fn next_group(&mut self) -> Option<Group> {
        let first = loop {
            match self.requests.pop_front() {
                Some(request) if request.abandoned() => continue,
                Some(request) => break request,
                None => {
                    self.runners = self.runners.saturating_sub(1);
                    return None;
                }
            }
        };
        let mut size = first.messages.len();
        let Some(destination) = first.destination.clone() else {
            return Some(Group { requests: vec![first] });
        };
        let mut requests = vec![first];
        let mut kept = VecDeque::with_capacity(self.requests.len());
        while let Some(request) = self.requests.pop_front() {
            if request.abandoned() {
                continue;
            }
            let joins = request.destination.as_ref() == Some(&destination)
                && size + request.messages.len() <= MAX_GROUP_MESSAGES;
            if joins {
                size += request.messages.len();
                requests.push(request);
            } else {
                kept.push_back(request);
            }
        }
        self.requests = kept;
        Some(Group { requests })
    }

    /// A runner ended without asking for its next group (it panicked).
    pub(super) fn runner_lost(&mut self) {
        self.runners = self.runners.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(exchange: &str, keys: &[&str]) -> (Request, oneshot::Receiver<Result<(), PublishError>>) {
        let messages: Vec<Outgoing<'_>> = keys
            .iter()
            .map(|key| Outgoing {
                exchange,
                routing_key: key,
                body: b"{}",
                properties: BasicProperties::default(),
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        (Request::new(&messages, tx), rx)
    }

    #[test]
    fn requests_for_one_destination_share_a_group_and_others_wait() {
        let mut waiting = Waiting::default();
        let (a, _ra) = request("dlr", &["receipt"]);
        let (b, _rb) = request("dlr", &["other"]);
        let (c, _rc) = request("dlr", &["receipt"]);
        assert!(waiting.push(a, 1), "the first request starts a runner");
        assert!(!waiting.push(b, 1), "one runner is at work already");
        assert!(!waiting.push(c, 1));
        let group = waiting.next_group().expect("a group");
        assert_eq!(group.len(), 2, "a and c share a destination");
        assert_eq!(group.messages().len(), 2);
        let group = waiting.next_group().expect("b waits for the next round");
        assert_eq!(group.messages()[0].routing_key, "other");
        assert!(waiting.next_group().is_none());
        assert_eq!(waiting.runners, 0, "the runner that found nothing is counted out");
    }

    #[test]
    fn a_request_with_mixed_destinations_is_a_group_of_its_own() {
        let mut waiting = Waiting::default();
        let (mixed, _r1) = request("dlr", &["a", "b"]);
        let (a, _r2) = request("dlr", &["a"]);
        waiting.push(mixed, 1);
        waiting.push(a, 1);
        assert_eq!(waiting.next_group().expect("mixed").len(), 1);
        assert_eq!(waiting.next_group().expect("a").len(), 1);
    }

    #[test]
    fn a_group_stops_growing_at_its_cap_but_never_splits_a_request() {
        let mut waiting = Waiting::default();
        let big: Vec<&str> = vec!["k"; MAX_GROUP_MESSAGES + 5];
        let (large, _r0) = request("dlr", &big);
        let (small, _r1) = request("dlr", &["k"]);
        waiting.push(large, 1);
        waiting.push(small, 1);
        let group = waiting.next_group().expect("the large request");
        assert_eq!(group.messages().len(), MAX_GROUP_MESSAGES + 5);
        assert_eq!(waiting.next_group().expect("then the small one").len(), 1);
    }

    #[test]
    fn an_abandoned_request_is_never_published() {
        let mut waiting = Waiting::default();
        let (gone, rx) = request("dlr", &["k"]);
        let (live, _r) = request("dlr", &["k"]);
        waiting.push(gone, 1);
        waiting.push(live, 1);
        drop(rx);
        let group = waiting.next_group().expect("the live one");
        assert_eq!(group.len(), 1);
        assert!(waiting.next_group().is_none());
    }

    #[test]
    fn every_request_of_a_group_gets_its_result() {
        let mut waiting = Waiting::default();
        let (a, mut ra) = request("dlr", &["k"]);
        let (b, mut rb) = request("dlr", &["k"]);
        waiting.push(a, 1);
        waiting.push(b, 1);
        waiting.next_group().expect("both").answer(&Err(PublishError::Nacked));
        assert!(matches!(ra.try_recv(), Ok(Err(PublishError::Nacked))));
        assert!(matches!(rb.try_recv(), Ok(Err(PublishError::Nacked))));
    }
}
