//! A kubeconfig for the server: one cluster (plain http, no credentials), one user, one
//! context, current.

use serde_json::json;

/// A kubeconfig that kubectl and kube-rs accept for `server_url` (such as
/// `http://198.51.100.1:6443`). The user is named after the context and has no credentials.
pub fn kubeconfig_yaml(server_url: &str, cluster_name: &str, context_name: &str) -> String {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {"server": server_url}}],
        "users": [{"name": context_name, "user": {}}],
        "contexts": [{"name": context_name, "context": {"cluster": cluster_name, "user": context_name, "namespace": "default"}}],
        "current-context": context_name,
        "preferences": {},
    });
    // Serializing a JSON value to YAML cannot fail.
    serde_norway::to_string(&config).unwrap_or_default()
}
