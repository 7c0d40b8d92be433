//! Lanes: the threads that serve connections, one per session, each with its own
//! current-thread reactor. Each lane accepts on the listening socket and serves what it
//! accepted (`server.rs`): one thread reads a connection's requests, asks the token (inline on a
//! fast token, see `token/pool.rs`) and writes the answers, so a request crosses no thread
//! between the socket and the token and back. A lane that would serve two connections more than
//! the least busy one hands the new one over instead, so that a burst of connections accepted by
//! whichever lane woke first is still spread over every session.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use tokio::sync::mpsc;

/// What a lane is handed: a closure that makes the future on the lane (so that the sockets it
/// makes register with the lane's reactor).
type Task = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The lanes' threads; stopped and joined when dropped, once every [`Handles`] clone is gone.
pub struct Lanes {
    handles: Option<Handles>,
    threads: Vec<JoinHandle<()>>,
}

/// The way to hand a lane work, and how many connections each serves; cheap to clone.
#[derive(Clone)]
pub struct Handles(Arc<Vec<Handle>>);

struct Handle {
    tasks: mpsc::UnboundedSender<Task>,
    /// Connections it serves now.
    load: Arc<AtomicUsize>,
}

/// Counts a connection on its lane while it lives.
pub struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lanes {
    /// Starts `n` lanes.
    pub fn start(n: usize) -> std::io::Result<Lanes> {
        let (mut handles, mut threads) = (Vec::new(), Vec::new());
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
            handles.push(Handle { tasks, load: Arc::default() });
            threads.push(thread);
        }
        Ok(Lanes { handles: Some(Handles(Arc::new(handles))), threads })
    }

    /// A handle to give the lanes work.
    pub fn handles(&self) -> Handles {
        self.handles.clone().unwrap_or_else(|| Handles(Arc::new(Vec::new())))
    }
}

impl Handles {
    /// How many lanes there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Runs the future `make` builds on lane `lane`.
    pub fn spawn_on<F, Fut>(&self, lane: usize, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task: Task = Box::new(move || Box::pin(make()));
        if let Some(handle) = self.0.get(lane) {
            // A lane that has stopped drops the task.
            let _ = handle.tasks.send(task);
        }
    }

    /// Where a connection lane `me` accepted should go: `me`, unless another lane serves fewer
    /// (taking it, `me` would serve two more). Counted on that lane until the returned [`Load`]
    /// is dropped.
    pub fn place(&self, me: usize) -> (usize, Load) {
        let load = |i: usize| self.0.get(i).map_or(usize::MAX, |h| h.load.load(Ordering::Relaxed));
        let least = (0..self.len()).min_by_key(|&i| load(i)).unwrap_or(me);
        let lane = if load(least) < load(me) { least } else { me };
        let counter = self.0.get(lane).map(|h| h.load.clone()).unwrap_or_default();
        counter.fetch_add(1, Ordering::Relaxed);
        (lane, Load(counter))
    }
}

impl Lanes {
    /// Lets the lanes go without waiting for them: those with nothing left to do stop, and one
    /// stuck in a token call that never returns is left to end with the process.
    pub fn abandon(mut self) {
        drop(self.handles.take());
        // A JoinHandle dropped detaches its thread.
        self.threads.clear();
    }
}

impl Drop for Lanes {
    /// Stops each lane once what it was handed has been started (and every other handle has
    /// been dropped), and waits for its thread; the caller has let the connections finish first.
    fn drop(&mut self) {
        drop(self.handles.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_accepted_by_one_lane_are_spread_evenly() {
        let lanes = Lanes::start(2).expect("lanes");
        let handles = lanes.handles();
        // Lane 0 wakes first for every connection of a burst: it keeps one in two.
        let mut placed: Vec<(usize, Load)> = (0..5).map(|_| handles.place(0)).collect();
        let lanes_of = |placed: &[(usize, Load)]| placed.iter().map(|(lane, _)| *lane).collect::<Vec<_>>();
        assert_eq!(lanes_of(&placed), [0, 1, 0, 1, 0]);
        // Connections that end make room on their lane: the next ones go there, until it serves
        // as many as the others.
        placed.retain(|(lane, _)| *lane == 0);
        placed.extend((0..3).map(|_| handles.place(0)));
        assert_eq!(lanes_of(&placed), [0, 0, 0, 1, 1, 1]);
        // A lane that serves no more than the others keeps what it accepted.
        assert_eq!(handles.place(1).0, 1);
    }
}
