//! What the HTTP layer calls: builds commands (deciding ids, hashes and times) and applies
//! them; authenticates bearer credentials.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Serialize;

use super::auth::{self, AuthError, Principal, Role, Scope, Via};
use super::command::MetaCommand;
use super::store::{MetaError, MetaStore};

#[derive(Clone, Debug, Serialize)]
pub struct UserView {
    pub id: u64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ApiKeyView {
    pub id: u64,
    pub name: String,
    pub owner_user_id: u64,
    pub scopes: Vec<Scope>,
    pub created_ms: i64,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub token: String,
    pub user_id: u64,
    pub role: Role,
    pub expires_ms: i64,
}

pub struct MetaService {
    store: MetaStore,
    /// The next log index; later the meta Raft group assigns them. Held across `apply` so
    /// commands are applied in index order (a later index applied first would make the
    /// earlier one look already applied).
    next_index: Mutex<u64>,
    session_ttl: Duration,
    argon2: Argon2<'static>,
    /// Verified against when a username is unknown, so both cases take the same time.
    dummy_hash: String,
}

/// A fresh 128-bit salt.
fn salt() -> Result<SaltString, MetaError> {
    SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| MetaError::Invalid {
        field: "password",
        reason: e.to_string(),
    })
}

/// Changing dashboards or alert rules needs an editor (or higher) session, or an API key with
/// the `admin` scope (SPEC's scopes have no narrower write scope).
pub(super) fn require_editor(p: &Principal, what: &str) -> Result<(), MetaError> {
    let key_ok = match p.via {
        Via::Session => true,
        Via::ApiKey { .. } => p.scopes.contains(&Scope::Admin),
    };
    if p.role >= Role::Editor && key_ok {
        Ok(())
    } else {
        Err(MetaError::Forbidden(format!(
            "changing {what} needs role editor or higher (API keys: scope admin); {} has role {}",
            p.name,
            p.role.as_str()
        )))
    }
}

pub(super) fn random_id() -> u64 {
    // 53 bits: exact in JavaScript numbers, which is what dashboards read ids with.
    (rand::random::<u64>() >> 11).max(1)
}

fn validate_username(name: &str) -> Result<(), MetaError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(MetaError::Invalid {
            field: "username",
            reason: "1 to 64 characters of letters, digits, '_', '.', '@', '-'".into(),
        })
    }
}

fn validate_password(pw: &str) -> Result<(), MetaError> {
    if pw.chars().count() < 8 {
        return Err(MetaError::Invalid {
            field: "password",
            reason: "at least 8 characters".into(),
        });
    }
    if pw.len() > 1024 {
        return Err(MetaError::Invalid {
            field: "password",
            reason: "at most 1024 bytes".into(),
        });
    }
    Ok(())
}

fn view(u: super::store::UserRow) -> UserView {
    UserView {
        id: u.id,
        username: u.username,
        role: u.role,
        disabled: u.disabled,
        created_ms: u.created_ms,
    }
}

fn key_view(k: super::store::KeyRow) -> ApiKeyView {
    ApiKeyView {
        id: k.id,
        name: k.name,
        owner_user_id: k.owner_user_id,
        scopes: k.scopes,
        created_ms: k.created_ms,
    }
}

impl MetaService {
    pub fn open(path: &Path, session_ttl: Duration) -> Result<Self, MetaError> {
        Self::with_store(MetaStore::open(path)?, session_ttl)
    }

    pub fn with_store(store: MetaStore, session_ttl: Duration) -> Result<Self, MetaError> {
        let argon2 = Argon2::default();
        let dummy_hash = argon2
            .hash_password(b"not a real password", &salt()?)
            .map_err(|e| MetaError::Invalid {
                field: "password",
                reason: e.to_string(),
            })?
            .to_string();
        let next = store.applied_index()? + 1;
        Ok(Self {
            store,
            next_index: Mutex::new(next),
            session_ttl,
            argon2,
            dummy_hash,
        })
    }

    pub(super) fn store(&self) -> &MetaStore {
        &self.store
    }

    pub(super) fn propose(&self, cmd: MetaCommand) -> Result<(), MetaError> {
        let mut next = self.next_index.lock().unwrap_or_else(|p| p.into_inner());
        let index = *next;
        *next += 1;
        self.store.apply(index, &cmd).map(|_| ())
    }

    fn hash_password(&self, pw: &str) -> Result<String, MetaError> {
        self.argon2
            .hash_password(pw.as_bytes(), &salt()?)
            .map(|h| h.to_string())
            .map_err(|e| MetaError::Invalid {
                field: "password",
                reason: e.to_string(),
            })
    }

    fn verify(&self, pw: &str, hash: &str) -> bool {
        PasswordHash::new(hash)
            .map(|h| self.argon2.verify_password(pw.as_bytes(), &h).is_ok())
            .unwrap_or(false)
    }

    /// First start: creates `admin` with the given password, or a generated one (returned,
    /// for the caller to show once). Does nothing when any user exists.
    pub fn bootstrap(&self, admin_password: Option<String>) -> Result<Option<String>, MetaError> {
        if self.store.user_count()? > 0 {
            return Ok(None);
        }
        let (password, generated) = match admin_password {
            Some(p) => (p, false),
            None => {
                use rand::distr::{Alphanumeric, SampleString};
                (Alphanumeric.sample_string(&mut rand::rng(), 20), true)
            }
        };
        self.create_user("admin", &password, Role::Admin, crate::now_ms())?;
        Ok(generated.then_some(password))
    }

    pub fn login(&self, username: &str, password: &str, now_ms: i64) -> Result<Session, MetaError> {
        let user = self.store.user_by_name(username)?;
        let hash = user
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
        let ok = self.verify(password, hash);
        let user = match user {
            Some(u) if ok && !u.disabled => u,
            _ => return Err(MetaError::BadCredentials),
        };
        let token = auth::new_secret(auth::SESSION_PREFIX);
        let expires_ms = now_ms + self.session_ttl.as_millis() as i64;
        self.propose(MetaCommand::DeleteExpiredSessions { before_ms: now_ms })?;
        self.propose(MetaCommand::CreateSession {
            token_hash: auth::hash_secret(&token),
            user_id: user.id,
            created_ms: now_ms,
            expires_ms,
        })?;
        Ok(Session {
            token,
            user_id: user.id,
            role: user.role,
            expires_ms,
        })
    }

    pub fn logout(&self, token: &str) -> Result<(), MetaError> {
        self.propose(MetaCommand::DeleteSession {
            token_hash: auth::hash_secret(token),
        })
    }

    pub fn authenticate(&self, bearer: &str, now_ms: i64) -> Result<Principal, AuthError> {
        let bearer = bearer.trim();
        if bearer.is_empty() {
            return Err(AuthError::Missing);
        }
        let hash = auth::hash_secret(bearer);
        let lookup = |id| self.store.user_by_id(id).map_err(|_| AuthError::Unknown);
        if bearer.starts_with(auth::SESSION_PREFIX) {
            let (user_id, expires) = self
                .store
                .session(&hash)
                .map_err(|_| AuthError::Unknown)?
                .ok_or(AuthError::Unknown)?;
            if now_ms >= expires {
                return Err(AuthError::Expired);
            }
            let user = lookup(user_id)?.ok_or(AuthError::Unknown)?;
            if user.disabled {
                return Err(AuthError::Disabled);
            }
            return Ok(Principal {
                user_id,
                name: user.username,
                role: user.role,
                scopes: Vec::new(),
                via: Via::Session,
            });
        }
        if bearer.starts_with(auth::KEY_PREFIX) {
            let key = self
                .store
                .api_key_by_hash(&hash)
                .map_err(|_| AuthError::Unknown)?
                .ok_or(AuthError::Unknown)?;
            let user = lookup(key.owner_user_id)?.ok_or(AuthError::Unknown)?;
            if user.disabled {
                return Err(AuthError::Disabled);
            }
            return Ok(Principal {
                user_id: user.id,
                name: format!("{} (key {})", user.username, key.name),
                role: user.role,
                scopes: key.scopes,
                via: Via::ApiKey { id: key.id },
            });
        }
        Err(AuthError::Malformed)
    }

    fn user(&self, id: u64) -> Result<UserView, MetaError> {
        self.store
            .user_by_id(id)?
            .map(view)
            .ok_or(MetaError::NotFound {
                what: "user",
                id: id.to_string(),
            })
    }

    pub fn list_users(&self) -> Result<Vec<UserView>, MetaError> {
        Ok(self.store.users()?.into_iter().map(view).collect())
    }

    pub fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        now_ms: i64,
    ) -> Result<UserView, MetaError> {
        validate_username(username)?;
        validate_password(password)?;
        let id = random_id();
        self.propose(MetaCommand::CreateUser {
            id,
            username: username.to_owned(),
            password_hash: self.hash_password(password)?,
            role,
            created_ms: now_ms,
        })?;
        self.user(id)
    }

    pub fn update_user(
        &self,
        id: u64,
        password: Option<&str>,
        role: Option<Role>,
        disabled: Option<bool>,
    ) -> Result<UserView, MetaError> {
        let password_hash = match password {
            Some(p) => {
                validate_password(p)?;
                Some(self.hash_password(p)?)
            }
            None => None,
        };
        self.propose(MetaCommand::UpdateUser {
            id,
            password_hash,
            role,
            disabled,
        })?;
        self.user(id)
    }

    pub fn delete_user(&self, id: u64) -> Result<(), MetaError> {
        self.propose(MetaCommand::DeleteUser { id })
    }

    /// Creates a key for the caller. Its scopes must be within what the caller's role allows.
    pub fn create_api_key(
        &self,
        owner: &Principal,
        name: &str,
        scopes: &[Scope],
        now_ms: i64,
    ) -> Result<(ApiKeyView, String), MetaError> {
        if name.trim().is_empty() || name.len() > 128 {
            return Err(MetaError::Invalid {
                field: "name",
                reason: "1 to 128 bytes".into(),
            });
        }
        if scopes.is_empty() {
            return Err(MetaError::Invalid {
                field: "scopes",
                reason: "at least one of ingest, read, admin".into(),
            });
        }
        for s in scopes {
            let needs = match s {
                Scope::Read => Role::Viewer,
                Scope::Ingest => Role::Editor,
                Scope::Admin => Role::Admin,
            };
            if owner.role < needs {
                return Err(MetaError::Invalid {
                    field: "scopes",
                    reason: format!(
                        "scope {} needs role {} or higher",
                        s.as_str(),
                        needs.as_str()
                    ),
                });
            }
        }
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let key = auth::new_secret(auth::KEY_PREFIX);
        let id = random_id();
        self.propose(MetaCommand::CreateApiKey {
            id,
            name: name.to_owned(),
            key_hash: auth::hash_secret(&key),
            owner_user_id: owner.user_id,
            scopes: scopes.clone(),
            created_ms: now_ms,
        })?;
        Ok((
            ApiKeyView {
                id,
                name: name.to_owned(),
                owner_user_id: owner.user_id,
                scopes,
                created_ms: now_ms,
            },
            key,
        ))
    }

    /// Admins see every key; others their own.
    pub fn list_api_keys(&self, caller: &Principal) -> Result<Vec<ApiKeyView>, MetaError> {
        let owner = (caller.role != Role::Admin).then_some(caller.user_id);
        Ok(self
            .store
            .api_keys(owner)?
            .into_iter()
            .map(key_view)
            .collect())
    }

    pub fn delete_api_key(&self, caller: &Principal, id: u64) -> Result<(), MetaError> {
        if caller.role != Role::Admin {
            let own = self
                .store
                .api_keys(Some(caller.user_id))?
                .iter()
                .any(|k| k.id == id);
            if !own {
                return Err(MetaError::NotFound {
                    what: "API key",
                    id: id.to_string(),
                });
            }
        }
        self.propose(MetaCommand::DeleteApiKey { id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(dir: &Path) -> MetaService {
        MetaService::open(&dir.join("meta.sqlite"), Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn commands_reapplied_at_the_same_index_are_no_ops() {
        let store = MetaStore::open_in_memory().unwrap();
        let cmd = MetaCommand::CreateUser {
            id: 7,
            username: "ann".into(),
            password_hash: "x".into(),
            role: Role::Editor,
            created_ms: 1,
        };
        assert_eq!(
            store.apply(1, &cmd).unwrap(),
            super::super::MetaOutcome::Done
        );
        assert_eq!(
            store.apply(1, &cmd).unwrap(),
            super::super::MetaOutcome::AlreadyApplied
        );
        // A refused command consumes its index and changes nothing.
        assert!(matches!(store.apply(2, &cmd), Err(MetaError::Conflict(_))));
        assert_eq!(store.applied_index().unwrap(), 2);
        assert_eq!(store.users().unwrap().len(), 1);
    }

    #[test]
    fn bootstrap_login_restart_and_last_admin() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        let generated = s.bootstrap(None).unwrap().expect("generated password");
        assert!(s.bootstrap(None).unwrap().is_none(), "only once");
        let session = s.login("admin", &generated, 1_000).unwrap();
        assert!(matches!(
            s.login("admin", "wrong-password", 1_000),
            Err(MetaError::BadCredentials)
        ));
        assert!(matches!(
            s.login("nobody", "whatever-pass", 1_000),
            Err(MetaError::BadCredentials)
        ));
        let p = s.authenticate(&session.token, 2_000).unwrap();
        assert_eq!(p.role, Role::Admin);
        assert_eq!(
            s.authenticate(&session.token, 1_000 + 60_000).unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(s.authenticate("", 0).unwrap_err(), AuthError::Missing);
        assert_eq!(
            s.authenticate("hello", 0).unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(s.authenticate("pbs_00", 0).unwrap_err(), AuthError::Unknown);
        // The only admin can be neither demoted, disabled nor deleted.
        assert!(matches!(
            s.update_user(p.user_id, None, Some(Role::Viewer), None),
            Err(MetaError::LastAdmin)
        ));
        assert!(matches!(
            s.delete_user(p.user_id),
            Err(MetaError::LastAdmin)
        ));
        let (key_view, key) = s.create_api_key(&p, "ci", &[Scope::Ingest], 5).unwrap();
        drop(s);
        // Restart: users, sessions and keys are still there; indices continue.
        let s = service(dir.path());
        assert_eq!(
            s.authenticate(&session.token, 2_000).unwrap().user_id,
            p.user_id
        );
        let kp = s.authenticate(&key, 2_000).unwrap();
        assert_eq!(kp.via, Via::ApiKey { id: key_view.id });
        assert_eq!(kp.scopes, vec![Scope::Ingest]);
        s.logout(&session.token).unwrap();
        assert_eq!(
            s.authenticate(&session.token, 2_000).unwrap_err(),
            AuthError::Unknown
        );
    }

    #[test]
    fn users_keys_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        s.bootstrap(Some("admin-password".into())).unwrap();
        let ed = s.create_user("ed", "editor-pass", Role::Editor, 1).unwrap();
        assert!(matches!(
            s.create_user("ed", "editor-pass", Role::Viewer, 1),
            Err(MetaError::Conflict(_))
        ));
        assert!(matches!(
            s.create_user("bad name", "editor-pass", Role::Viewer, 1),
            Err(MetaError::Invalid {
                field: "username",
                ..
            })
        ));
        assert!(matches!(
            s.create_user("shorty", "short", Role::Viewer, 1),
            Err(MetaError::Invalid {
                field: "password",
                ..
            })
        ));
        let ed_p = s
            .authenticate(&s.login("ed", "editor-pass", 1).unwrap().token, 2)
            .unwrap();
        // An editor cannot mint an admin key; its keys are its own.
        assert!(s.create_api_key(&ed_p, "k", &[Scope::Admin], 1).is_err());
        let (k, _) = s
            .create_api_key(&ed_p, "k", &[Scope::Ingest, Scope::Read], 1)
            .unwrap();
        assert_eq!(s.list_api_keys(&ed_p).unwrap().len(), 1);
        let admin = s
            .authenticate(&s.login("admin", "admin-password", 1).unwrap().token, 2)
            .unwrap();
        s.create_api_key(&admin, "a", &[Scope::Admin], 1).unwrap();
        assert_eq!(s.list_api_keys(&admin).unwrap().len(), 2);
        assert_eq!(s.list_api_keys(&ed_p).unwrap().len(), 1);
        // Disabling ends sessions; deleting removes keys too.
        s.update_user(ed.id, None, None, Some(true)).unwrap();
        assert!(s
            .authenticate(&s.login("admin", "admin-password", 1).unwrap().token, 2)
            .is_ok());
        assert!(matches!(
            s.login("ed", "editor-pass", 3),
            Err(MetaError::BadCredentials)
        ));
        s.delete_user(ed.id).unwrap();
        assert!(matches!(
            s.delete_api_key(&admin, k.id),
            Err(MetaError::NotFound { .. })
        ));
        assert_eq!(s.list_users().unwrap().len(), 1);
    }
}
