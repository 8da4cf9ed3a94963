//! The OpenAPI document of the notification REST API, served at
//! `/notifications/api-docs.json`.

use axum::Json;
use utoipa::OpenApi;

use crate::rest;

/// The notification service's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Parley notification service", description = "In-app notifications. Served under /notifications and /notification; the trailing slash of the collection matters."),
    servers((url = "/notifications"), (url = "/notification")),
    paths(rest::list, rest::unread_count, rest::read_all, rest::mark_read, rest::delete, rest::create),
    components(schemas(rest::Notification, rest::CreateRequest)),
)]
pub struct ApiDoc;

/// `GET /notifications/api-docs.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
