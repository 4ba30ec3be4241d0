//! Errors as the Kubernetes API returns them: a `Status` object with an HTTP code, a reason
//! and, for validation failures, one cause per field.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ListMeta, Status, StatusCause, StatusDetails,
};

/// An API error: what a request gets back instead of an object. The embedding program's
/// admission hooks return it too.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: String,
    /// Human-readable message, in the apiserver's wording.
    pub message: String,
    /// The object the error is about and, for `Invalid`, the fields.
    pub details: Option<Box<StatusDetails>>,
}

/// One invalid field of an object, as in `Status.details.causes`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field's path, such as `spec.ports[1].nodePort`.
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueDuplicate`,
    /// `FieldValueNotSupported` or `FieldValueForbidden`.
    pub reason: &'static str,
    /// The message after the field, such as `Invalid value: 80: provided port is already allocated`.
    pub message: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, detail: &str) -> Self {
        FieldError {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {detail}"),
        }
    }

    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        FieldError {
            field: field.into(),
            reason: "FieldValueRequired",
            message,
        }
    }

    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        FieldError {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value}"),
        }
    }

    pub fn not_supported(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        supported: &[&str],
    ) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        FieldError {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            field: field.into(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
        }
    }

    fn line(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// What an error is about: the resource (plural, group) and the object's name.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub group: &'a str,
    pub plural: &'a str,
    pub name: &'a str,
}

impl Subject<'_> {
    /// `pods` or `weftnodes.weft.io`, as the apiserver names a resource in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn details(&self) -> StatusDetails {
        StatusDetails {
            name: non_empty(self.name),
            group: non_empty(self.group),
            kind: non_empty(self.plural),
            ..StatusDetails::default()
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: StatusDetails) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message)
    }

    pub fn not_found_path() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "InternalError", message)
    }

    pub fn not_found(subject: Subject<'_>) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", subject.qualified(), subject.name),
        )
        .with_details(subject.details())
    }

    pub fn already_exists(subject: Subject<'_>) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!(
                "{} \"{}\" already exists",
                subject.qualified(),
                subject.name
            ),
        )
        .with_details(subject.details())
    }

    /// 409 Conflict: the write was based on an older version of the object.
    pub fn conflict(subject: Subject<'_>, detail: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {detail}",
                subject.qualified(),
                subject.name
            ),
        )
        .with_details(subject.details())
    }

    pub fn modified(subject: Subject<'_>) -> Self {
        ApiError::conflict(
            subject,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 Invalid with one cause per field, worded like the apiserver:
    /// `Service "web" is invalid: spec.ports[1]: Duplicate value: ...`.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: Vec<FieldError>) -> Self {
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let lines: Vec<String> = errors.iter().map(FieldError::line).collect();
        let summary = match lines.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes = errors
            .iter()
            .map(|e| StatusCause {
                field: non_empty(&e.field),
                message: Some(e.message.clone()),
                reason: Some(e.reason.to_string()),
            })
            .collect();
        ApiError::new(
            422,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {summary}"),
        )
        .with_details(StatusDetails {
            name: non_empty(name),
            group: non_empty(group),
            kind: non_empty(kind),
            causes: Some(causes),
            ..StatusDetails::default()
        })
    }

    /// 410 Expired, what a list or watch from a compacted resourceVersion gets.
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    /// 504 for a resourceVersion newer than the server's (the apiserver waits a few seconds for
    /// it first; this server has nothing to wait for).
    pub fn too_large_resource_version(asked: u64, current: u64) -> Self {
        let mut error = ApiError::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {asked}, current: {current}"),
        );
        error.details = Some(Box::new(StatusDetails {
            causes: Some(vec![StatusCause {
                reason: Some("ResourceVersionTooLarge".to_string()),
                message: Some("Too large resource version".to_string()),
                field: None,
            }]),
            retry_after_seconds: Some(1),
            ..StatusDetails::default()
        }));
        error
    }

    pub fn to_status(&self) -> Status {
        Status {
            code: Some(i32::from(self.code)),
            details: self.details.as_deref().cloned(),
            message: Some(self.message.clone()),
            metadata: ListMeta::default(),
            reason: Some(self.reason.clone()),
            status: Some("Failure".to_string()),
        }
    }
}

/// A `Status` with `status: Success`, what a delete that removed the object returns.
pub(crate) fn success_status(
    group: &str,
    kind_plural: &str,
    name: &str,
    uid: Option<String>,
) -> Status {
    Status {
        code: None,
        details: Some(StatusDetails {
            name: non_empty(name),
            group: non_empty(group),
            kind: non_empty(kind_plural),
            uid,
            ..StatusDetails::default()
        }),
        message: None,
        metadata: ListMeta::default(),
        reason: None,
        status: Some("Success".to_string()),
    }
}
