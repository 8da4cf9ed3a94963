//! The OpenAPI document of the user REST API, generated from the handlers'
//! annotations and served at `/user/api-docs.json`.

use axum::Json;
use utoipa::OpenApi;

use crate::{accounts, directory};

/// The user service's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Parley user service", description = "Accounts, sessions and the Signal key directory. Paths are served under /user and /api/user."),
    servers((url = "/user"), (url = "/api/user")),
    paths(
        accounts::register,
        accounts::login,
        accounts::logout,
        accounts::me,
        accounts::search,
        accounts::user_by_id,
        directory::publish_bundle,
        directory::fetch_bundle,
        directory::store_backup,
        directory::fetch_backup,
    ),
    components(schemas(
        accounts::RegisterRequest,
        accounts::LoginRequest,
        accounts::UserView,
        accounts::SearchHit,
        directory::PublishRequest,
        directory::BackupRequest,
    )),
    modifiers(&SecurityAddon),
)]
pub struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("jwt"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// `GET /user/api-docs.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
