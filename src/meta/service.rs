//! What the HTTP layer calls: builds commands (deciding ids, hashes and times) and applies
//! them; authenticates bearer credentials.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Serialize;

use super::auth::{self, AuthError, Principal, Role, Scope, Via};
use super::command::MetaCommand;
use super::group::MetaGroup;
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
    /// This node's replica: what reads read.
    store: Arc<MetaStore>,
    /// Where changes go: every command is committed in the metadata group and applied to
    /// every node's store.
    group: Arc<MetaGroup>,
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

/// A password's Argon2id hash. Hashing is deliberately slow: it runs off the async workers.
async fn hash_password(pw: &str) -> Result<String, MetaError> {
    let pw = pw.to_owned();
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(pw.as_bytes(), &salt()?)
            .map(|h| h.to_string())
            .map_err(|e| MetaError::Invalid {
                field: "password",
                reason: e.to_string(),
            })
    })
    .await
    .map_err(|e| MetaError::Failed(format!("password hashing: {e}")))?
}

/// The command that creates a user (validated, password hashed, id drawn): what the service
/// proposes and what `pulseboard user add` leaves in a node's inbox.
pub async fn create_user_command(
    username: &str,
    password: &str,
    role: Role,
    now_ms: i64,
) -> Result<(u64, MetaCommand), MetaError> {
    validate_username(username)?;
    validate_password(password)?;
    let id = random_id();
    Ok((
        id,
        MetaCommand::CreateUser {
            id,
            username: username.to_owned(),
            password_hash: hash_password(password).await?,
            role,
            created_ms: now_ms,
        },
    ))
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
    /// The service over this node's replica `store` of the metadata `group`.
    pub fn new(
        store: Arc<MetaStore>,
        group: Arc<MetaGroup>,
        session_ttl: Duration,
    ) -> Result<Self, MetaError> {
        let argon2 = Argon2::default();
        let dummy_hash = argon2
            .hash_password(b"not a real password", &salt()?)
            .map_err(|e| MetaError::Invalid {
                field: "password",
                reason: e.to_string(),
            })?
            .to_string();
        Ok(Self {
            store,
            group,
            session_ttl,
            argon2,
            dummy_hash,
        })
    }

    pub(super) fn store(&self) -> &MetaStore {
        &self.store
    }

    pub fn group(&self) -> &Arc<MetaGroup> {
        &self.group
    }

    /// The log index this node's replica has applied (it changes with every metadata change).
    pub fn applied_index(&self) -> u64 {
        self.store.applied_index().unwrap_or(0)
    }

    /// Commits `cmd` in the metadata group; returns once this node's replica applied it (so
    /// what the caller reads next includes it), or with the refusal every replica made.
    pub(super) async fn propose(&self, cmd: MetaCommand) -> Result<(), MetaError> {
        self.group.write(cmd).await
    }

    /// As slow as hashing, and off the async workers too.
    async fn verify(&self, pw: &str, hash: &str) -> bool {
        let argon2 = self.argon2.clone();
        let (pw, hash) = (pw.to_owned(), hash.to_owned());
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| argon2.verify_password(pw.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// First start: creates `admin` with the given password, or a generated one (returned,
    /// for the caller to show once). Does nothing when any user exists.
    pub async fn bootstrap(
        &self,
        admin_password: Option<String>,
    ) -> Result<Option<String>, MetaError> {
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
        self.create_user("admin", &password, Role::Admin, crate::now_ms())
            .await?;
        Ok(generated.then_some(password))
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        now_ms: i64,
    ) -> Result<Session, MetaError> {
        let mut user = self.store.user_by_name(username)?;
        if user.is_none() {
            // Perhaps created on another node a moment ago: catch up with the group first.
            self.group.sync().await?;
            user = self.store.user_by_name(username)?;
        }
        let hash = user
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
        let ok = self.verify(password, hash).await;
        let user = match user {
            Some(u) if ok && !u.disabled => u,
            _ => return Err(MetaError::BadCredentials),
        };
        let token = auth::new_secret(auth::SESSION_PREFIX);
        let expires_ms = now_ms + self.session_ttl.as_millis() as i64;
        self.propose(MetaCommand::DeleteExpiredSessions { before_ms: now_ms })
            .await?;
        self.propose(MetaCommand::CreateSession {
            token_hash: auth::hash_secret(&token),
            user_id: user.id,
            created_ms: now_ms,
            expires_ms,
        })
        .await?;
        Ok(Session {
            token,
            user_id: user.id,
            role: user.role,
            expires_ms,
        })
    }

    pub async fn logout(&self, token: &str) -> Result<(), MetaError> {
        self.propose(MetaCommand::DeleteSession {
            token_hash: auth::hash_secret(token),
        })
        .await
    }

    /// Who `bearer` (a session token or an API key) is. Reads this node's replica; a
    /// credential it does not know (perhaps created on another node a moment ago) is looked
    /// up again after catching up with the metadata group, so a client may log in on one
    /// node and go on at another at once. Revocations reach every node within a heartbeat.
    pub async fn authenticate(&self, bearer: &str, now_ms: i64) -> Result<Principal, AuthError> {
        match self.authenticate_local(bearer, now_ms) {
            Err(AuthError::Unknown) if self.group.sync().await.is_ok() => {
                self.authenticate_local(bearer, now_ms)
            }
            other => other,
        }
    }

    fn authenticate_local(&self, bearer: &str, now_ms: i64) -> Result<Principal, AuthError> {
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
                what: "user".into(),
                id: id.to_string(),
            })
    }

    /// Linearizable (includes every change acknowledged anywhere before).
    pub async fn list_users(&self) -> Result<Vec<UserView>, MetaError> {
        self.group.sync().await?;
        Ok(self.store.users()?.into_iter().map(view).collect())
    }

    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        now_ms: i64,
    ) -> Result<UserView, MetaError> {
        let (id, cmd) = create_user_command(username, password, role, now_ms).await?;
        self.propose(cmd).await?;
        self.user(id)
    }

    /// Proposes the commands `pulseboard user add` left in this node's inbox (see
    /// [`MetaStore::inbox_push`]) and records each outcome for it. Runs until the node stops.
    pub async fn serve_inbox(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let pending = match self.store.inbox_pending() {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(cause = %e, "reading the command inbox failed");
                    continue;
                }
            };
            for (id, cmd) in pending {
                let outcome = match cmd {
                    Ok(cmd) => self.propose(cmd).await,
                    Err(reason) => Err(MetaError::Invalid {
                        field: "inbox command",
                        reason,
                    }),
                };
                // Not committed (the group has no leader yet): try again on the next round.
                if matches!(outcome, Err(MetaError::Unavailable(_))) {
                    continue;
                }
                let error = outcome.err().map(|e| e.to_string());
                if let Err(e) = self.store.inbox_done(id, error.as_deref()) {
                    tracing::warn!(cause = %e, "recording an inbox outcome failed");
                }
            }
        }
    }

    pub async fn update_user(
        &self,
        id: u64,
        password: Option<&str>,
        role: Option<Role>,
        disabled: Option<bool>,
    ) -> Result<UserView, MetaError> {
        let password_hash = match password {
            Some(p) => {
                validate_password(p)?;
                Some(hash_password(p).await?)
            }
            None => None,
        };
        self.propose(MetaCommand::UpdateUser {
            id,
            password_hash,
            role,
            disabled,
        })
        .await?;
        self.user(id)
    }

    pub async fn delete_user(&self, id: u64) -> Result<(), MetaError> {
        self.propose(MetaCommand::DeleteUser { id }).await
    }

    /// Creates a key for the caller. Its scopes must be within what the caller's role allows.
    pub async fn create_api_key(
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
        })
        .await?;
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
    pub async fn list_api_keys(&self, caller: &Principal) -> Result<Vec<ApiKeyView>, MetaError> {
        self.group.sync().await?;
        let owner = (caller.role != Role::Admin).then_some(caller.user_id);
        Ok(self
            .store
            .api_keys(owner)?
            .into_iter()
            .map(key_view)
            .collect())
    }

    pub async fn delete_api_key(&self, caller: &Principal, id: u64) -> Result<(), MetaError> {
        if caller.role != Role::Admin {
            let own = self
                .store
                .api_keys(Some(caller.user_id))?
                .iter()
                .any(|k| k.id == id);
            if !own {
                return Err(MetaError::NotFound {
                    what: "API key".into(),
                    id: id.to_string(),
                });
            }
        }
        self.propose(MetaCommand::DeleteApiKey { id }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::Config;
    use crate::engine::Engine;
    use crate::membership::Membership;

    /// A one-node cluster on `dir` (one shard): the metadata group is the real one.
    async fn service(dir: &std::path::Path) -> (MetaService, Engine, Membership) {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            quic: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        config.storage.shards = 1;
        let store = Arc::new(MetaStore::open(&dir.join("meta.sqlite")).unwrap());
        let node = Membership::start(&config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let engine = Engine::open(&config, &node, store.clone()).await.unwrap();
        let meta =
            MetaService::new(store, engine.meta_group().clone(), Duration::from_secs(60)).unwrap();
        (meta, engine, node)
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
        assert!(matches!(
            store.apply(1, Some(&cmd), b"").unwrap(),
            super::super::MetaOutcome::Done
        ));
        assert!(matches!(
            store.apply(1, Some(&cmd), b"").unwrap(),
            super::super::MetaOutcome::AlreadyApplied
        ));
        // A refused command consumes its index and changes nothing.
        assert!(matches!(
            store.apply(2, Some(&cmd), b"").unwrap(),
            super::super::MetaOutcome::Refused(MetaError::Conflict(_))
        ));
        assert_eq!(store.applied_index().unwrap(), 2);
        assert_eq!(store.users().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bootstrap_login_restart_and_last_admin() {
        let dir = tempfile::tempdir().unwrap();
        let (s, engine, node) = service(dir.path()).await;
        let generated = s
            .bootstrap(None)
            .await
            .unwrap()
            .expect("generated password");
        assert!(s.bootstrap(None).await.unwrap().is_none(), "only once");
        let session = s.login("admin", &generated, 1_000).await.unwrap();
        assert!(matches!(
            s.login("admin", "wrong-password", 1_000).await,
            Err(MetaError::BadCredentials)
        ));
        assert!(matches!(
            s.login("nobody", "whatever-pass", 1_000).await,
            Err(MetaError::BadCredentials)
        ));
        let p = s.authenticate(&session.token, 2_000).await.unwrap();
        assert_eq!(p.role, Role::Admin);
        assert_eq!(
            s.authenticate(&session.token, 1_000 + 60_000)
                .await
                .unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(s.authenticate("", 0).await.unwrap_err(), AuthError::Missing);
        assert_eq!(
            s.authenticate("hello", 0).await.unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(
            s.authenticate("pbs_00", 0).await.unwrap_err(),
            AuthError::Unknown
        );
        // The only admin can be neither demoted, disabled nor deleted.
        assert!(matches!(
            s.update_user(p.user_id, None, Some(Role::Viewer), None)
                .await,
            Err(MetaError::LastAdmin)
        ));
        assert!(matches!(
            s.delete_user(p.user_id).await,
            Err(MetaError::LastAdmin)
        ));
        let (key_view, key) = s
            .create_api_key(&p, "ci", &[Scope::Ingest], 5)
            .await
            .unwrap();
        drop(s);
        engine.shutdown().await;
        node.shutdown().await;
        // Restart: users, sessions and keys are still there; indices continue.
        let (s, _engine, _node) = service(dir.path()).await;
        assert_eq!(
            s.authenticate(&session.token, 2_000).await.unwrap().user_id,
            p.user_id
        );
        let kp = s.authenticate(&key, 2_000).await.unwrap();
        assert_eq!(kp.via, Via::ApiKey { id: key_view.id });
        assert_eq!(kp.scopes, vec![Scope::Ingest]);
        s.logout(&session.token).await.unwrap();
        assert_eq!(
            s.authenticate(&session.token, 2_000).await.unwrap_err(),
            AuthError::Unknown
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn users_keys_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _engine, _node) = service(dir.path()).await;
        s.bootstrap(Some("admin-password".into())).await.unwrap();
        let ed = s
            .create_user("ed", "editor-pass", Role::Editor, 1)
            .await
            .unwrap();
        assert!(matches!(
            s.create_user("ed", "editor-pass", Role::Viewer, 1).await,
            Err(MetaError::Conflict(_))
        ));
        assert!(matches!(
            s.create_user("bad name", "editor-pass", Role::Viewer, 1)
                .await,
            Err(MetaError::Invalid {
                field: "username",
                ..
            })
        ));
        assert!(matches!(
            s.create_user("shorty", "short", Role::Viewer, 1).await,
            Err(MetaError::Invalid {
                field: "password",
                ..
            })
        ));
        let ed_p = s
            .authenticate(&s.login("ed", "editor-pass", 1).await.unwrap().token, 2)
            .await
            .unwrap();
        // An editor cannot mint an admin key; its keys are its own.
        assert!(s
            .create_api_key(&ed_p, "k", &[Scope::Admin], 1)
            .await
            .is_err());
        let (k, _) = s
            .create_api_key(&ed_p, "k", &[Scope::Ingest, Scope::Read], 1)
            .await
            .unwrap();
        assert_eq!(s.list_api_keys(&ed_p).await.unwrap().len(), 1);
        let admin = s
            .authenticate(
                &s.login("admin", "admin-password", 1).await.unwrap().token,
                2,
            )
            .await
            .unwrap();
        s.create_api_key(&admin, "a", &[Scope::Admin], 1)
            .await
            .unwrap();
        assert_eq!(s.list_api_keys(&admin).await.unwrap().len(), 2);
        assert_eq!(s.list_api_keys(&ed_p).await.unwrap().len(), 1);
        // Disabling ends sessions; deleting removes keys too.
        s.update_user(ed.id, None, None, Some(true)).await.unwrap();
        assert!(s
            .authenticate(
                &s.login("admin", "admin-password", 1).await.unwrap().token,
                2
            )
            .await
            .is_ok());
        assert!(matches!(
            s.login("ed", "editor-pass", 3).await,
            Err(MetaError::BadCredentials)
        ));
        s.delete_user(ed.id).await.unwrap();
        assert!(matches!(
            s.delete_api_key(&admin, k.id).await,
            Err(MetaError::NotFound { .. })
        ));
        assert_eq!(s.list_users().await.unwrap().len(), 1);
    }
}
