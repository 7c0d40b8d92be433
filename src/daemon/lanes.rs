//! Lanes: the threads that serve connections, one per session, each with its own
//! current-thread reactor. Each lane accepts on the listening socket and serves what it
//! accepted (`server.rs`): one thread reads a connection's requests, asks the token (inline on a
//! fast token, see `token/pool.rs`) and writes the answers, so a request crosses no thread
//! between the socket and the token and back.

use std::future::Future;
use std::pin::Pin;
use std::thread::JoinHandle;
use tokio::sync::mpsc;

/// What a lane is handed: a closure that makes the future on the lane (so that the sockets it
/// makes register with the lane's reactor).
type Task = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The lanes; stopped and joined when dropped.
pub struct Lanes {
    lanes: Vec<Lane>,
}

struct Lane {
    tasks: Option<mpsc::UnboundedSender<Task>>,
    thread: Option<JoinHandle<()>>,
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
            lanes.push(Lane { tasks: Some(tasks), thread: Some(thread) });
        }
        Ok(Lanes { lanes })
    }

    /// How many lanes there are.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Runs the future `make` builds on lane `lane`.
    pub fn spawn_on<F, Fut>(&self, lane: usize, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task: Task = Box::new(move || Box::pin(make()));
        if let Some(tasks) = self.lanes.get(lane).and_then(|lane| lane.tasks.as_ref()) {
            // A lane that has stopped drops the task.
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
