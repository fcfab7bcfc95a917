//! Fetches a URL with an outgoing `wasi:http` request. The host only lets
//! the request out when the URL's scheme, host and port are on the run's
//! HTTP allowlist; any other destination comes back as `denied`.
//!
//! Input: `{"url": "https://api.github.com/zen", "max_body_bytes": 65536}`.

use coderclaw_sdk::{SkillError, log, skill};
use serde::{Deserialize, Serialize};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
}

fn default_max_body() -> usize {
    64 * 1024
}

#[derive(Serialize)]
struct Output {
    status: u16,
    content_type: Option<String>,
    body: String,
    body_bytes: usize,
    truncated: bool,
}

#[skill]
fn run(input: Input) -> Result<Output, SkillError> {
    let (scheme, authority, path) = split_url(&input.url)?;
    log::info(&format!("GET {}", input.url));

    let request = OutgoingRequest::new(Fields::new());
    let set = |ok: Result<(), ()>, what: &str| ok.map_err(|()| SkillError::invalid_input(format!("bad {what} in url")));
    set(request.set_method(&Method::Get), "method")?;
    set(request.set_scheme(Some(&scheme)), "scheme")?;
    set(request.set_authority(Some(authority)), "host")?;
    set(request.set_path_with_query(Some(path)), "path")?;
    let body = request.body().map_err(|()| SkillError::failed("request body already taken"))?;
    OutgoingBody::finish(body, None).map_err(http_error)?;

    let pending = outgoing_handler::handle(request, None).map_err(http_error)?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| SkillError::failed("response not ready after waiting for it"))?
        .map_err(|()| SkillError::failed("response already taken"))?
        .map_err(http_error)?;

    let status = response.status();
    let content_type = response.headers().get("content-type").first().map(|v| String::from_utf8_lossy(v).into_owned());
    let incoming = response.consume().map_err(|()| SkillError::failed("response body already taken"))?;
    let stream = incoming.stream().map_err(|()| SkillError::failed("response stream already taken"))?;
    let mut body = Vec::new();
    let mut total = 0usize;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                total += chunk.len();
                let room = input.max_body_bytes.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(SkillError::failed(format!("reading the body failed: {}", e.to_debug_string())));
            }
        }
    }
    Ok(Output {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
        body_bytes: total,
        truncated: total > body.len(),
    })
}

fn split_url(url: &str) -> Result<(Scheme, &str, &str), SkillError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        SkillError::invalid_input(format!("url {url:?} has no scheme (expected http:// or https://)"))
    })?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(SkillError::invalid_input(format!("unsupported scheme {other:?}: use http or https"))),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(SkillError::invalid_input(format!("url {url:?} has no host")));
    }
    Ok((scheme, authority, path))
}

fn http_error(e: ErrorCode) -> SkillError {
    match e {
        ErrorCode::HttpRequestDenied => SkillError::Denied(
            "the host denied this HTTP request: the destination is not in this skill's http grant".into(),
        ),
        other => SkillError::failed(format!("HTTP request failed: {other:?}")),
    }
}
