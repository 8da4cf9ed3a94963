//! The validate step: the CRD's CEL rules, evaluated here too (an object may
//! predate a rule, or come from `render`), plus checks CEL cannot express.

use crate::build::secret::parse_duration_secs;
use crate::crd::ChatCluster;

/// Every problem of a ChatCluster, or `Ok`.
pub fn validate(cluster: &ChatCluster) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if let Err(errors) = cluster.validate_cel() {
        problems.push(errors.to_string());
    }
    let spec = &cluster.spec;
    if !spec
        .version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        problems.push(format!(
            "version {:?} is not a valid image tag",
            spec.version
        ));
    }
    let host = &spec.exposure.host;
    let valid_host = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    if !valid_host {
        problems.push(format!(
            "exposure.host {host:?} is not a lower-case DNS name"
        ));
    }
    if let Some(interval) = &spec.secrets.jwt_rotation_interval {
        match parse_duration_secs(interval) {
            Some(secs) if secs >= 2 * crate::build::secret::TOKEN_LIFETIME_SECS => {}
            Some(_) => problems.push(
                "secrets.jwtRotationInterval must be at least 48h (twice the token lifetime)"
                    .into(),
            ),
            None => problems.push(format!(
                "secrets.jwtRotationInterval {interval:?} is not a duration like 720h"
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
