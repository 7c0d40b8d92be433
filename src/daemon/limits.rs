//! Connection slots per peer uid: at most `max` connections at once; a uid other than the
//! owner's gets at most a quarter of them, and all other uids together never so many that the
//! owner is left without one. A user the config admits can use the agent, not lock its owner
//! out of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The connection slots of one daemon.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    owner: u32,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    others: usize,
    per_uid: HashMap<u32, usize>,
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Slots {
    /// Slots for `max` connections of a daemon run by `owner`.
    pub fn new(max: usize, owner: u32) -> Arc<Slots> {
        Arc::new(Slots { max: max.max(1), owner, held: Mutex::new(Held::default()) })
    }

    /// What one uid other than the owner's may hold, and what the owner always has left.
    fn share(&self) -> usize {
        (self.max / 4).max(1)
    }

    /// A slot for a connection of `uid`, or `None` when it must be turned away.
    pub fn take(self: &Arc<Self>, uid: u32) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.total >= self.max {
            return None;
        }
        if uid != self.owner {
            let mine = held.per_uid.get(&uid).copied().unwrap_or(0);
            if mine >= self.share() || held.others + 1 > self.max - self.share() {
                return None;
            }
            held.others += 1;
            *held.per_uid.entry(uid).or_insert(0) += 1;
        }
        held.total += 1;
        Some(Slot { slots: self.clone(), uid })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.slots;
        let mut held = slots.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total = held.total.saturating_sub(1);
        if self.uid != slots.owner {
            held.others = held.others.saturating_sub(1);
            if let Some(count) = held.per_uid.get_mut(&self.uid) {
                *count -= 1;
                if *count == 0 {
                    held.per_uid.remove(&self.uid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_uid_gets_a_quarter_and_the_owner_always_has_room() {
        let slots = Slots::new(16, 1000);
        let theirs: Vec<Slot> = (0..4).map(|_| slots.take(1001).unwrap()).collect();
        assert!(slots.take(1001).is_none(), "a fifth of 16 for uid 1001");
        // Three uids of four slots each: twelve, and the owner keeps four.
        let more: Vec<Slot> = [1002, 1002, 1002, 1002, 1003, 1003, 1003, 1003]
            .into_iter()
            .map(|uid| slots.take(uid).unwrap())
            .collect();
        assert!(slots.take(1004).is_none(), "other uids together leave the owner a quarter");
        let mine: Vec<Slot> = (0..4).map(|_| slots.take(1000).unwrap()).collect();
        assert!(slots.take(1000).is_none(), "all 16 are taken");
        drop(mine);
        drop(theirs);
        assert!(slots.take(1001).is_some(), "slots come back when connections end");
        drop(more);
        let all: Vec<Slot> = (0..16).map(|_| slots.take(1000).unwrap()).collect();
        assert_eq!(all.len(), 16);
    }

    #[test]
    fn one_slot_is_the_owners() {
        let slots = Slots::new(1, 1000);
        assert!(slots.take(1001).is_none());
        assert!(slots.take(1000).is_some());
    }
}
