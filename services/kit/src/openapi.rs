//! What every service's OpenAPI document says alike: the problems the kit's
//! extractors answer with before a handler runs, added to each operation
//! they can happen to, so that the document covers every answer.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// Adds the extractors' problems to every operation: 400 (malformed JSON),
/// 413, 415 and 422 where there is a JSON body, 400 where a path parameter can
/// fail to parse. Apply it to the finished document (after the routes are
/// in), and register `Problem` as a component schema.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommonProblems;

fn add(operation: &mut Operation, status: &str, description: &str) {
    let responses = &mut operation.responses.responses;
    if responses.contains_key(status) {
        return;
    }
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build();
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", content)
        .build();
    responses.insert(status.to_string(), RefOr::T(response));
}

impl utoipa::Modify for CommonProblems {
    fn modify(&self, openapi: &mut OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.request_body.is_some() {
                    add(
                        operation,
                        "400",
                        "The body is not JSON, or a path parameter is invalid",
                    );
                    add(operation, "413", "The body is too large");
                    add(
                        operation,
                        "422",
                        "A field is missing or invalid (named by a JSON pointer)",
                    );
                    add(operation, "415", "The body is not `application/json`");
                }
                let has_path_parameter = operation.parameters.iter().flatten().any(
                    |p| matches!(p, RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Path)),
                );
                if has_path_parameter {
                    add(operation, "400", "A path parameter is invalid");
                }
            }
        }
    }
}

/// Declares the `bearer` scheme (an access token, a JWT) that
/// authenticated operations name in `security(("bearer" = []))`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
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
