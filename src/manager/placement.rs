//! Choosing where a device goes: resolve a type given by id or name, on a named parent or on
//! the parent with the most free capacity. Pure code over a snapshot of the parents.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::model::{Parent, ParentName, TypeId};

/// Creates already sent to the kernel and not yet answered, per (parent, type).
pub type InFlight = HashMap<(ParentName, TypeId), u32>;

/// Where a create goes: the parent and the type's id there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub parent: ParentName,
    pub type_id: TypeId,
}

/// Free instances of a type on a parent, net of in-flight creates on that parent.
/// Capacity is shared by all types of a parent, so every pending create there counts.
fn free(parent: &Parent, available: u32, in_flight: &InFlight) -> u32 {
    let pending: u32 = in_flight
        .iter()
        .filter(|((p, _), _)| *p == parent.name)
        .map(|(_, n)| *n)
        .sum();
    available.saturating_sub(pending)
}

/// Resolves `type_spec` (a type id or a type name) to a placement.
///
/// With a parent, its type is used even when `available_instances` reads 0: the count is
/// advisory and the kernel's answer is authoritative. Without one, the parent with the most
/// free instances wins (ties by name, so the choice is reproducible).
pub fn place(
    parents: &BTreeMap<ParentName, Parent>,
    type_spec: &str,
    parent: Option<&ParentName>,
    in_flight: &InFlight,
) -> Result<Placement> {
    if let Some(name) = parent {
        let p = parents
            .get(name)
            .ok_or_else(|| Error::UnknownParent(name.to_string()))?;
        let ty = p
            .types
            .iter()
            .find(|t| t.matches(type_spec))
            .ok_or_else(|| Error::UnknownType {
                parent: name.to_string(),
                type_id: type_spec.to_owned(),
            })?;
        return Ok(Placement {
            parent: name.clone(),
            type_id: ty.id.clone(),
        });
    }
    let mut offered = false;
    let mut best: Option<(u32, &ParentName, &TypeId)> = None;
    for p in parents.values() {
        for t in p.types.iter().filter(|t| t.matches(type_spec)) {
            offered = true;
            let n = free(p, t.available_instances, in_flight);
            if n > 0 && best.is_none_or(|(b, _, _)| n > b) {
                best = Some((n, &p.name, &t.id));
            }
        }
    }
    match best {
        Some((_, parent, type_id)) => Ok(Placement {
            parent: parent.clone(),
            type_id: type_id.clone(),
        }),
        None if offered => Err(Error::NoCapacityAnywhere(type_spec.to_owned())),
        None => Err(Error::NoSuchType(type_spec.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackendKind, MdevType};

    fn parent(name: &str, types: &[(&str, &str, u32)]) -> Parent {
        let pn = ParentName::new(name).unwrap();
        Parent {
            name: pn.clone(),
            sysfs_path: format!("/sys/devices/{name}").into(),
            backend: BackendKind::Mdev,
            pci: None,
            driver: None,
            numa_node: None,
            iommu_group: None,
            physfn: None,
            virtfns: vec![],
            types: types
                .iter()
                .map(|(id, n, a)| MdevType {
                    id: TypeId::new(*id).unwrap(),
                    name: Some((*n).to_owned()),
                    description: None,
                    device_api: "vfio-pci".into(),
                    available_instances: *a,
                    parent: pn.clone(),
                })
                .collect(),
        }
    }

    fn host(list: Vec<Parent>) -> BTreeMap<ParentName, Parent> {
        list.into_iter().map(|p| (p.name.clone(), p)).collect()
    }

    #[test]
    fn picks_the_parent_with_most_free_instances() {
        let h = host(vec![
            parent("0000:20:00.0", &[("nvidia-231", "GRID T4-2Q", 3)]),
            parent("0000:21:00.0", &[("nvidia-231", "GRID T4-2Q", 8)]),
        ]);
        let p = place(&h, "GRID T4-2Q", None, &InFlight::new()).unwrap();
        assert_eq!(p.parent.as_str(), "0000:21:00.0");
        assert_eq!(p.type_id.as_str(), "nvidia-231");
    }

    #[test]
    fn in_flight_creates_count_against_a_parent() {
        let h = host(vec![
            parent("a", &[("t-1", "T", 3)]),
            parent("b", &[("t-1", "T", 4)]),
        ]);
        let mut f = InFlight::new();
        f.insert(
            (ParentName::new("b").unwrap(), TypeId::new("t-1").unwrap()),
            2,
        );
        assert_eq!(place(&h, "t-1", None, &f).unwrap().parent.as_str(), "a");
    }

    #[test]
    fn ties_go_to_the_first_name() {
        let h = host(vec![
            parent("b", &[("t-1", "T", 2)]),
            parent("a", &[("t-1", "T", 2)]),
        ]);
        assert_eq!(
            place(&h, "T", None, &InFlight::new())
                .unwrap()
                .parent
                .as_str(),
            "a"
        );
    }

    #[test]
    fn unknown_type_is_not_found() {
        let h = host(vec![parent("a", &[("t-1", "T", 2)])]);
        assert!(matches!(
            place(&h, "GRID X", None, &InFlight::new()),
            Err(Error::NoSuchType(_))
        ));
    }

    #[test]
    fn full_everywhere_is_no_capacity() {
        let h = host(vec![parent("a", &[("t-1", "T", 0)])]);
        assert!(matches!(
            place(&h, "T", None, &InFlight::new()),
            Err(Error::NoCapacityAnywhere(_))
        ));
    }

    #[test]
    fn named_parent_is_tried_even_at_zero() {
        let h = host(vec![parent("a", &[("t-1", "T", 0)])]);
        let pn = ParentName::new("a").unwrap();
        assert_eq!(
            place(&h, "T", Some(&pn), &InFlight::new())
                .unwrap()
                .type_id
                .as_str(),
            "t-1"
        );
    }

    #[test]
    fn named_parent_must_exist_and_offer_the_type() {
        let h = host(vec![parent("a", &[("t-1", "T", 1)])]);
        let b = ParentName::new("b").unwrap();
        let a = ParentName::new("a").unwrap();
        assert!(matches!(
            place(&h, "T", Some(&b), &InFlight::new()),
            Err(Error::UnknownParent(_))
        ));
        assert!(matches!(
            place(&h, "U", Some(&a), &InFlight::new()),
            Err(Error::UnknownType { .. })
        ));
    }
}
