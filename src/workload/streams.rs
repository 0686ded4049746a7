//! Open Workload API streams per pod, bounded: one pod's streams cannot
//! use up what the agent has for everyone's (SPEC §6's isolation).

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;

use crate::appc::PodUuid;

/// At most this many open streams per pod.
pub const PER_POD: usize = 32;

#[derive(Default)]
pub struct StreamBudget {
    open: Mutex<HashMap<PodUuid, usize>>,
}

/// One open stream of a pod; the count drops with it.
pub struct StreamSlot {
    budget: Arc<StreamBudget>,
    pod: PodUuid,
}

impl StreamBudget {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A slot for one more stream of `pod`, or `ResourceExhausted`.
    pub fn open(self: &Arc<Self>, pod: PodUuid) -> Result<StreamSlot, tonic::Status> {
        let mut open = self.open.lock();
        let n = open.entry(pod).or_default();
        if *n >= PER_POD {
            return Err(tonic::Status::resource_exhausted(format!(
                "the pod holds {PER_POD} open Workload API streams"
            )));
        }
        *n += 1;
        Ok(StreamSlot {
            budget: self.clone(),
            pod,
        })
    }

    /// Streams `pod` holds open.
    #[cfg(test)]
    fn open_of(&self, pod: &PodUuid) -> usize {
        self.open.lock().get(pod).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.budget.open.lock();
        if let Some(n) = open.get_mut(&self.pod) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.pod);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_gets_its_streams_and_they_come_back() {
        let budget = StreamBudget::new();
        let a = PodUuid::parse("aaaaaaaa-a507-4694-aabf-edbe4fc5266f").unwrap();
        let b = PodUuid::parse("bbbbbbbb-a507-4694-aabf-edbe4fc5266f").unwrap();
        let mut held: Vec<_> = (0..PER_POD).map(|_| budget.open(a).unwrap()).collect();
        let refused = budget.open(a).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(budget.open(b).is_ok(), "another pod is unaffected");
        held.pop();
        assert_eq!(budget.open_of(&a), PER_POD - 1);
        assert!(budget.open(a).is_ok());
        drop(held);
        assert_eq!(budget.open_of(&a), 0);
    }
}
