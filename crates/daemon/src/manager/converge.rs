//! Persistent definitions and desired state: define / undefine / autostart, starting `auto`
//! definitions and meeting ensure rules when a parent appears, and reloading the policy
//! (an invalid policy never replaces the last good one).

use std::collections::BTreeMap;

use super::ops::{decision, defined_device};
use super::state::Manager;
use super::{Caller, Change, CreateRequest, DefineRequest, DeviceView};
use crate::store::{Definition, Meta, Start};
use vgpud_model::error::{Error, Result};
use vgpud_model::{MdevUuid, ParentName};
use vgpud_policy::{Action, EnsureAction};

impl Manager {
    /// Re-reads every definition (ours, mdevctl's, libvirt's) and republishes what changed.
    pub(super) fn load_definitions(&mut self) {
        let Some(store) = self.config.store.clone() else {
            return;
        };
        let listed = match store.list() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("cannot read the definitions: {e}");
                return;
            }
        };
        let mut by_uuid: BTreeMap<MdevUuid, Vec<(Definition, Option<Meta>)>> = BTreeMap::new();
        for (def, meta) in listed {
            by_uuid.entry(def.uuid).or_default().push((def, meta));
        }
        let touched: Vec<MdevUuid> = by_uuid
            .keys()
            .chain(self.definitions.keys())
            .copied()
            .collect();
        self.definitions = by_uuid;
        for u in touched {
            self.recompose(&u);
        }
        let skipped: Vec<String> = store
            .problems()
            .iter()
            .map(|p| format!("definition {} skipped: {}", p.path.display(), p.reason))
            .collect();
        if skipped != self.definition_problems {
            self.definition_problems = skipped;
            self.publish(Change::Problems(self.all_problems()));
        }
    }

    fn store(&self) -> Result<crate::store::Store> {
        self.config
            .store
            .clone()
            .ok_or_else(|| Error::Unsupported("this daemon has no definitions directory".into()))
    }

    pub(super) fn define(&mut self, caller: &Caller, req: DefineRequest) -> Result<DeviceView> {
        let store = self.store()?;
        let parent = self.parents.get(&req.parent);
        // A definition may name a parent that is not present (it starts when it appears); the
        // type is then taken as given.
        let type_id = match parent {
            Some(p) => p
                .types
                .iter()
                .find(|t| t.matches(&req.type_spec))
                .map(|t| t.id.clone())
                .ok_or_else(|| Error::UnknownType {
                    parent: req.parent.to_string(),
                    type_id: req.type_spec.clone(),
                })?,
            None => vgpud_model::TypeId::new(req.type_spec.clone())?,
        };
        decision(self.policy.decide(
            &caller.subject(),
            Action::ManageDefinitions,
            parent,
            Some(&type_id),
            caller.uid,
        ))?;
        let uuid = req.uuid.unwrap_or_else(MdevUuid::new_v4);
        let def = Definition {
            parent: req.parent.clone(),
            uuid,
            mdev_type: type_id,
            start: if req.autostart {
                Start::Auto
            } else {
                Start::Manual
            },
            attrs: req.attrs,
        };
        let owner = if caller.uid == Some(0) {
            None
        } else {
            caller.uid
        };
        let device = defined_device(&def);
        self.with_callouts(&device, crate::callouts::Action::Define, || {
            store.define(&def, &Meta::now(owner, caller.origin.clone()))
        })?;
        tracing::info!(caller = %caller.origin, %uuid, parent = %def.parent, "device defined");
        self.load_definitions();
        if def.start == Start::Auto && self.parents.contains_key(&def.parent) {
            self.appeared.push(def.parent.clone());
        }
        self.devices
            .get(&uuid)
            .cloned()
            .ok_or_else(|| Error::Failed(format!("definition of {uuid} vanished")))
    }

    fn owner_of_definition(&self, uuid: &MdevUuid) -> Result<(Definition, Option<u32>)> {
        let defs = self
            .definitions
            .get(uuid)
            .ok_or_else(|| Error::UnknownDevice(format!("{uuid} (no definition)")))?;
        let live_parent = self.live.get(uuid).map(|d| d.parent.clone());
        let (def, meta) = defs
            .iter()
            .find(|(d, _)| Some(&d.parent) == live_parent.as_ref())
            .or(defs.first())
            .cloned()
            .ok_or_else(|| Error::UnknownDevice(uuid.to_string()))?;
        Ok((def, meta.and_then(|m| m.owner_uid)))
    }

    /// The store and the definition of `uuid`, if `caller` may manage it.
    fn definition_to_manage(
        &self,
        caller: &Caller,
        uuid: &MdevUuid,
    ) -> Result<(crate::store::Store, Definition)> {
        let store = self.store()?;
        let (def, owner) = self.owner_of_definition(uuid)?;
        let parent = self.parents.get(&def.parent);
        decision(self.policy.decide(
            &caller.subject(),
            Action::ManageDefinitions,
            parent,
            Some(&def.mdev_type),
            owner,
        ))?;
        Ok((store, def))
    }

    pub(super) fn undefine(&mut self, caller: &Caller, uuid: &MdevUuid) -> Result<()> {
        let (store, def) = self.definition_to_manage(caller, uuid)?;
        let several = self.definitions.get(uuid).is_some_and(|d| d.len() > 1);
        let device = defined_device(&def);
        self.with_callouts(&device, crate::callouts::Action::Undefine, || {
            store.undefine(several.then_some(&def.parent), uuid)
        })?;
        tracing::info!(caller = %caller.origin, %uuid, "device undefined");
        self.load_definitions();
        Ok(())
    }

    pub(super) fn set_autostart(
        &mut self,
        caller: &Caller,
        uuid: &MdevUuid,
        on: bool,
    ) -> Result<()> {
        let (store, mut def) = self.definition_to_manage(caller, uuid)?;
        def.start = if on { Start::Auto } else { Start::Manual };
        let device = defined_device(&def);
        self.with_callouts(&device, crate::callouts::Action::Modify, || {
            store.update(&def)
        })?;
        self.load_definitions();
        Ok(())
    }

    pub(super) fn reload(&mut self, caller: &Caller) -> Result<String> {
        decision(
            self.policy
                .decide(&caller.subject(), Action::ReloadPolicy, None, None, None),
        )?;
        self.load_definitions();
        let Some(dir) = self.config.policy_dir.clone() else {
            return Ok(self.policy.summary());
        };
        match vgpud_policy::load_dir(&dir) {
            Ok(p) => {
                self.policy = p;
                tracing::info!("policy reloaded: {}", self.policy.summary());
                self.appeared.extend(self.parents.keys().cloned());
                Ok(self.policy.summary())
            }
            Err(diags) => {
                let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                tracing::error!(
                    "the new policy is invalid; keeping the last good one:\n{}",
                    text.join("\n")
                );
                Err(Error::InvalidArgument(format!(
                    "the policy was not reloaded (the last good one stays): {}",
                    text.join("; ")
                )))
            }
        }
    }

    /// For parents that appeared: start their `auto` definitions, then meet ensure rules.
    pub(super) fn converge_appeared(&mut self) {
        if self.appeared.is_empty() {
            return;
        }
        tracing::debug!(appeared = ?self.appeared, "converging");
        let mut appeared = std::mem::take(&mut self.appeared);
        appeared.sort();
        appeared.dedup();
        let busy: Vec<MdevUuid> = self.pending.values().filter_map(|p| p.uuid).collect();
        for parent in &appeared {
            let autostart: Vec<MdevUuid> = self
                .definitions
                .values()
                .flatten()
                .filter(|(d, _)| d.parent == *parent && d.start == Start::Auto)
                .map(|(d, _)| d.uuid)
                .filter(|u| !self.live.contains_key(u) && !busy.contains(u))
                .collect();
            for uuid in autostart {
                let (tx, rx) = self.internal_reply();
                self.start_defined(Caller::internal("autostart"), uuid, tx);
                self.report_later(rx, parent, format!("autostart of {uuid}"));
            }
        }
        self.meet_ensure_rules(&appeared);
        self.apply_scheduler();
    }

    fn meet_ensure_rules(&mut self, parents: &[ParentName]) {
        let present: Vec<_> = parents
            .iter()
            .filter_map(|p| self.parents.get(p).cloned())
            .collect();
        if present.is_empty() {
            return;
        }
        // Creates in flight count too, or two events in a row would create twice.
        let counts = self.ensure_counts();
        let mut problems: Vec<String> = self
            .problems
            .iter()
            .filter(|p| !parents.iter().any(|n| p.contains(n.as_str())))
            .cloned()
            .collect();
        let steps = self.policy.ensure_plan(&present, &counts);
        tracing::debug!(?parents, ?counts, ?steps, "ensure rules");
        for step in steps {
            match step.action {
                EnsureAction::Create { type_id, count } => {
                    for _ in 0..count {
                        let req = CreateRequest {
                            type_spec: type_id.to_string(),
                            parent: Some(step.parent.clone()),
                            ..CreateRequest::default()
                        };
                        let (tx, rx) = self.internal_reply();
                        self.start_create(
                            Caller::internal(format!("ensure:{}", step.rule)),
                            req,
                            tx,
                        );
                        self.report_later(rx, &step.parent, format!("ensure rule {}", step.rule));
                    }
                }
                EnsureAction::TypeAbsent { type_spec } => {
                    // A parent with no types yet is a vendor side still starting: retry it.
                    let _ = self.me.send(super::Completion::RetryFailed {
                        parent: step.parent.clone(),
                        what: format!("ensure rule {}", step.rule),
                        error: format!("the parent offers no type {type_spec:?} (yet)"),
                        may_pass: true,
                    });
                    problems.push(format!(
                        "ensure rule {}: parent {} offers no type {type_spec:?}",
                        step.rule, step.parent
                    ));
                }
                EnsureAction::NoCapacity { type_id, missing } => {
                    problems.push(format!(
                        "ensure rule {}: parent {} has no room for {missing} more {type_id}",
                        step.rule, step.parent
                    ));
                }
            }
        }
        for p in &problems {
            tracing::warn!("{p}");
        }
        if problems != self.problems {
            self.problems = problems;
            self.publish(Change::Problems(self.all_problems()));
        }
    }
}

impl Manager {
    /// Logs the outcome of work the daemon started on its own on `parent`, and tells the
    /// manager, which retries what failed because the vendor side was not ready.
    fn report_later(
        &self,
        rx: tokio::sync::oneshot::Receiver<Result<DeviceView>>,
        parent: &ParentName,
        what: String,
    ) {
        let me = self.me.clone();
        let parent = parent.clone();
        tokio::spawn(async move {
            let outcome = match rx.await {
                Ok(Ok(v)) => {
                    tracing::info!("{what} on {parent}: device {} created", v.uuid);
                    super::Completion::RetrySucceeded(parent)
                }
                Ok(Err(e)) => {
                    tracing::warn!("{what} on {parent} failed: {e}");
                    super::Completion::RetryFailed {
                        parent,
                        what,
                        may_pass: super::retry::retryable(&e),
                        error: e.to_string(),
                    }
                }
                Err(_) => return,
            };
            let _ = me.send(outcome);
        });
    }
}
