//! The OpenAPI document of the chat REST API, served at `/chat/api-docs.json`.

use axum::Json;
use utoipa::OpenApi;

use crate::rest;

/// The chat service's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Parley chat service", description = "Messages and conversations. Real-time delivery is Socket.IO at /chat/socket.io (see the API contract, section 7)."),
    servers((url = "/chat")),
    paths(rest::send, rest::history, rest::conversations, rest::mark_read),
    components(schemas(rest::SendRequest)),
)]
pub struct ApiDoc;

/// `GET /chat/api-docs.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
