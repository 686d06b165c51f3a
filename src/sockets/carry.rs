//! The sockets across `graceexec upgrade`: every socket by fd number, and
//! which generation has which slot, the shares and the probe routes.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Entry, Sockets};
use crate::carry::Handed;
use crate::listen::{Listener, ListenerOut};
use crate::steer::pool::{Pool, PoolOut};
use crate::supervisor::GenId;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SocketsOut {
    entries: Vec<EntryOut>,
    slots: Vec<(GenId, u32)>,
    shares: Vec<(GenId, u32)>,
    probes: Vec<(u16, GenId)>,
    routed: Option<u32>,
    /// Whether the sockets go to systemd's store.
    #[serde(default)]
    store: bool,
    #[serde(default)]
    parked: bool,
    /// Absent from an older image: then as adopted, left alone.
    #[serde(default)]
    bound_here: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum EntryOut {
    Shared(ListenerOut),
    Steered { name: String, shown: String, pool: PoolOut },
}

impl Sockets {
    pub fn carry(&self, handed: &mut Handed) -> SocketsOut {
        let entries = self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Shared(l) => EntryOut::Shared(l.carry(handed)),
                Entry::Steered { name, shown, pool } => EntryOut::Steered {
                    name: name.clone(),
                    shown: shown.clone(),
                    pool: pool.carry(handed),
                },
            })
            .collect();
        SocketsOut {
            entries,
            slots: self.slots.iter().map(|(g, s)| (*g, *s)).collect(),
            shares: self.shares.clone(),
            probes: self.probes.iter().map(|(p, g)| (*p, *g)).collect(),
            routed: self.routed,
            store: self.store.is_some(),
            parked: self.parked,
            bound_here: self.bound_here,
        }
    }

    /// Every fd of `s`, all sockets.
    pub fn carried_fds(s: &SocketsOut) -> Vec<i32> {
        s.entries
            .iter()
            .flat_map(|e| match e {
                EntryOut::Shared(l) => vec![Listener::carried_fd(l)],
                EntryOut::Steered { pool, .. } => Pool::carried_fds(pool),
            })
            .collect()
    }

    pub fn adopt(s: SocketsOut) -> Result<Sockets> {
        let entries = s
            .entries
            .into_iter()
            .map(|e| {
                Ok(match e {
                    EntryOut::Shared(l) => Entry::Shared(Listener::adopt(l)?),
                    EntryOut::Steered { name, shown, pool } => {
                        Entry::Steered { name, shown, pool: Pool::adopt(pool)? }
                    }
                })
            })
            .collect::<Result<Vec<Entry>>>()?;
        Ok(Sockets {
            entries,
            slots: s.slots.into_iter().collect(),
            shares: s.shares,
            probes: s.probes.into_iter().collect::<BTreeMap<_, _>>(),
            routed: s.routed,
            store: if s.store { crate::fdstore::Store::from_env() } else { None },
            parked: s.parked,
            bound_here: s.bound_here,
        })
    }
}
