//! Capacity: what a type can still take from its parent's pool, and the bookkeeping when an
//! instance takes or gives back its share.

use super::{Kernel, Parent, Pool, Role};
use crate::profile::TypeSpec;

impl Kernel {
    pub fn available(&self, p: &Parent, ty: &TypeSpec) -> u64 {
        if p.role == Role::MdevParent && !p.registered() {
            return 0;
        }
        let pool = &self.pools[p.pool];
        if pool.one_type && !pool.types_in_use.is_empty() && !pool.types_in_use.contains_key(&ty.id)
        {
            return 0;
        }
        let mut n = (pool.capacity - pool.used) / ty.cost;
        if let Some(limit) = pool.per_parent_limit {
            n = n.min(u64::from(limit.saturating_sub(p.instances)));
        }
        if p.role == Role::VendorVf {
            n = if p.current_vgpu == 0 && p.driver.is_some() {
                n.min(1)
            } else {
                0
            };
        }
        n
    }

    pub(super) fn take_capacity(&mut self, parent: &str, type_id: &str) {
        let Some((instances, cost, pool)) = self.charge(parent, type_id) else {
            return;
        };
        *instances += 1;
        pool.used += cost;
        *pool.types_in_use.entry(type_id.to_owned()).or_default() += 1;
    }

    pub(super) fn release_capacity(&mut self, parent: &str, type_id: &str) {
        let Some((instances, cost, pool)) = self.charge(parent, type_id) else {
            return;
        };
        *instances = instances.saturating_sub(1);
        pool.used = pool.used.saturating_sub(cost);
        if let Some(n) = pool.types_in_use.get_mut(type_id) {
            *n -= 1;
            if *n == 0 {
                pool.types_in_use.remove(type_id);
            }
        }
    }

    /// What one device of `type_id` on `parent` counts against: the parent's instance count,
    /// the type's cost, and the parent's pool. `None` for an unknown parent.
    fn charge(&mut self, parent: &str, type_id: &str) -> Option<(&mut u32, u64, &mut Pool)> {
        let p = self.parents.get_mut(parent)?;
        let cost = p
            .types()
            .iter()
            .find(|t| t.id == type_id)
            .map_or(0, |t| t.cost);
        Some((&mut p.instances, cost, &mut self.pools[p.pool]))
    }

    /// Type ids the VF can take now (nvidia/creatable_vgpu_types).
    pub fn creatable<'a>(&self, p: &'a Parent) -> Vec<&'a TypeSpec> {
        p.types()
            .iter()
            .filter(|t| self.available(p, t) > 0)
            .collect()
    }
}
