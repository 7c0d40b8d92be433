//! Lanes: the threads that serve connections, one per session, each with its own
//! current-thread reactor. The accept loop hands each new connection to the lane with the
//! fewest; from then on one thread reads the connection's requests, asks the token (inline on a
//! fast token, see `token/pool.rs`) and writes the answers, so a request crosses no thread
//! between the socket and the token and back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use tokio::sync::mpsc;

/// What a lane is handed: a closure that makes the connection's future on the lane (so that
/// its socket registers with the lane's reactor).
type Task = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The lanes; stopped and joined when dropped.
pub struct Lanes {
    lanes: Vec<Lane>,
}

struct Lane {
    tasks: Option<mpsc::UnboundedSender<Task>>,
    thread: Option<JoinHandle<()>>,
    /// Connections it serves now.
    load: Arc<AtomicUsize>,
}

/// Counts a connection on its lane while it lives.
struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lanes {
    /// Starts `n` lanes.
    pub fn start(n: usize) -> std::io::Result<Lanes> {
        let mut lanes = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (tasks, mut incoming) = mpsc::unbounded_channel::<Task>();
            let thread = std::thread::Builder::new().name(format!("lane-{i}")).spawn(move || {
                runtime.block_on(async move {
                    while let Some(task) = incoming.recv().await {
                        tokio::spawn(task());
                    }
                });
            })?;
            lanes.push(Lane { tasks: Some(tasks), thread: Some(thread), load: Arc::default() });
        }
        Ok(Lanes { lanes })
    }

    /// Runs the future `make` builds on the lane that serves the fewest connections.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(lane) = self.lanes.iter().min_by_key(|lane| lane.load.load(Ordering::Relaxed)) else {
            return;
        };
        lane.load.fetch_add(1, Ordering::Relaxed);
        let load = Load(lane.load.clone());
        let task: Task = Box::new(move || {
            Box::pin(async move {
                let _load = load;
                make().await;
            })
        });
        if let Some(tasks) = &lane.tasks {
            // A lane that has stopped drops the task, and with it the connection.
            let _ = tasks.send(task);
        }
    }
}

impl Drop for Lanes {
    /// Stops each lane once what it was handed has been started, and waits for its thread; the
    /// caller has let the connections finish first.
    fn drop(&mut self) {
        for lane in &mut self.lanes {
            drop(lane.tasks.take());
        }
        for lane in &mut self.lanes {
            if let Some(thread) = lane.thread.take() {
                let _ = thread.join();
            }
        }
    }
}
