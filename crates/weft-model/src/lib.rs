//! Weft's cluster model and the pure computation of the desired datapath state from it.
//! Nothing here performs I/O: every function is a function of its arguments, so the whole
//! model is tested without root and without a kernel.

pub mod cidr;
pub mod config;
pub mod crd;
pub mod ct_gc;
pub mod desired;
pub mod endpointslice;
pub mod external_address;
mod hash;
pub mod identity;
pub mod ipam;
pub mod ipcache;
pub mod k8s;
pub mod lb;
pub mod lb_capacity;
pub mod lb_maps;
pub mod maglev;
pub mod service_ip;
pub mod store;

pub use cidr::{CidrError, Ipv4Cidr};
pub use config::{Acceleration, ClusterConfig, LbAlgorithm, LbMode};
pub use store::{ManifestCache, Store, StoreError};
