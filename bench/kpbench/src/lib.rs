//! What the benchmark against kube-proxy shares with its tests: kube-proxy's rules for the
//! bench's Services ([`kube_proxy`]) and the baseline lab they run in ([`baseline`]).

pub mod baseline;
pub mod kube_proxy;
