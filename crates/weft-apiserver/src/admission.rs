//! Admission: the embedding program's own checks and mutations, run on every write after the
//! server's defaulting and validation and before the object is stored, as Kubernetes runs
//! mutating and validating admission.

use serde_json::Value;

use crate::error::ApiError;

/// What is being done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    /// A PUT or PATCH, also of a subresource such as `status`.
    Update,
    Delete,
}

/// The resource a request is about.
#[derive(Debug, Clone, Copy)]
pub struct ResourceRef<'a> {
    /// "" for the core group.
    pub group: &'a str,
    pub version: &'a str,
    /// Plural, as in the URL: `services`.
    pub resource: &'a str,
    pub kind: &'a str,
    /// `Some("status")` for a status write.
    pub subresource: Option<&'a str>,
}

/// One write, as an admission hook sees it.
pub struct AdmissionRequest<'a> {
    pub operation: Operation,
    pub resource: ResourceRef<'a>,
    /// "" for cluster-scoped objects.
    pub namespace: &'a str,
    pub name: &'a str,
    /// The stored object before the write (`None` on create).
    pub old_object: Option<&'a Value>,
    /// The object about to be stored (`None` on delete). A hook may change it; the server
    /// checks the result again with its own validation.
    pub object: Option<&'a mut Value>,
    /// `dryRun=All`: nothing will be stored.
    pub dry_run: bool,
    /// Read access to the other stored objects, as they are before this write.
    pub store: &'a dyn StoreView,
}

/// Reading stored objects from inside an admission hook (the hook runs while the store is
/// locked, so what it reads cannot change before the write is stored).
pub trait StoreView {
    /// One object; `namespace` is "" for cluster-scoped resources.
    fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value>;
    /// All objects of a resource, in `namespace` if given.
    fn list(&self, group: &str, resource: &str, namespace: Option<&str>) -> Vec<Value>;
}

/// A check or mutation the embedding program adds with `ApiServer::add_admission_hook`.
/// Returning an error refuses the request with that status (use `ApiError::forbidden` or
/// `ApiError::invalid`, as Kubernetes' admission plugins answer 403 or 422).
pub trait AdmissionHook: Send + Sync + 'static {
    fn admit(&self, request: &mut AdmissionRequest<'_>) -> Result<(), ApiError>;
}

impl<F> AdmissionHook for F
where
    F: Fn(&mut AdmissionRequest<'_>) -> Result<(), ApiError> + Send + Sync + 'static,
{
    fn admit(&self, request: &mut AdmissionRequest<'_>) -> Result<(), ApiError> {
        self(request)
    }
}
