//! Outgoing HTTP through `wasi:http`, gated by the grant's host allowlist.
//! A request to any destination not on it fails with `HTTP request denied`
//! before a connection is made.

use crate::state::RunContext;
use std::sync::Arc;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The per-run HTTP hooks: checks each request against the grant.
pub(crate) struct HttpGate {
    pub ctx: Arc<RunContext>,
}

type SendResult = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_owned();
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16();
        let target = format!("{scheme}://{host}{}", port.map(|p| format!(":{p}")).unwrap_or_default());
        if !self.ctx.grant.allows_http(&scheme, &host, port) {
            let allowed: Vec<String> = self.ctx.grant.http().iter().map(ToString::to_string).collect();
            let detail = if allowed.is_empty() {
                "this skill has no http grant".to_owned()
            } else {
                format!("not in this skill's http grant ({})", allowed.join(", "))
            };
            self.ctx.capability("http", target, false, detail);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        self.ctx.capability("http", target, true, format!("{} {}", request.method(), uri.path()));
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((res.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}
