//! Group commit, the part every store shares: committers queue their changes, the store's one
//! writer takes every change waiting (up to [`MAX_GROUP`]) and makes them durable together,
//! then tells each committer how its own change went.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{Change, CommitFuture, StoreError};
use crate::metrics::Commits;

/// Most changes made durable together.
pub(crate) const MAX_GROUP: usize = 1024;
/// Changes waiting for the writer before committers wait for room.
const QUEUE: usize = 16 * 1024;

/// A change waiting for the writer, and whom to tell how it went.
struct Job {
    change: Change,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The committers' side of the queue.
pub(crate) struct Committer(mpsc::Sender<Job>);

/// The writer's side of the queue.
pub(crate) struct Groups {
    rx: mpsc::Receiver<Job>,
    commits: Arc<Commits>,
}

/// A new queue, whose groups are measured into `commits`.
pub(crate) fn queue(commits: Arc<Commits>) -> (Committer, Groups) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Committer(tx), Groups { rx, commits })
}

impl Committer {
    /// Queues `change` and resolves once the writer made it durable or refused it.
    pub(crate) fn commit(&self, change: Change) -> CommitFuture {
        let queue = self.0.clone();
        Box::pin(async move {
            if change.is_empty() {
                return Ok(());
            }
            let (done, result) = oneshot::channel();
            queue
                .send(Job { change, done })
                .await
                .map_err(|_| StoreError::Closed)?;
            result.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// Takes no more changes: the writer ends once it has written those queued.
    pub(crate) fn close(&mut self) {
        let (closed, _) = mpsc::channel(1);
        self.0 = closed;
    }
}

/// The changes the writer took together.
pub(crate) struct Group {
    jobs: Vec<Job>,
    taken: Instant,
    commits: Arc<Commits>,
}

impl Group {
    /// The changes, in the order they were queued.
    pub(crate) fn changes(&self) -> impl Iterator<Item = &Change> {
        self.jobs.iter().map(|job| &job.change)
    }

    /// How many changes.
    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Tells each committer how its change went (`results` in the order of [`Group::changes`]).
    pub(crate) fn finish(self, results: Vec<Result<(), StoreError>>) {
        self.commits.sizes.observe(self.jobs.len() as f64);
        self.commits
            .seconds
            .observe(self.taken.elapsed().as_secs_f64());
        for (job, result) in self.jobs.into_iter().zip(results) {
            let _ = job.done.send(result);
        }
    }
}

impl Groups {
    /// The next group, from async code: `None` once every committer is gone.
    pub(crate) async fn next(&mut self) -> Option<Group> {
        let first = self.rx.recv().await?;
        Some(self.fill(first))
    }

    /// The next group, from the writer's own thread.
    pub(crate) fn blocking_next(&mut self) -> Option<Group> {
        let first = self.rx.blocking_recv()?;
        Some(self.fill(first))
    }

    /// `first` and every change waiting behind it, up to [`MAX_GROUP`].
    fn fill(&mut self, first: Job) -> Group {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match self.rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        Group {
            jobs,
            taken: Instant::now(),
            commits: self.commits.clone(),
        }
    }
}
