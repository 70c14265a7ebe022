//! Deployments: each upload of a bundle is a new version.

use crate::{DeploymentId, Timestamp};
use kiln_manifest::Manifest;
use serde::{Deserialize, Serialize};

/// A deployed bundle version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// The deployment's id.
    pub id: DeploymentId,
    /// Its version, as Trigger.dev shows them (`20261122.1`).
    pub version: String,
    /// The deployment's sequence number on this server, from 1.
    pub sequence: u64,
    /// SHA-256 of the bundle's bytes, hex: the key of the bundle and of its
    /// compiled artifact.
    pub content_hash: String,
    /// The bundle's size in bytes.
    pub size_bytes: u64,
    /// The bundle's manifest, as its `describe` returned it.
    pub manifest: Manifest,
    /// When it was deployed.
    pub created_at: Timestamp,
    /// When retention retired it: a newer version had been current for
    /// longer than the retention and no unfinished run was on it. A retired
    /// version takes no new runs (`lockToVersion`, replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Timestamp>,
    /// Whether its bundle and compiled artifact were deleted: retired, and
    /// still unused a retention pass later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub collected: bool,
}

/// A task as a deployment lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployedTask {
    /// The task id.
    pub id: String,
    /// Whether payloads are validated against a JSON Schema.
    pub has_schema: bool,
}

impl Deployment {
    /// The deployment's tasks, for listings.
    pub fn tasks(&self) -> Vec<DeployedTask> {
        self.manifest
            .tasks
            .iter()
            .map(|t| DeployedTask {
                id: t.id.clone(),
                has_schema: t.payload_schema.is_some(),
            })
            .collect()
    }
}
