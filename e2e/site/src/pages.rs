//! The site's pages. Parsing is done by small pure functions (tested
//! below); the handlers only talk to the stores.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::warn;

use crate::stores::{Sessions, StoreError, Views};

/// The session cookie.
const COOKIE_NAME: &str = "sid";
/// Header naming the page view's row id: acknowledged once the page is.
pub const VIEW_HEADER: &str = "x-view-id";
/// Header naming the logged-in user, or `-`.
pub const USER_HEADER: &str = "x-user";

pub struct Site {
    pub sessions: Sessions,
    pub views: Views,
    pub version: String,
}

pub fn router(site: Arc<Site>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/login", get(login))
        .fallback(get(page))
        .with_state(site)
}

/// `GET /login?user=NAME`: a new session, and its cookie.
async fn login(State(site): State<Arc<Site>>, uri: Uri) -> Response {
    let Some(user) = query_value(uri.query(), "user").filter(|u| valid_user(u)) else {
        return (StatusCode::BAD_REQUEST, "log in with /login?user=NAME (letters, digits, - and _)\n")
            .into_response();
    };
    match site.sessions.create(&user).await {
        Ok(id) => {
            let cookie = format!("{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Lax");
            let mut headers = HeaderMap::new();
            headers.insert(SET_COOKIE, header(&cookie));
            headers.insert(USER_HEADER, header(&user));
            (StatusCode::OK, headers, format!("logged in as {user}\n")).into_response()
        }
        Err(err) => unavailable(&err),
    }
}

/// Any other path: a page view, recorded in the database.
async fn page(State(site): State<Arc<Site>>, uri: Uri, request_headers: HeaderMap) -> Response {
    let user = match cookie(&request_headers, COOKIE_NAME) {
        Some(id) => match site.sessions.user(&id).await {
            Ok(user) => user,
            Err(err) => return unavailable(&err),
        },
        None => None,
    };
    let view = match site.views.record(user.as_deref(), uri.path()).await {
        Ok(view) => view,
        Err(err) => return unavailable(&err),
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(VIEW_HEADER, header(&view.to_string()));
    headers.insert(USER_HEADER, header(user.as_deref().unwrap_or("-")));
    (StatusCode::OK, headers, render(&site.version, user.as_deref(), view)).into_response()
}

fn unavailable(err: &StoreError) -> Response {
    warn!(%err, "answering 503");
    (StatusCode::SERVICE_UNAVAILABLE, format!("try again: {err}\n")).into_response()
}

/// Values here are ids, numbers and checked user names: always valid.
fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The value of `key` in a query string (no percent-decoding: the values
/// this site takes need none).
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')).map(str::to_string)
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// 1 to 64 letters, digits, `-` and `_`: safe in HTML and in a header.
fn valid_user(user: &str) -> bool {
    (1..=64).contains(&user.len()) && user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn render(version: &str, user: Option<&str>, view: i64) -> String {
    let greeting = match user {
        Some(user) => format!("Hello, {user}."),
        None => "Hello, visitor. Log in at <a href=\"/login?user=you\">/login?user=you</a>.".to_string(),
    };
    format!(
        "<!doctype html>\n<title>Hostwright demo site</title>\n<h1>Hostwright demo site (version {version})</h1>\n\
         <p>{greeting}</p>\n<p>This is page view #{view}, kept in the database mirror.</p>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_found_by_their_exact_key() {
        assert_eq!(query_value(Some("user=ada"), "user").as_deref(), Some("ada"));
        assert_eq!(query_value(Some("x=1&user=ada"), "user").as_deref(), Some("ada"));
        assert_eq!(query_value(Some("username=ada"), "user"), None);
        assert_eq!(query_value(None, "user"), None);
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("theme=dark; sid=abc123"));
        assert_eq!(cookie(&headers, "sid").as_deref(), Some("abc123"));
        headers.clear();
        headers.append(COOKIE, HeaderValue::from_static("sidecar=1"));
        assert_eq!(cookie(&headers, "sid"), None);
        headers.clear();
        headers.append(COOKIE, HeaderValue::from_static("sid="));
        assert_eq!(cookie(&headers, "sid"), None, "an empty session id is none");
    }

    #[test]
    fn user_names_are_restricted_to_what_needs_no_escaping() {
        assert!(valid_user("ada_lovelace-1"));
        assert!(!valid_user(""));
        assert!(!valid_user("<script>"));
        assert!(!valid_user(&"a".repeat(65)));
    }

    #[test]
    fn a_page_names_its_version_its_user_and_its_view() {
        let page = render("2", Some("ada"), 42);
        assert!(page.contains("version 2") && page.contains("Hello, ada.") && page.contains("#42"));
        assert!(render("1", None, 1).contains("visitor"));
    }
}
