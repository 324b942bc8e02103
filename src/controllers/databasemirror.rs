//! DatabaseMirror as a [`Replicated`] store: PostgreSQL members, a
//! credentials Secret with three generated passwords, `-rw`/`-ro` Services.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::invalid::DeserializeGuard;
use super::members::{Replicated, SharedChildren, StoreStatus, Summary, policy, random_password, status};
use super::watch::{SharedWatch, Watches};
use crate::api::common::{DataDurability, FailoverSpec, PrimaryUpdate, ReplicationStatus};
use crate::api::databasemirror::Replication;
use crate::api::{DatabaseMirror, DatabaseMirrorStatus};
use crate::failover::Policy;
use crate::resources::BuildError;
use crate::resources::databasemirror::{
    Passwords, agent_credentials, agent_credentials_name, children, credentials, credentials_name,
};
use crate::resources::members::Blueprint;

impl StoreStatus for DatabaseMirrorStatus {
    fn replication(&self) -> &ReplicationStatus {
        &self.replication
    }

    fn replication_mut(&mut self) -> &mut ReplicationStatus {
        &mut self.replication
    }

    fn without_positions(&self) -> Self {
        let mut s = self.clone();
        s.max_lag_bytes = None;
        // The lag moves with every write, like positions.
        if let Some(backup) = &mut s.backup {
            backup.archive_lag_bytes = None;
            backup.archive_lag_seconds = None;
        }
        status::clear_positions(&mut s.replication);
        s
    }

    fn backup(&self) -> Option<&crate::api::backup::BackupStatus> {
        self.backup.as_ref()
    }
}

impl Replicated for DatabaseMirror {
    const CONTROLLER: &'static str = crate::resources::databasemirror::APP_NAME;
    const STATUS_RESOURCE: &'static str = "databasemirrors/status";
    type Status = DatabaseMirrorStatus;
    type Passwords = Passwords;

    fn backup_spec(&self) -> Option<&crate::api::backup::BackupSpec> {
        self.spec.backup.as_ref()
    }

    fn shared_watch(watches: &Watches) -> &SharedWatch<DeserializeGuard<Self>> {
        &watches.database_mirrors
    }

    fn current_status(&self) -> Option<&DatabaseMirrorStatus> {
        self.status.as_ref()
    }

    fn status(&self, replication: ReplicationStatus, summary: Summary) -> DatabaseMirrorStatus {
        DatabaseMirrorStatus {
            replication,
            max_lag_bytes: summary.max_lag_bytes,
            equal_spec: summary.equal_spec,
            credentials_secret: Some(credentials_name(self)),
            backup: summary.backup,
        }
    }

    fn blueprint(&self) -> Result<Blueprint, BuildError> {
        crate::resources::databasemirror::blueprint(self)
    }

    fn shared_children(&self, blueprint: &Blueprint) -> SharedChildren {
        let c = children(self, blueprint);
        SharedChildren {
            services: vec![c.read_write, c.read_only],
            budgets: vec![c.primary_budget, c.mirror_budget],
            config_maps: vec![c.config],
        }
    }

    fn failover(&self) -> &FailoverSpec {
        &self.spec.failover
    }

    fn update_strategy(&self) -> PrimaryUpdate {
        self.spec.update_strategy.primary
    }

    fn refused_change(&self, images: &[String]) -> Option<String> {
        crate::resources::databasemirror::major_change(self, images)
    }

    fn policy(&self) -> Policy {
        policy(
            &self.spec.failover,
            self.spec.replication == Replication::Sync,
            self.spec.data_durability == DataDurability::Preferred,
            self.spec.primary.clone(),
        )
    }

    fn read_write_service(&self) -> String {
        format!("{}-rw", self.name_any())
    }

    fn credentials_name(&self) -> String {
        agent_credentials_name(self)
    }

    fn referenced_by(web: &crate::api::WebCluster) -> Option<String> {
        web.spec.database_ref.as_ref().map(|r| r.name.clone())
    }

    fn app_secret_name(&self) -> String {
        credentials_name(self)
    }

    fn generate_passwords() -> Passwords {
        Passwords { owner: random_password(), replication: random_password(), superuser: random_password() }
    }

    fn read_passwords(secret: &Secret) -> Result<Passwords, &'static str> {
        Passwords::from_secret(secret)
    }

    fn credentials(&self, blueprint: &Blueprint, passwords: &Passwords) -> Secret {
        agent_credentials(self, blueprint, passwords)
    }

    fn app_secret(&self, blueprint: &Blueprint, passwords: &Passwords, ca_pem: &str) -> Secret {
        credentials(self, blueprint, &passwords.owner, ca_pem)
    }
}
