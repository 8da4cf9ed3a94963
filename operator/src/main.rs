//! `parley-operator`.
#![forbid(unsafe_code)]

fn main() {
    use kube::CustomResourceExt;
    print!("{}", serde_yaml::to_string(&parley_operator::crd::ChatCluster::crd()).unwrap());
}
