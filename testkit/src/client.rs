//! A minimal Socket.IO v4 client over a raw WebSocket, speaking exact packets: the tests check
//! packets byte for byte with it, and the benchmark opens thousands of cheap connections.
//! Browser and Node apps use the official `socket.io-client`; this is not a replacement for it.

use std::collections::VecDeque;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("connection closed")]
    Closed,
    #[error("connection refused by the server: {0}")]
    Refused(String),
    #[error("unexpected packet: {0}")]
    Unexpected(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// One Socket.IO connection on the default namespace.
pub struct RawClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ack: u64,
    /// Socket.IO packets received while waiting for something else, oldest first.
    backlog: VecDeque<String>,
}

impl RawClient {
    /// Connects over WebSocket and joins `/` with `auth`, e.g. `{"token": "..."}`.
    /// A refused handshake is [`ClientError::Refused`] with the server's message.
    pub async fn connect(addr: SocketAddr, auth: Value) -> Result<Self> {
        Self::connect_with_headers(addr, auth, &[]).await
    }

    /// Like [`RawClient::connect`], adding HTTP headers to the upgrade request.
    pub async fn connect_with_headers(
        addr: SocketAddr,
        auth: Value,
        headers: &[(&'static str, &str)],
    ) -> Result<Self> {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            let value = value
                .parse()
                .map_err(|_| ClientError::Unexpected(format!("bad header value {value}")))?;
            request.headers_mut().insert(*name, value);
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let mut client = Self {
            ws,
            next_ack: 0,
            backlog: VecDeque::new(),
        };
        let open = client.recv_engine().await?;
        if !open.starts_with('0') {
            return Err(ClientError::Unexpected(open));
        }
        client.send_raw(&format!("0{auth}")).await?;
        let reply = client.recv().await?;
        if reply.starts_with('0') {
            Ok(client)
        } else if let Some(error) = reply.strip_prefix('4') {
            let message: Value = serde_json::from_str(error).unwrap_or(Value::Null);
            Err(ClientError::Refused(
                message["message"].as_str().unwrap_or(error).to_owned(),
            ))
        } else {
            Err(ClientError::Unexpected(reply))
        }
    }

    /// Connects with a token.
    pub async fn connect_token(addr: SocketAddr, token: &str) -> Result<Self> {
        Self::connect(addr, json!({ "token": token })).await
    }

    /// Sends one Socket.IO packet as is (the Engine.IO `4` is added), e.g. `42["get",{}]`.
    pub async fn send_raw(&mut self, socketio_packet: &str) -> Result<()> {
        self.send_engine(&format!("4{socketio_packet}")).await
    }

    /// Sends one Engine.IO packet as is, e.g. `4` + a Socket.IO packet.
    pub async fn send_engine(&mut self, packet: &str) -> Result<()> {
        self.ws.send(Message::text(packet)).await?;
        Ok(())
    }

    /// Sends a raw WebSocket message.
    pub async fn send_message(&mut self, message: Message) -> Result<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// The next Engine.IO text packet; pings are answered on the way.
    async fn recv_engine(&mut self) -> Result<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                    self.send_engine("3").await?;
                }
                Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(Message::Close(_))) | None => return Err(ClientError::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// The next Socket.IO packet (Engine.IO message packets only), oldest backlog first.
    pub async fn recv(&mut self) -> Result<String> {
        if let Some(packet) = self.backlog.pop_front() {
            return Ok(packet);
        }
        loop {
            let packet = self.recv_engine().await?;
            match packet.strip_prefix('4') {
                Some(socketio) => return Ok(socketio.to_owned()),
                None if packet == "1" => return Err(ClientError::Closed),
                None => {}
            }
        }
    }

    /// Emits `event` with `args` and an ack id; returns the raw ack packet (e.g. `43` + id +
    /// `[...]`). Packets that arrive before it are kept for [`RawClient::recv`].
    pub async fn call_raw(&mut self, event: &str, args: &[Value]) -> Result<String> {
        let id = self.next_ack;
        self.next_ack += 1;
        let mut payload = vec![json!(event)];
        payload.extend_from_slice(args);
        self.send_raw(&format!("2{id}{}", Value::Array(payload)))
            .await?;
        self.wait_ack(id).await
    }

    /// Waits for the ack with this id, keeping other packets in the backlog.
    pub async fn wait_ack(&mut self, id: u64) -> Result<String> {
        let prefix = format!("3{id}[");
        if let Some(pos) = self.backlog.iter().position(|p| p.starts_with(&prefix)) {
            return Ok(self.backlog.remove(pos).expect("position is in range"));
        }
        loop {
            let packet = self.recv_engine().await?;
            let Some(socketio) = packet.strip_prefix('4') else {
                if packet == "1" {
                    return Err(ClientError::Closed); // Engine.IO CLOSE
                }
                continue;
            };
            if socketio.starts_with(&prefix) {
                return Ok(socketio.to_owned());
            }
            if socketio.starts_with('1') {
                return Err(ClientError::Closed);
            }
            self.backlog.push_back(socketio.to_owned());
        }
    }

    /// Emits `event` with `args` and returns the ack's arguments.
    pub async fn call(&mut self, event: &str, args: &[Value]) -> Result<Vec<Value>> {
        let packet = self.call_raw(event, args).await?;
        let start = packet
            .find('[')
            .ok_or_else(|| ClientError::Unexpected(packet.clone()))?;
        serde_json::from_str(&packet[start..]).map_err(|_| ClientError::Unexpected(packet))
    }

    /// Emits `event` with one argument and returns the ack's first argument (`Null` if none).
    pub async fn call1(&mut self, event: &str, arg: Value) -> Result<Value> {
        let mut args = self.call(event, &[arg]).await?;
        Ok(if args.is_empty() {
            Value::Null
        } else {
            args.swap_remove(0)
        })
    }

    /// Emits `event` with `args` and no ack id (the server replies with events, if at all).
    pub async fn emit(&mut self, event: &str, args: &[Value]) -> Result<()> {
        let mut payload = vec![json!(event)];
        payload.extend_from_slice(args);
        self.send_raw(&format!("2{}", Value::Array(payload))).await
    }

    /// Waits for the event `name` and returns its arguments; other packets are kept for
    /// [`RawClient::recv`] and [`RawClient::wait_ack`].
    pub async fn next_event(&mut self, name: &str) -> Result<Vec<Value>> {
        let prefix = format!("2[{}", json!(name));
        let found = match self.backlog.iter().position(|p| p.starts_with(&prefix)) {
            Some(pos) => self.backlog.remove(pos).expect("position is in range"),
            None => loop {
                let packet = self.recv_engine().await?;
                let Some(socketio) = packet.strip_prefix('4') else {
                    if packet == "1" {
                        return Err(ClientError::Closed);
                    }
                    continue;
                };
                if socketio.starts_with(&prefix) {
                    break socketio.to_owned();
                }
                self.backlog.push_back(socketio.to_owned());
            },
        };
        let mut args: Vec<Value> = serde_json::from_str(&found[1..])
            .map_err(|_| ClientError::Unexpected(found.clone()))?;
        args.remove(0);
        Ok(args)
    }

    /// How many `name` events were received and not yet taken.
    pub fn pending_events(&self, name: &str) -> usize {
        let prefix = format!("2[{}", json!(name));
        self.backlog
            .iter()
            .filter(|p| p.starts_with(&prefix))
            .count()
    }

    /// Closes the connection politely.
    pub async fn close(mut self) -> Result<()> {
        self.ws.close(None).await?;
        Ok(())
    }
}
