//! The threads the decoder and the encoder hand blocks to.

use std::io;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

/// Threads that take jobs from one queue until it closes. Dropping this
/// closes the queue and waits for them, so no thread outlives the reader
/// or writer that started it; its owner must drop the channels the
/// threads send on first (declare this field last).
pub(super) struct Workers<J> {
    jobs: Option<SyncSender<J>>,
    threads: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static> Workers<J> {
    /// `n` threads that each run `work` on one job at a time.
    pub(super) fn start(n: usize, work: fn(J)) -> Self {
        let (tx, rx) = mpsc::sync_channel::<J>(n);
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..n)
            .map(|_| {
                let rx = rx.clone();
                thread::spawn(move || loop {
                    let job = crate::sync::lock(&rx).recv();
                    match job {
                        Ok(job) => work(job),
                        Err(_) => return,
                    }
                })
            })
            .collect();
        Workers {
            jobs: Some(tx),
            threads,
        }
    }

    /// Hands the job queue to a thread of its own, which is then the only
    /// one to send jobs; it is joined like the workers.
    pub(super) fn feed_from(&mut self, feeder: impl FnOnce(SyncSender<J>) + Send + 'static) {
        if let Some(jobs) = self.jobs.take() {
            self.threads.push(thread::spawn(move || feeder(jobs)));
        }
    }

    pub(super) fn send(&self, job: J) -> io::Result<()> {
        let stopped = || stopped("workers");
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }
}

impl<J> Drop for Workers<J> {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The error for a thread that went away mid-stream (it panicked).
pub(super) fn stopped(what: &str) -> io::Error {
    io::Error::other(format!("the bzip2 {what} stopped unexpectedly"))
}
