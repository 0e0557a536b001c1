//! Interfaces that go away and come back (a VLAN re-created, a USB NIC unplugged and plugged
//! in again): the kernel ends an attachment with its interface, so the agent notices the
//! interface gone, and attaches again when an interface of that name is back (a new index).

use std::collections::BTreeMap;

use super::attach::if_index;

pub enum Change {
    Gone,
    /// Back, with this index.
    Back(u32),
}

pub struct IfaceWatch {
    /// The index each watched interface had at the last look (None: absent).
    index: BTreeMap<String, Option<u32>>,
}

impl IfaceWatch {
    pub fn new(ifaces: &[String]) -> IfaceWatch {
        IfaceWatch {
            index: ifaces.iter().map(|i| (i.clone(), if_index(i))).collect(),
        }
    }

    /// What changed since the last look.
    pub fn changes(&mut self) -> Vec<(String, Change)> {
        let mut out = Vec::new();
        for (iface, last) in self.index.iter_mut() {
            let now = if_index(iface);
            match (*last, now) {
                (Some(_), None) => out.push((iface.clone(), Change::Gone)),
                (None, Some(i)) => out.push((iface.clone(), Change::Back(i))),
                // Deleted and re-created between two looks.
                (Some(a), Some(b)) if a != b => out.push((iface.clone(), Change::Back(b))),
                _ => {}
            }
            *last = now;
        }
        out
    }

    /// Forget the index of `iface` (a re-attach failed: try again at the next look).
    pub fn retry(&mut self, iface: &str) {
        if let Some(i) = self.index.get_mut(iface) {
            *i = None;
        }
    }
}
