//! Group commit: events in flight at the same time are handed to a batcher
//! task that writes them together in one transaction and answers each
//! delivery only after that transaction committed.

use super::*;

/// An event waiting in the batcher, with the way to answer its delivery.
pub(super) struct Pending {
    pub(super) row: EventRow,
    pub(super) reply: oneshot::Sender<Result<(), HandlerError>>,
}

/// Collects events into batches and writes each batch on its own task, up
/// to one batch per pool connection at a time. While every connection is
/// busy, events pile up in the channel, so the next batch is larger: the
/// batch size follows the load without a long linger.
///
/// Ends when every handler (sender) is gone, after flushing what the
/// channel still holds; the flush tasks it started run to completion.
pub(super) async fn run_batcher(
    store: Arc<Store>,
    mut receiver: mpsc::Receiver<Pending>,
    batch_size: usize,
    linger: Duration,
    flushes: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = flushes.clone().acquire_owned().await else { return };
        let Some(first) = receiver.recv().await else { return };
        let mut batch = Vec::with_capacity(batch_size);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < batch_size {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(pending)) => batch.push(pending),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let (rows, replies): (Vec<EventRow>, Vec<_>) =
                batch.into_iter().map(|p| (p.row, p.reply)).unzip();
            let results = store.record_batch(&rows).await;
            drop(permit);
            for (reply, result) in replies.into_iter().zip(results) {
                // A dropped receiver is a delivery future that was
                // cancelled; the write stands and is idempotent.
                let _ = reply.send(result);
            }
        });
    }
}
