//! HTTP building blocks shared by every service: the contract's error envelopes,
//! lenient body extraction, field validation, client-IP resolution, rate limits
//! and the layer stack (security headers, CORS, request ids, body limit).

pub mod body;
pub mod client_ip;
pub mod dates;
pub mod error;
pub mod layers;
pub mod query;
pub mod rate_limit;
pub mod validate;

pub use body::Body;
pub use error::{ApiError, ApiResult, FieldError};
pub use validate::Validator;
