//! Secrets: database and broker credentials, the JWT key ring, a self-signed
//! certificate, and the derived connection URLs.
//!
//! A Secret the operator made before is emitted again with its data unchanged
//! (so server-side apply changes nothing and orphan cleanup keeps it). A Secret
//! of the same name made by someone else wins: it is read, never written.
//! Missing ones get fresh material from [`Entropy`].

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use super::{BuildError, Ctx, Entropy};

/// Token lifetime: the previous public key must verify this long after a rotation.
pub const TOKEN_LIFETIME_SECS: i64 = 86_400;

/// The Secrets to apply and a hash of everything the workloads read from them.
#[derive(Debug, Default)]
pub struct Secrets {
    pub objects: Vec<Secret>,
    pub hash: String,
}

/// Names of the generated Secrets.
pub fn database(ctx: &Ctx) -> String {
    ctx.child("database")
}
pub fn broker(ctx: &Ctx) -> String {
    ctx.child("broker")
}
pub fn jwt(ctx: &Ctx) -> String {
    ctx.child("jwt")
}
pub fn tls(ctx: &Ctx) -> String {
    ctx.child("tls")
}
pub fn runtime(ctx: &Ctx) -> String {
    ctx.child("runtime")
}

/// Database roles: the owner (migrations) and one runtime role per service.
pub const OWNER_ROLE: &str = "parley_owner";
/// Runtime roles by service.
pub const SERVICE_ROLES: [(&str, &str); 3] = [
    ("user", "parley_user_svc"),
    ("chat", "parley_chat_svc"),
    ("notification", "parley_notification_svc"),
];

struct Material<'a, 'b> {
    ctx: &'a Ctx<'b>,
    objects: Vec<Secret>,
    seen: BTreeMap<String, BTreeMap<String, String>>,
}

impl Material<'_, '_> {
    /// The data of Secret `name`: observed, else `make()`. Emits it unless
    /// someone else owns it.
    fn secret(
        &mut self,
        name: String,
        type_: Option<&str>,
        required: &[&str],
        make: impl FnOnce(Option<&BTreeMap<String, String>>) -> BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, BuildError> {
        let observed = self.ctx.observed.secrets.get(&name);
        let data = match observed {
            Some(existing) if !existing.managed_by_operator => existing.data.clone(),
            Some(existing) => make(Some(&existing.data)),
            None => make(None),
        };
        for key in required {
            if !data.contains_key(*key) {
                return Err(BuildError::SecretKey(name, (*key).to_owned()));
            }
        }
        if observed.is_none_or(|existing| existing.managed_by_operator) {
            self.objects
                .push(object(self.ctx, name.clone(), type_, &data));
        }
        self.seen.insert(name, data.clone());
        Ok(data)
    }
}

/// An operator-made Secret holding `data`.
pub fn object(
    ctx: &Ctx,
    name: String,
    type_: Option<&str>,
    data: &BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ctx.meta(name, "secrets"),
        type_: type_.map(str::to_owned),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Builds the Secrets of a cluster.
pub fn build(ctx: &Ctx, entropy: &mut dyn Entropy) -> Result<Secrets, BuildError> {
    let spec = &ctx.cluster.spec;
    let mut m = Material {
        ctx,
        objects: Vec::new(),
        seen: BTreeMap::new(),
    };
    let mut runtime_env = BTreeMap::new();

    if spec.postgres.managed.is_some() {
        let keys: Vec<String> = std::iter::once("owner-password".to_owned())
            .chain(
                SERVICE_ROLES
                    .iter()
                    .map(|(service, _)| format!("{service}-password")),
            )
            .collect();
        let required: Vec<&str> = keys.iter().map(String::as_str).collect();
        let rotated = super::rotation::completed(ctx);
        let data = m.secret(database(ctx), None, &required, |existing| match existing {
            // A requested rotation whose Job set these in the database.
            Some(data) => {
                let mut data = data.clone();
                for (key, value) in rotated.iter().flatten() {
                    if let Some(slot) = data.get_mut(key) {
                        *slot = value.clone();
                    }
                }
                data
            }
            None => keys
                .iter()
                .map(|k| (k.clone(), entropy.password()))
                .collect(),
        })?;
        let host = format!("{}.{}.svc", ctx.child("postgres"), ctx.namespace);
        let url =
            |role: &str, password: &str| format!("postgres://{role}:{password}@{host}:5432/parley");
        runtime_env.insert(
            "PARLEY_MIGRATE_DATABASE_URL".to_owned(),
            url(OWNER_ROLE, &data["owner-password"]),
        );
        for (service, role) in SERVICE_ROLES {
            runtime_env.insert(
                format!("PARLEY_{}_DATABASE_URL", service.to_uppercase()),
                url(role, &data[&format!("{service}-password")]),
            );
        }
    }
    if spec.rabbitmq.managed.is_some() {
        let data = m.secret(
            broker(ctx),
            None,
            &["username", "password"],
            |existing| match existing {
                Some(data) => {
                    let mut data = data.clone();
                    // A requested rotation whose Job set this one in RabbitMQ.
                    if let Some(new) = super::rotation::completed(ctx)
                        .and_then(|new| new.get(super::rotation::BROKER_KEY).cloned())
                    {
                        data.insert("password".into(), new);
                    }
                    data
                }
                None => BTreeMap::from([
                    ("username".into(), "parley".into()),
                    ("password".into(), entropy.password()),
                ]),
            },
        )?;
        runtime_env.insert(
            "AMQP_URL".to_owned(),
            format!(
                "amqp://{}:{}@{}.{}.svc:5672/%2f",
                data["username"],
                data["password"],
                ctx.child("rabbitmq"),
                ctx.namespace
            ),
        );
    }
    let interval = spec
        .secrets
        .jwt_rotation_interval
        .as_deref()
        .and_then(parse_duration_secs);
    let now = ctx.observed.now;
    m.secret(
        jwt(ctx),
        None,
        &["signing.pem", "jwks.json", "rotated-at"],
        |existing| jwt_material(existing, interval, now, entropy),
    )?;
    if spec.exposure.tls.self_signed.is_some() {
        let host = spec.exposure.host.clone();
        m.secret(
            tls(ctx),
            Some("kubernetes.io/tls"),
            &["tls.crt", "tls.key"],
            |existing| match existing {
                Some(data) => data.clone(),
                None => {
                    let (ca, crt, key) = entropy.certificate(&host);
                    BTreeMap::from([
                        ("ca.crt".into(), ca),
                        ("tls.crt".into(), crt),
                        ("tls.key".into(), key),
                    ])
                }
            },
        )?;
    }
    if !runtime_env.is_empty() {
        m.objects
            .push(object(ctx, runtime(ctx), None, &runtime_env));
        m.seen.insert(runtime(ctx), runtime_env);
    }
    // Secrets the user references are consumed too: a new external URL or
    // SMTP password must roll the pods like a generated one.
    for name in referenced(ctx) {
        if let Some(existing) = ctx.observed.secrets.get(&name) {
            m.seen.insert(name, existing.data.clone());
        }
    }
    let hash = digest(m.seen.iter().flat_map(|(name, data)| {
        data.iter()
            .map(move |(key, value)| [name.as_str(), key.as_str(), value.as_str()])
    }));
    Ok(Secrets {
        objects: m.objects,
        hash,
    })
}

/// `AMQP_URL` for a Parley container: from the runtime Secret with a managed
/// broker, else from the Secret the spec references.
pub fn amqp_url_env(ctx: &Ctx) -> Option<k8s_openapi::api::core::v1::EnvVar> {
    let spec = &ctx.cluster.spec.rabbitmq;
    match (&spec.managed, &spec.external) {
        (Some(_), _) => Some(super::secret_env("AMQP_URL", &runtime(ctx), "AMQP_URL")),
        (None, Some(external)) => Some(super::secret_env(
            "AMQP_URL",
            &external.secret_ref.name,
            &external.secret_ref.key,
        )),
        (None, None) => None,
    }
}

/// The user's Secrets a cluster reads: external database and broker URLs, SMTP
/// credentials, an existing TLS certificate.
pub fn referenced(ctx: &Ctx) -> Vec<String> {
    let spec = &ctx.cluster.spec;
    let mut names = Vec::new();
    if let Some(external) = &spec.postgres.external {
        names.push(external.secret_ref.name.clone());
    }
    if let Some(external) = &spec.rabbitmq.external {
        names.push(external.secret_ref.name.clone());
    }
    if let Some(name) = spec
        .smtp
        .as_ref()
        .and_then(|s| s.credentials_secret.clone())
    {
        names.push(name);
    }
    if let Some(name) = &spec.exposure.tls.secret_name {
        names.push(name.clone());
    }
    names.sort();
    names.dedup();
    names
}

/// A short, stable hash of `(name, key, value)` triples (pod-template
/// annotations that roll pods when what they read changes).
pub fn digest<'a>(entries: impl Iterator<Item = [&'a str; 3]>) -> String {
    let mut hasher = Sha256::new();
    for parts in entries {
        for part in parts {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The JWT key ring: a new key when there is none or the rotation is due; the
/// previous public key stays in the JWKS for the token lifetime.
fn jwt_material(
    existing: Option<&BTreeMap<String, String>>,
    interval: Option<i64>,
    now: i64,
    entropy: &mut dyn Entropy,
) -> BTreeMap<String, String> {
    let fresh = |entropy: &mut dyn Entropy, previous: Option<parley_keys::Jwk>| {
        let key = entropy.signing_key();
        let mut keys = vec![key.jwk];
        keys.extend(previous);
        BTreeMap::from([
            ("signing.pem".to_owned(), key.private_pem),
            (
                "jwks.json".to_owned(),
                serde_json::to_string(&parley_keys::Jwks { keys }).expect("JWKS serializes"),
            ),
            ("rotated-at".to_owned(), now.to_string()),
        ])
    };
    let Some(data) = existing else {
        return fresh(entropy, None);
    };
    let rotated_at: i64 = data
        .get("rotated-at")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let jwks = data
        .get("jwks.json")
        .and_then(|text| parley_keys::Jwks::parse(text).ok())
        .unwrap_or_default();
    match interval {
        Some(interval) if now - rotated_at >= interval => {
            let current = jwks.keys.first().cloned();
            fresh(entropy, current)
        }
        _ => {
            // Drop the previous key once every token it signed has expired.
            let mut data = data.clone();
            if jwks.keys.len() > 1 && now - rotated_at >= TOKEN_LIFETIME_SECS {
                let trimmed = parley_keys::Jwks {
                    keys: jwks.keys.into_iter().take(1).collect(),
                };
                data.insert(
                    "jwks.json".into(),
                    serde_json::to_string(&trimmed).expect("JWKS serializes"),
                );
            }
            data
        }
    }
}

/// Parses a Go-style duration made of `h`, `m` and `s` parts (`720h`, `1h30m`).
pub fn parse_duration_secs(text: &str) -> Option<i64> {
    let mut total = 0i64;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: i64 = number.parse().ok()?;
                number.clear();
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
            }
            _ => return None,
        }
    }
    (number.is_empty() && total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::parse_duration_secs;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("720h"), Some(2_592_000));
        assert_eq!(parse_duration_secs("1h30m"), Some(5400));
        assert_eq!(parse_duration_secs("90s"), Some(90));
        assert_eq!(parse_duration_secs("12"), None);
        assert_eq!(parse_duration_secs("1d"), None);
        assert_eq!(parse_duration_secs(""), None);
    }
}
