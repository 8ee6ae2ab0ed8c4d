//! Least-loaded agent per group.
//!
//! Invariants (numbered as in docs/native.md, "LoadIndex"):
//! L1 for every group G: `eligible[G]` holds exactly the pairs (load, id) of
//!    the agents that list G, are available and have load < capacity.
//! L2 `pick(G)` is the minimum of `eligible[G]`: smallest load, ties by id
//!    bytes (UTF-8/surrogatepass) ascending; it changes nothing.
//! L3 load never goes below 0; only acquire/force_acquire/release change it;
//!    upsert keeps it.
//! L4 a group record exists iff at least one agent lists it (no growth from
//!    churn of group names).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use hashbrown::HashMap;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::keys::{bool_arg, decode_surrogatepass, i64_arg, str_id, str_id_lenient};

struct Id {
    bytes: Box<[u8]>,
    py: Py<PyString>,
}

/// Shared agent id, ordered by its bytes.
#[derive(Clone)]
struct IdRef(Arc<Id>);

impl PartialEq for IdRef {
    fn eq(&self, o: &Self) -> bool {
        self.0.bytes == o.0.bytes
    }
}
impl Eq for IdRef {}
impl PartialOrd for IdRef {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for IdRef {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.bytes.cmp(&o.0.bytes)
    }
}

struct Agent {
    id: IdRef,
    groups: Vec<u32>,
    capacity: u64,
    load: u64,
    available: bool,
}

impl Agent {
    fn eligible(&self) -> bool {
        self.available && self.load < self.capacity
    }
}

struct Group {
    name: Box<[u8]>,
    members: usize,
    eligible: BTreeSet<(u64, IdRef)>,
}

#[derive(Default)]
struct Groups {
    ids: HashMap<Box<[u8]>, u32>,
    slots: Vec<Option<Group>>,
    free: Vec<u32>,
}

impl Groups {
    fn intern(&mut self, name: &[u8]) -> u32 {
        if let Some(&g) = self.ids.get(name) {
            if let Some(grp) = self.slots[g as usize].as_mut() {
                grp.members += 1;
            }
            return g;
        }
        let grp = Group {
            name: name.into(),
            members: 1,
            eligible: BTreeSet::new(),
        };
        let g = match self.free.pop() {
            Some(g) => {
                self.slots[g as usize] = Some(grp);
                g
            }
            None => {
                self.slots.push(Some(grp));
                (self.slots.len() - 1) as u32
            }
        };
        self.ids.insert(name.into(), g);
        g
    }

    fn release(&mut self, g: u32) {
        let drop_it = match self.slots[g as usize].as_mut() {
            Some(grp) => {
                grp.members -= 1;
                grp.members == 0
            }
            None => false,
        };
        if drop_it {
            if let Some(grp) = self.slots[g as usize].take() {
                self.ids.remove(&grp.name);
            }
            self.free.push(g);
        }
    }

    fn set(&mut self, g: u32) -> Option<&mut BTreeSet<(u64, IdRef)>> {
        self.slots
            .get_mut(g as usize)?
            .as_mut()
            .map(|grp| &mut grp.eligible)
    }

    /// Remove the agent's entries from its groups (if it was eligible).
    fn detach(&mut self, a: &Agent) {
        if a.eligible() {
            for &g in &a.groups {
                if let Some(s) = self.set(g) {
                    s.remove(&(a.load, a.id.clone()));
                }
            }
        }
    }

    /// Insert the agent's entries into its groups (if it is eligible).
    fn attach(&mut self, a: &Agent) {
        if a.eligible() {
            for &g in &a.groups {
                if let Some(s) = self.set(g) {
                    s.insert((a.load, a.id.clone()));
                }
            }
        }
    }
}

/// LoadIndex(): least-loaded available agent with room, per group.
#[pyclass(module = "chatgw_native")]
#[derive(Default)]
pub struct LoadIndex {
    agents: HashMap<Box<[u8]>, Agent>,
    groups: Groups,
}

fn key_error(agent: &Bound<'_, PyAny>) -> PyErr {
    PyKeyError::new_err(agent.clone().unbind())
}

fn group_list(groups: &Bound<'_, PyAny>) -> PyResult<Vec<Box<[u8]>>> {
    if groups.is_instance_of::<PyString>() || groups.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "groups must be an iterable of str, not a str/bytes",
        ));
    }
    let mut out = Vec::new();
    for item in groups.try_iter()? {
        out.push(str_id(&item?, "group")?.as_bytes().into());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl LoadIndex {
    /// Apply `f` to an agent while keeping its group entries in sync (L1).
    fn update<R>(&mut self, id: &[u8], f: impl FnOnce(&mut Agent) -> R) -> Option<R> {
        let a = self.agents.get_mut(id)?;
        self.groups.detach(a);
        let r = f(a);
        self.groups.attach(a);
        Some(r)
    }
}

#[pymethods]
impl LoadIndex {
    #[new]
    fn new() -> Self {
        LoadIndex::default()
    }

    /// Create or update an agent; its current load is kept.
    fn upsert(
        slf: &Bound<'_, Self>,
        agent: &Bound<'_, PyAny>,
        groups: &Bound<'_, PyAny>,
        capacity: &Bound<'_, PyAny>,
        available: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let id: Box<[u8]> = str_id(agent, "agent")?.as_bytes().into();
        let names = group_list(groups)?;
        let capacity = i64_arg(capacity)?;
        if capacity < 0 {
            return Err(PyValueError::new_err("capacity must be >= 0"));
        }
        let available = bool_arg(available, "available")?;
        let py_id = decode_surrogatepass(slf.py(), &id)?.unbind();
        let mut guard = slf.try_borrow_mut()?;
        let this = &mut *guard;
        let new_groups: Vec<u32> = names.iter().map(|n| this.groups.intern(n)).collect();
        if let Some(a) = this.agents.get_mut(&id) {
            this.groups.detach(a);
            let old = std::mem::replace(&mut a.groups, new_groups);
            for g in old {
                this.groups.release(g);
            }
            a.capacity = capacity as u64;
            a.available = available;
            this.groups.attach(a);
        } else {
            let a = Agent {
                id: IdRef(Arc::new(Id {
                    bytes: id.clone(),
                    py: py_id,
                })),
                groups: new_groups,
                capacity: capacity as u64,
                load: 0,
                available,
            };
            this.groups.attach(&a);
            this.agents.insert(id, a);
        }
        Ok(())
    }

    /// Forget an agent (no-op if absent).
    fn remove(slf: &Bound<'_, Self>, agent: &Bound<'_, PyAny>) -> PyResult<()> {
        let id = str_id(agent, "agent")?;
        let id = id.as_bytes();
        let mut guard = slf.try_borrow_mut()?;
        let this = &mut *guard;
        if let Some(a) = this.agents.remove(id) {
            this.groups.detach(&a);
            for &g in &a.groups {
                this.groups.release(g);
            }
        }
        Ok(())
    }

    /// Mark an agent (un)available; KeyError if absent.
    fn set_available(
        slf: &Bound<'_, Self>,
        agent: &Bound<'_, PyAny>,
        available: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let id = str_id(agent, "agent")?;
        let id = id.as_bytes();
        let available = bool_arg(available, "available")?;
        let mut this = slf.try_borrow_mut()?;
        this.update(id, |a| a.available = available)
            .ok_or_else(|| key_error(agent))
    }

    /// Least-loaded eligible agent of the group (ties: id ascending), or None.
    fn pick(slf: &Bound<'_, Self>, group: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyString>>> {
        let name = str_id(group, "group")?;
        let py = slf.py();
        let this = slf.try_borrow()?;
        let Some(&g) = this.groups.ids.get(name.as_bytes()) else {
            return Ok(None);
        };
        let best = this.groups.slots[g as usize]
            .as_ref()
            .and_then(|grp| grp.eligible.first())
            .map(|(_, id)| id.0.py.clone_ref(py));
        Ok(best)
    }

    /// Take one unit of load if the agent is available and has room.
    fn acquire(slf: &Bound<'_, Self>, agent: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = str_id(agent, "agent")?;
        let id = id.as_bytes();
        let mut this = slf.try_borrow_mut()?;
        let ok = match this.agents.get(id) {
            Some(a) => a.eligible(),
            None => false,
        };
        if ok {
            this.update(id, |a| a.load += 1);
        }
        Ok(ok)
    }

    /// Take one unit of load unconditionally (state restore); KeyError if absent.
    fn force_acquire(slf: &Bound<'_, Self>, agent: &Bound<'_, PyAny>) -> PyResult<()> {
        let id = str_id(agent, "agent")?;
        let id = id.as_bytes();
        let mut this = slf.try_borrow_mut()?;
        this.update(id, |a| a.load = a.load.saturating_add(1))
            .ok_or_else(|| key_error(agent))
    }

    /// Give back one unit of load (never below 0; no-op if absent).
    fn release(slf: &Bound<'_, Self>, agent: &Bound<'_, PyAny>) -> PyResult<()> {
        let id = str_id(agent, "agent")?;
        let id = id.as_bytes();
        let mut this = slf.try_borrow_mut()?;
        this.update(id, |a| a.load = a.load.saturating_sub(1));
        Ok(())
    }

    fn load(slf: &Bound<'_, Self>, agent: &Bound<'_, PyAny>) -> PyResult<u64> {
        let id = str_id(agent, "agent")?;
        let id = id.as_bytes();
        let this = slf.try_borrow()?;
        this.agents
            .get(id)
            .map(|a| a.load)
            .ok_or_else(|| key_error(agent))
    }

    fn capacity(slf: &Bound<'_, Self>, agent: &Bound<'_, PyAny>) -> PyResult<u64> {
        let id = str_id(agent, "agent")?;
        let id = id.as_bytes();
        let this = slf.try_borrow()?;
        this.agents
            .get(id)
            .map(|a| a.capacity)
            .ok_or_else(|| key_error(agent))
    }

    fn is_available(slf: &Bound<'_, Self>, agent: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = str_id(agent, "agent")?;
        let id = id.as_bytes();
        let this = slf.try_borrow()?;
        this.agents
            .get(id)
            .map(|a| a.available)
            .ok_or_else(|| key_error(agent))
    }

    fn __len__(&self) -> usize {
        self.agents.len()
    }

    fn __contains__(slf: &Bound<'_, Self>, agent: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Some(id) = str_id_lenient(agent) else {
            return Ok(false);
        };
        Ok(slf.try_borrow()?.agents.contains_key(id.as_bytes()))
    }

    /// Test hook: number of live group records (L4).
    fn _group_count(&self) -> usize {
        self.groups.ids.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "chatgw_native.LoadIndex(agents={}, groups={})",
            self.agents.len(),
            self.groups.ids.len()
        )
    }
}
