//! Roles, scopes, principals and the checks that map them to actions.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "{other:?} is not a role; use viewer, editor or admin"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Ingest,
    Read,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ingest" => Ok(Scope::Ingest),
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "{other:?} is not a scope; use ingest, read or admin"
            )),
        }
    }
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Ingest,
    Read,
    ManageUsers,
    ManageKeys,
    /// Remove nodes from the cluster.
    ManageCluster,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Ingest => "ingest",
            Action::Read => "read",
            Action::ManageUsers => "manage users",
            Action::ManageKeys => "manage API keys",
            Action::ManageCluster => "manage the cluster",
        }
    }

    /// The least role that may do it.
    fn min_role(self) -> Role {
        match self {
            Action::Read => Role::Viewer,
            Action::Ingest | Action::ManageKeys => Role::Editor,
            Action::ManageUsers | Action::ManageCluster => Role::Admin,
        }
    }

    /// The scope an API key needs for it (`admin` covers everything).
    fn scope(self) -> Scope {
        match self {
            Action::Ingest => Scope::Ingest,
            Action::Read => Scope::Read,
            Action::ManageUsers | Action::ManageKeys | Action::ManageCluster => Scope::Admin,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Session,
    ApiKey { id: u64 },
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: u64,
    pub name: String,
    pub role: Role,
    /// For API keys: what the key may do (never more than the owner's role allows).
    pub scopes: Vec<Scope>,
    pub via: Via,
}

impl Principal {
    pub fn can(&self, action: Action) -> bool {
        if self.role < action.min_role() {
            return false;
        }
        match self.via {
            Via::Session => true,
            Via::ApiKey { .. } => self
                .scopes
                .iter()
                .any(|s| *s == Scope::Admin || *s == action.scope()),
        }
    }

    pub fn require(&self, action: Action) -> Result<(), Forbidden> {
        if self.can(action) {
            return Ok(());
        }
        let have = match self.via {
            Via::Session => format!("role {}", self.role.as_str()),
            Via::ApiKey { .. } => format!(
                "an API key with scopes [{}] owned by a user with role {}",
                self.scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.role.as_str()
            ),
        };
        Err(Forbidden {
            action: action.as_str(),
            needed: match self.via {
                Via::Session => format!("role {} or higher", action.min_role().as_str()),
                Via::ApiKey { .. } => format!(
                    "scope {} and an owner with role {} or higher",
                    action.scope().as_str(),
                    action.min_role().as_str()
                ),
            },
            have,
        })
    }
}

/// 401: who is calling could not be established.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `Authorization: Bearer <token or API key>`")]
    Missing,
    #[error("credentials are malformed: expected a token starting with pbs_ or an API key starting with pbk_")]
    Malformed,
    #[error("unknown token or API key")]
    Unknown,
    #[error("the session has expired; log in again")]
    Expired,
    #[error("the user is disabled")]
    Disabled,
}

impl AuthError {
    pub fn status(&self) -> u16 {
        401
    }
}

/// 403: the caller is known but may not do this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not allowed to {action}: needs {needed}; the caller has {have}")]
pub struct Forbidden {
    pub action: &'static str,
    pub needed: String,
    pub have: String,
}

impl Forbidden {
    pub fn status(&self) -> u16 {
        403
    }
}

pub const SESSION_PREFIX: &str = "pbs_";
pub const KEY_PREFIX: &str = "pbk_";

/// A new secret: prefix + 32 random bytes in hex.
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// Tokens and keys are 256-bit random secrets: a fast hash is enough to store them (there is
/// nothing to brute-force), unlike passwords, which get argon2id.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, via: Via, scopes: &[Scope]) -> Principal {
        Principal {
            user_id: 1,
            name: "u".into(),
            role,
            scopes: scopes.to_vec(),
            via,
        }
    }

    #[test]
    fn roles_and_scopes() {
        let viewer = p(Role::Viewer, Via::Session, &[]);
        assert!(viewer.can(Action::Read));
        assert!(!viewer.can(Action::Ingest));
        let editor = p(Role::Editor, Via::Session, &[]);
        assert!(editor.can(Action::Ingest) && !editor.can(Action::ManageUsers));
        let ingest_key = p(Role::Admin, Via::ApiKey { id: 1 }, &[Scope::Ingest]);
        assert!(ingest_key.can(Action::Ingest));
        assert!(!ingest_key.can(Action::Read));
        let e = ingest_key.require(Action::Read).unwrap_err().to_string();
        assert!(e.contains("scope read"), "{e}");
        // A key never does more than its owner's role allows.
        let capped = p(Role::Viewer, Via::ApiKey { id: 2 }, &[Scope::Admin]);
        assert!(capped.can(Action::Read) && !capped.can(Action::Ingest));
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("viewer, editor or admin"));
    }
}
