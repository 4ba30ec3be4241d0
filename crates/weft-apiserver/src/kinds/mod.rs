//! What Kubernetes' apiserver does for particular kinds beyond storing them.

pub(crate) mod crd;
pub(crate) mod pod;
pub(crate) mod service;
pub(crate) mod validate;
