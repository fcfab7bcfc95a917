//! [`GrpcTransport`]: the runtime interface over gRPC to
//! `coderclaw serve --grpc-listen` (`grpc://host:port`, or `grpcs://` for
//! TLS verified like https). One HTTP/2 connection, opened on first use
//! and again after it breaks, carries every call and stream.

use super::connection::H2Connection;
use super::convert::{event_from, filter_to, runtime_status_from, skill_from, submit_to, task_from};
use super::proto::runtime_client::RuntimeClient;
use super::{error_of, proto};
use crate::runtime::{RunStream, RunUpdate, RuntimeFuture, Transport, UpdateStream, client_error, run_in_three_calls};
use coderclaw_core::task::{
    RuntimeStatus, SkillInfo, TaskFilter, TaskState, TaskSubmitRequest, TaskUpdateEvent, UploadInfo,
};
use coderclaw_net::endpoint::{Endpoint, Schemes};
use coderclaw_tasks::{ErrorCode, RuntimeError};
use futures_util::StreamExt;
use std::path::Path;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;

/// The schemes of gRPC URLs.
const GRPC_SCHEMES: Schemes = Schemes { plain: "grpc", secure: "grpcs", plain_port: 80, secure_port: 443 };

/// Largest reply message read.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// A client of a `coderclaw serve` gRPC server.
#[derive(Clone)]
pub struct GrpcTransport {
    client: RuntimeClient<InterceptedService<H2Connection, Bearer>>,
}

/// Adds the session token to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl GrpcTransport {
    /// A client of the server at `url` (`grpc://127.0.0.1:7421`) acting
    /// with session `token`; `ca` is an extra PEM CA trusted for `grpcs://`.
    /// Connects on first use.
    pub fn new(url: &str, token: Option<String>, ca: Option<&Path>) -> Result<Self, RuntimeError> {
        let endpoint = Endpoint::parse(url, GRPC_SCHEMES, ca, &[b"h2"]).map_err(client_error)?;
        let bearer = match &token {
            Some(t) => {
                endpoint.check_credentials_allowed().map_err(client_error)?;
                let mut v: MetadataValue<Ascii> = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| RuntimeError::new(ErrorCode::InvalidRequest, "the token is not printable ASCII"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let scheme = if endpoint.is_tls() { "https" } else { "http" };
        let origin: http::Uri = format!("{scheme}://{}", endpoint.authority)
            .parse()
            .map_err(|e| RuntimeError::new(ErrorCode::InvalidRequest, format!("`{url}`: {e}")))?;
        let client =
            RuntimeClient::with_origin(InterceptedService::new(H2Connection::lazy(endpoint), Bearer(bearer)), origin)
                .max_decoding_message_size(MAX_REPLY_BYTES);
        Ok(Self { client })
    }

    fn client(&self) -> RuntimeClient<InterceptedService<H2Connection, Bearer>> {
        self.client.clone()
    }
}

/// Bytes per `UploadChunk`.
const UPLOAD_CHUNK: usize = 512 << 10;

fn task_ref(id: &str) -> proto::TaskRef {
    proto::TaskRef { task_id: id.to_owned() }
}

impl Transport for GrpcTransport {
    fn submit_task<'a>(&'a self, req: TaskSubmitRequest) -> RuntimeFuture<'a, TaskState> {
        Box::pin(async move {
            let reply = self.client().submit_task(submit_to(req)?).await.map_err(|s| error_of(&s))?;
            task_from(reply.into_inner())
        })
    }

    fn get_task_state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<TaskState>> {
        Box::pin(async move {
            match self.client().get_task(task_ref(id)).await {
                Ok(reply) => Ok(Some(task_from(reply.into_inner())?)),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                Err(s) => Err(error_of(&s)),
            }
        })
    }

    fn stream_task_updates<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, UpdateStream> {
        Box::pin(async move {
            let stream = self.client().stream_task_updates(task_ref(id)).await.map_err(|s| error_of(&s))?;
            let events = stream.into_inner().map(|item| match item {
                Ok(e) => event_from(e),
                Err(s) => Err(error_of(&s)),
            });
            Ok(Box::pin(events) as UpdateStream)
        })
    }

    fn cancel_task<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, bool> {
        Box::pin(async move {
            let reply = self.client().cancel_task(task_ref(id)).await.map_err(|s| error_of(&s))?;
            Ok(reply.into_inner().cancelled)
        })
    }

    fn abandon_task<'a>(&'a self, id: &'a str, reason: &'a str) -> RuntimeFuture<'a, bool> {
        Box::pin(async move {
            let req = proto::AbandonTaskRequest { task_id: id.to_owned(), reason: reason.to_owned() };
            let reply = self.client().abandon_task(req).await.map_err(|s| error_of(&s))?;
            Ok(reply.into_inner().abandoned)
        })
    }

    fn list_tasks<'a>(&'a self, filter: TaskFilter) -> RuntimeFuture<'a, Vec<TaskState>> {
        Box::pin(async move {
            let reply = self.client().list_tasks(filter_to(filter)).await.map_err(|s| error_of(&s))?;
            reply.into_inner().tasks.into_iter().map(task_from).collect()
        })
    }

    fn get_task_events<'a>(&'a self, id: &'a str, after: u64, limit: u32) -> RuntimeFuture<'a, Vec<TaskUpdateEvent>> {
        Box::pin(async move {
            let req = proto::GetTaskEventsRequest { task_id: id.to_owned(), after, limit };
            let reply = self.client().get_task_events(req).await.map_err(|s| error_of(&s))?;
            reply.into_inner().events.into_iter().map(event_from).collect()
        })
    }

    fn respond<'a>(&'a self, id: &'a str, answer: &'a str) -> RuntimeFuture<'a, TaskState> {
        Box::pin(async move {
            let req = proto::RespondRequest { task_id: id.to_owned(), answer: answer.to_owned() };
            let reply = self.client().respond_to_task(req).await.map_err(|s| error_of(&s))?;
            task_from(reply.into_inner())
        })
    }

    fn list_agents<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        Box::pin(async move {
            let reply = self.client().list_agents(proto::ListSkillsRequest {}).await.map_err(|s| error_of(&s))?;
            reply.into_inner().skills.into_iter().map(skill_from).collect()
        })
    }

    fn list_skills<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        Box::pin(async move {
            let reply = self.client().list_skills(proto::ListSkillsRequest {}).await.map_err(|s| error_of(&s))?;
            reply.into_inner().skills.into_iter().map(skill_from).collect()
        })
    }

    fn get_status<'a>(&'a self) -> RuntimeFuture<'a, RuntimeStatus> {
        Box::pin(async move {
            let reply = self.client().get_status(proto::GetStatusRequest {}).await.map_err(|s| error_of(&s))?;
            runtime_status_from(reply.into_inner())
        })
    }

    fn set_paused<'a>(&'a self, id: &'a str, paused: bool) -> RuntimeFuture<'a, TaskState> {
        Box::pin(async move {
            let mut client = self.client();
            let reply =
                if paused { client.pause_task(task_ref(id)).await } else { client.resume_task(task_ref(id)).await };
            task_from(reply.map_err(|s| error_of(&s))?.into_inner())
        })
    }

    fn run_task<'a>(&'a self, req: TaskSubmitRequest) -> RunStream<'a> {
        use proto::run_task_update::Update;
        let updates = async move {
            let older_server = req.clone();
            let stream = match self.client().run_task(submit_to(req)?).await {
                Ok(stream) => stream,
                // A server from before RunTask refuses it before any handler
                // runs: nothing was submitted, the three calls do it.
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    return Ok(run_in_three_calls(self, older_server));
                }
                Err(s) => return Err(error_of(&s)),
            };
            let updates = stream.into_inner().map(|item| match item.map_err(|s| error_of(&s))?.update {
                Some(Update::Accepted(t)) => Ok(RunUpdate::Accepted(task_from(t)?)),
                Some(Update::Event(e)) => Ok(RunUpdate::Event(event_from(e)?)),
                Some(Update::Finished(t)) => Ok(RunUpdate::Finished(task_from(t)?)),
                None => Err(RuntimeError::new(ErrorCode::Internal, "the server sent an empty RunTask update")),
            });
            Ok(Box::pin(updates) as RunStream<'a>)
        };
        Box::pin(futures_util::stream::once(updates).flat_map(|r| match r {
            Ok(updates) => updates.left_stream(),
            Err(e) => futures_util::stream::once(async { Err(e) }).right_stream(),
        }))
    }

    fn upload_workspace<'a>(&'a self, tar: bytes::Bytes) -> RuntimeFuture<'a, UploadInfo> {
        Box::pin(async move {
            // Chunks under the server's 1 MiB message limit.
            let chunks: Vec<proto::UploadChunk> =
                tar.chunks(UPLOAD_CHUNK).map(|c| proto::UploadChunk { data: tar.slice_ref(c) }).collect();
            let reply = self
                .client()
                .upload_workspace(futures_util::stream::iter(chunks))
                .await
                .map_err(|s| error_of(&s))?
                .into_inner();
            Ok(UploadInfo { digest: reply.digest, bytes: reply.bytes, files: reply.files })
        })
    }
}
