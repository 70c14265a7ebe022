//! The web dashboard, served by `kiln serve` on the API's port: runs (a
//! list with the API's filters, a page per run with its journal as a
//! timeline), queues and deployments, updated live over server-sent
//! events.
//!
//! Pages are HTML rendered on the server, with one small script (embedded
//! in the binary, like the stylesheet) for live updates and the buttons.
//! Signing in takes an API key, as the API does: the key is kept in an
//! `HttpOnly`, `SameSite=Strict` cookie, so another site can neither read
//! it nor post a form with it. Every list pages through an index rather
//! than reading every run.

mod events;
mod html;
mod manage;
mod pages;
mod run_page;

use super::ApiError;
use crate::environments::{Hub, KeyLookup};
use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

/// The cookie that holds the signed-in key.
const SESSION: &str = "kiln_key";

/// The dashboard's routes.
pub(crate) fn router() -> Router<Arc<Hub>> {
    Router::new()
        .route("/", get(|| async { redirect("/runs") }))
        .route("/login", get(pages::login_page).post(login))
        .route("/logout", post(logout))
        .route("/runs", get(pages::runs))
        .route("/runs/{run_id}", get(run_page::run))
        .route("/runs/{run_id}/cancel", post(run_page::cancel))
        .route("/runs/{run_id}/replay", post(run_page::replay))
        .route("/runs/{run_id}/reschedule", post(run_page::reschedule))
        .route("/queues", get(pages::queues))
        .route("/queues/{action}", post(manage::queue_action))
        .route("/tokens", get(manage::tokens_page))
        .route("/tokens/{token_id}/complete", post(manage::complete_token))
        .route(
            "/schedules",
            get(manage::schedules_page).post(manage::create_schedule),
        )
        .route(
            "/schedules/{schedule_id}/{action}",
            post(manage::schedule_action),
        )
        .route("/deployments", get(pages::deployments))
        .route("/events", get(events::stream))
        .route(
            "/dashboard/assets/dashboard.js",
            get(|| async { asset("text/javascript", include_str!("assets/dashboard.js")) }),
        )
        .route(
            "/dashboard/assets/dashboard.css",
            get(|| async { asset("text/css", include_str!("assets/dashboard.css")) }),
        )
        .route_layer(axum::middleware::from_fn(guard))
}

/// Refuses a form post that another origin sent (the browser says where a
/// request came from in `Sec-Fetch-Site`, or in `Origin`); `SameSite`
/// cookies alone would let another port of the same host post. Every
/// answer may not be framed or sniffed.
async fn guard(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && !same_origin(request.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "The dashboard takes form posts only from its own pages",
        )
            .into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Whether a request came from a page of this server: by `Sec-Fetch-Site`
/// when the browser sends it, else by `Origin` against `Host`; a request
/// with neither (not a browser's) passes, as it carries no ambient cookie
/// a page could have borrowed.
fn same_origin(headers: &HeaderMap) -> bool {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = value("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    match (value("origin"), value("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, rest)| rest) == Some(host),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn asset(media: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, media), (CACHE_CONTROL, "max-age=300")],
        body,
    )
        .into_response()
}

/// A `303 See Other` to `to`.
pub(super) fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_string())]).into_response()
}

/// The signed-in environment of a dashboard request; without a valid
/// session, pages redirect to the sign-in page.
pub(crate) struct Session(pub(crate) super::AppState);

/// Why a dashboard request has no session: a page is sent to sign in; a
/// form post or the event stream, which a script makes, gets a 401 it can
/// tell from success.
pub(crate) enum SignIn {
    /// A page.
    Page,
    /// A post or the event stream.
    Script,
}

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        match self {
            SignIn::Page => redirect("/login"),
            SignIn::Script => {
                (StatusCode::UNAUTHORIZED, "Sign in to the dashboard again").into_response()
            }
        }
    }
}

/// The key a request's session cookie holds.
pub(super) fn session_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION)
        .map(|(_, value)| value)
}

/// Whether `key` still signs in: the server's key, or a key not revoked.
pub(super) fn signed_in(hub: &Hub, key: &str) -> bool {
    match hub.lookup(key) {
        KeyLookup::Admin => true,
        KeyLookup::Key(key) => key.revoked_at.is_none(),
        _ => false,
    }
}

/// The environment `key` signs in to, if it is a live key of this server.
async fn environment_of(hub: &Hub, key: &str) -> Option<super::AppState> {
    match hub.lookup(key) {
        KeyLookup::Admin => Some(hub.default_environment().clone()),
        KeyLookup::Key(key) if key.revoked_at.is_none() => {
            hub.environment(&key.project, &key.environment).await.ok()
        }
        _ => None,
    }
}

impl FromRequestParts<Arc<Hub>> for Session {
    type Rejection = SignIn;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, SignIn> {
        // A browser navigating (a page, a plain form post) is sent to sign
        // in; a script's request (fetch, the event stream) gets the 401.
        let navigating = parts
            .headers
            .get("sec-fetch-mode")
            .and_then(|v| v.to_str().ok())
            .map_or(parts.method == Method::GET, |mode| mode == "navigate");
        let refused = if navigating && parts.uri.path() != "/events" {
            SignIn::Page
        } else {
            SignIn::Script
        };
        let Some(key) = session_key(&parts.headers) else {
            return Err(refused);
        };
        environment_of(hub, key).await.map(Session).ok_or(refused)
    }
}

/// `POST /login` with the form field `key`: signs in and goes to the runs.
async fn login(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let key = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "key")
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    // A cookie value cannot hold these; no key has them.
    let storable = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',' && b != b'"');
    if !storable || environment_of(&hub, &key).await.is_none() {
        return pages::login_form(Some("That is not an API key of this server.")).into_response();
    }
    let cookie = format!("{SESSION}={key}; Path=/; HttpOnly; SameSite=Strict");
    let mut response = redirect("/runs");
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: forgets the session.
async fn logout() -> Response {
    let mut response = redirect("/login");
    if let Ok(value) = format!("{SESSION}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0").parse() {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

/// An API error as a dashboard page.
pub(super) fn error_page(error: ApiError) -> Response {
    let status = error.status;
    let body = html::layout(
        "Error",
        "",
        &format!(
            "<h1>{}</h1><p>{}</p>",
            status.as_u16(),
            html::esc(&error.message)
        ),
    );
    (status, axum::response::Html(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn posts_from_other_origins_are_told_apart() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:3030"),
            ("host", "127.0.0.1:3030")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:3030")
        ])));
        assert!(same_origin(&headers(&[])));
    }

    #[test]
    fn the_session_key_is_read_from_its_cookie() {
        let h = headers(&[("cookie", "a=b; kiln_key=tr_dev_sk_x; c=d")]);
        assert_eq!(session_key(&h), Some("tr_dev_sk_x"));
        assert_eq!(session_key(&headers(&[("cookie", "a=b")])), None);
    }
}
