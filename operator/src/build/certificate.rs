//! TLS certificates: a cert-manager Certificate, or a self-signed CA and
//! certificate generated once by the operator (rcgen on ring).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

use super::Ctx;
use crate::crd::CertManagerTls;

/// A cert-manager `Certificate` writing the certificate into the TLS Secret.
pub fn cert_manager(ctx: &Ctx, spec: &CertManagerTls) -> Value {
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": serde_json::to_value(ctx.meta(ctx.name.clone(), "tls")).expect("serializes"),
        "spec": {
            "secretName": super::secret::tls(ctx),
            "dnsNames": [ctx.cluster.spec.exposure.host],
            "issuerRef": {"name": spec.issuer_ref.name, "kind": spec.issuer_ref.kind, "group": "cert-manager.io"},
        },
    })
}

/// A new CA and a certificate for `host` signed by it: `(ca.crt, tls.crt, tls.key)`.
pub fn self_signed(host: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("key generation");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("valid params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("Parley CA for {host}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("key generation");
    let mut params = CertificateParams::new(vec![host.to_owned()]).expect("valid host name");
    params.distinguished_name.push(DnType::CommonName, host);
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).expect("certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}
