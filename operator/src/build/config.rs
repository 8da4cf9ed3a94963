//! The ConfigMap with the non-secret settings every Parley container reads
//! (`envFrom`), named as in `docs/configuration.md`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{Ctx, HTTP_PORT};
use crate::crd::SmtpSecurity;

/// Where the JWT Secret is mounted in Parley pods.
pub const JWT_MOUNT: &str = "/etc/parley/jwt";

/// The ConfigMap's name.
pub fn name(ctx: &Ctx) -> String {
    ctx.child("config")
}

/// Builds the ConfigMap.
pub fn build(ctx: &Ctx) -> ConfigMap {
    let spec = &ctx.cluster.spec;
    let public_url = format!("https://{}", spec.exposure.host);
    let mut data = BTreeMap::from([
        ("PARLEY_LISTEN".to_owned(), format!("0.0.0.0:{HTTP_PORT}")),
        ("PARLEY_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("PARLEY_PUBLIC_URL".to_owned(), public_url.clone()),
        ("PARLEY_CORS_ORIGINS".to_owned(), public_url),
        // One ingress controller or gateway in front of every pod.
        ("PARLEY_TRUST_PROXY_HOPS".to_owned(), "1".to_owned()),
        (
            "PARLEY_EVENTS_EXCHANGE".to_owned(),
            "parley.events".to_owned(),
        ),
        (
            "PARLEY_JWT_JWKS_FILE".to_owned(),
            format!("{JWT_MOUNT}/jwks.json"),
        ),
        (
            "PARLEY_JWT_SIGNING_KEY_FILE".to_owned(),
            format!("{JWT_MOUNT}/signing.pem"),
        ),
    ]);
    if let Some(smtp) = &spec.smtp {
        data.insert("PARLEY_SMTP_HOST".into(), smtp.host.clone());
        if let Some(port) = smtp.port {
            data.insert("PARLEY_SMTP_PORT".into(), port.to_string());
        }
        if let Some(security) = smtp.security {
            let text = match security {
                SmtpSecurity::Auto => "auto",
                SmtpSecurity::Starttls => "starttls",
                SmtpSecurity::Tls => "tls",
                SmtpSecurity::None => "none",
            };
            data.insert("PARLEY_SMTP_SECURITY".into(), text.into());
        }
        if let Some(from) = &smtp.from {
            data.insert("PARLEY_EMAIL_FROM".into(), from.clone());
        }
    }
    ConfigMap {
        metadata: ctx.meta(name(ctx), "config"),
        data: Some(data),
        ..ConfigMap::default()
    }
}
