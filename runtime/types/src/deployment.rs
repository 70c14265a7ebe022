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
    /// The bundles' size in bytes, all together.
    pub size_bytes: u64,
    /// The content hashes of the deployment's other bundles, when it was
    /// deployed as several (a Rust bundle and a TypeScript one, say): each
    /// task runs in the bundle that defines it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_bundles: Vec<String>,
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
    /// The content hashes of all the deployment's bundles, the first first.
    pub fn content_hashes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.content_hash.as_str())
            .chain(self.more_bundles.iter().map(String::as_str))
    }

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
