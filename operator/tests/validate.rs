//! The validate step: the CRD's CEL rules evaluated client-side, and the checks
//! CEL cannot express.

use parley_operator::crd::ChatCluster;
use parley_operator::render;
use parley_operator::validate::validate;

fn minimal() -> ChatCluster {
    let text = std::fs::read_to_string(format!(
        "{}/../examples/minimal.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    render::cluster_from_yaml(&text).unwrap()
}

fn problems(cluster: &ChatCluster) -> String {
    validate(cluster).expect_err("invalid").join("\n")
}

#[test]
fn every_example_is_valid() {
    for name in ["minimal", "full", "gateway", "external-database"] {
        let text = std::fs::read_to_string(format!(
            "{}/../examples/{name}.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let cluster = render::cluster_from_yaml(&text).unwrap();
        assert_eq!(validate(&cluster), Ok(()), "{name}");
    }
}

#[test]
fn postgres_needs_exactly_one_of_managed_and_external() {
    let mut cluster = minimal();
    cluster.spec.postgres.external = Some(parley_operator::crd::ExternalService {
        secret_ref: parley_operator::crd::SecretKeyRef {
            name: "pg".into(),
            key: "url".into(),
        },
    });
    assert!(
        problems(&cluster).contains("set exactly one of postgres.managed and postgres.external")
    );
    cluster.spec.postgres.external = None;
    cluster.spec.postgres.managed = None;
    assert!(
        problems(&cluster).contains("set exactly one of postgres.managed and postgres.external")
    );
}

#[test]
fn tls_needs_exactly_one_source_and_exposure_one_route() {
    let mut cluster = minimal();
    cluster.spec.exposure.tls.secret_name = Some("mine".into());
    assert!(
        problems(&cluster)
            .contains("set exactly one of tls.selfSigned, tls.certManager and tls.secretName")
    );
    let mut cluster = minimal();
    cluster.spec.exposure.ingress = None;
    assert!(
        problems(&cluster).contains("set exactly one of exposure.ingress and exposure.gateway")
    );
}

#[test]
fn rust_side_checks_catch_what_cel_cannot() {
    let mut cluster = minimal();
    cluster.spec.version = "1.0 beta".into();
    cluster.spec.exposure.host = "Chat.Example.com".into();
    cluster.spec.secrets.jwt_rotation_interval = Some("24h".into());
    let text = problems(&cluster);
    assert!(text.contains("not a valid image tag"), "{text}");
    assert!(text.contains("not a lower-case DNS name"), "{text}");
    assert!(text.contains("at least 48h"), "{text}");
    cluster.spec.secrets.jwt_rotation_interval = Some("1 week".into());
    assert!(problems(&cluster).contains("jwtRotationInterval"));
}
