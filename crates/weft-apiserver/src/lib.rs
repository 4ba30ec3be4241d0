//! A Kubernetes-compatible API server kept in memory, for the lab: kube-rs and kubectl talk to
//! it as to a kube-apiserver (discovery, list/watch with resourceVersions, bookmarks and 410,
//! get/create/update/patch/delete, the status subresource, CRDs, Tables), and it does what
//! the apiserver itself does for Services (cluster IPs, node ports), Pods (immutable spec,
//! binding, graceful deletion) and Namespaces. Plain HTTP, no TLS, no authentication.
//! README.md says what is implemented and what is simplified.

mod admission;
mod config;
mod discovery;
mod error;
mod http;
mod kinds;
mod kubeconfig;
mod meta;
mod patch;
mod registry;
mod schema;
mod selector;
mod server;
mod state;
mod store;
mod table;
mod watch;

pub use admission::{AdmissionHook, AdmissionRequest, Operation, ResourceRef, StoreView};
pub use config::{ConfigError, Ipv4Cidr, ServerConfig};
pub use error::{ApiError, FieldError};
pub use kubeconfig::kubeconfig_yaml;
pub use server::{ApiServer, ApiService, Body};
