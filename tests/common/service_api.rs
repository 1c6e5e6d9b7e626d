//! The Blob Service API as its tests speak it: uploads, reads and the metadata stream.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use super::{TestServer, token};

pub const PNG: &str = "image/png";

pub struct Api {
    pub base: String,
    pub token: String,
}

impl Api {
    pub fn new(server: &TestServer, bucket: &str) -> Self {
        Self {
            base: format!("http://{}/api/v1", server.addr),
            token: token(bucket),
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Uploads `bytes` with `metadata`; the response.
    pub async fn upload_raw(&self, bytes: &[u8], metadata: Value) -> Response {
        let form = Form::new()
            .part(
                "blob",
                Part::bytes(bytes.to_vec())
                    .file_name("photo.png")
                    .mime_str(PNG)
                    .unwrap(),
            )
            .text("metadata", metadata.to_string());
        self.request(Method::POST, "/blobs")
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Uploads and returns the new handle.
    pub async fn upload(&self, bytes: &[u8], metadata: Value) -> String {
        let response = self.upload_raw(bytes, metadata).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["handle"].as_str().expect("a handle").to_owned()
    }

    /// A `GET` of `path` (below `/api/v1`) with the bucket's token.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    /// Opens the metadata stream with `request` (see [`subscription`]); the response.
    pub async fn subscribe(&self, request: &Value) -> Response {
        self.request(Method::POST, "/events/subscribe")
            .json(request)
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, method: Method, path: &str) -> StatusCode {
        self.request(method, path).send().await.unwrap().status()
    }

    pub async fn list(&self, query: &str) -> Value {
        let response = self
            .request(Method::GET, &format!("/blobs?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }
}

/// Reads the next non-empty line of a metadata stream.
pub async fn next_line(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
) -> Value {
    loop {
        if let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            if !line.trim().is_empty() {
                return serde_json::from_str(&line).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event in time")
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

pub fn subscription(since: Option<u64>) -> Value {
    let mut request = json!({ "subscriptions": [{
        "name": "ActyxOS-BlobService-Metadata",
        "semantics": "com.actyx.os.blobs.metadata",
    }]});
    if let Some(since) = since {
        request["since"] = json!(since);
    }
    request
}
