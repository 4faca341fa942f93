//! A client for text services that charge per request: OpenAI-compatible chat completions and
//! DeepL's translate API. One place for what such calls need: a concurrency limit, a
//! requests-per-minute limit, retries with exponential backoff and jitter on 429, 5xx, timeouts
//! and malformed answers (honouring `Retry-After`), and errors that separate a refused key
//! (stop everything) from a failed request (this row only).

use flow_engine::exec::backoff_delay;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

/// Which API speaks at `base_url`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// `POST {base_url}/chat/completions` (OpenAI, vLLM, llama.cpp server, Ollama, …).
    #[default]
    Openai,
    /// `POST {base_url}/v2/translate` (DeepL API Free or Pro).
    Deepl,
}

/// Settings of a [`TextClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The API.
    pub provider: Provider,
    /// Endpoint root, e.g. `https://api.openai.com/v1` or `https://api-free.deepl.com`.
    pub base_url: String,
    /// Model name (chat completions).
    pub model: String,
    /// API key, when the endpoint needs one.
    pub api_key: Option<String>,
    /// Sampling temperature (chat completions).
    pub temperature: f64,
    /// Longest answer in tokens (chat completions; the endpoint's default when `None`).
    pub max_tokens: Option<u32>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Request starts per minute, when limited.
    pub requests_per_minute: Option<u32>,
    /// Retries after the first attempt of a request.
    pub max_retries: u32,
    /// Limit for one request.
    pub timeout: Duration,
    /// First retry delay (doubled per retry, capped at 60 s, with jitter) when the answer has no `Retry-After`.
    pub backoff_base: Duration,
}

/// Why a request produced no text.
#[derive(Debug)]
pub enum ClientError {
    /// The endpoint refused the key or does not exist: no request will succeed.
    Fatal(String),
    /// This request failed (after its retries): the caller decides (drop the row or fail).
    Failed(String),
}

impl ClientError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            ClientError::Fatal(m) | ClientError::Failed(m) => m,
        }
    }
}

/// The outcome of one attempt.
enum Attempt {
    Done(String),
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Stop(ClientError),
}

/// A rate-limited, retrying client; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct TextClient {
    config: Arc<ClientConfig>,
    http: reqwest::Client,
    in_flight: Arc<Semaphore>,
    next_start: Arc<Mutex<Instant>>,
}

impl TextClient {
    /// A client for `config`.
    pub fn new(config: ClientConfig) -> Result<TextClient, ClientError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("flow/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .build()
            .map_err(|e| ClientError::Fatal(format!("cannot set up the HTTP client: {e}")))?;
        Ok(TextClient {
            in_flight: Arc::new(Semaphore::new(config.concurrency.max(1))),
            next_start: Arc::new(Mutex::new(Instant::now())),
            config: Arc::new(config),
            http,
        })
    }

    /// Sends `user` (with `system` instructions for chat completions; DeepL translates `user`
    /// into `target_language`) and returns the answer's text.
    pub async fn complete(
        &self,
        system: &str,
        user: &str,
        target_language: &str,
    ) -> Result<String, ClientError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| ClientError::Fatal("client closed".into()))?;
        let mut retry = 0;
        loop {
            self.wait_for_slot().await;
            match self.attempt(system, user, target_language).await {
                Attempt::Done(text) => return Ok(text),
                Attempt::Stop(error) => return Err(error),
                Attempt::Retry { why, after } if retry < self.config.max_retries => {
                    retry += 1;
                    let delay = after.unwrap_or_else(|| {
                        backoff_delay(self.config.backoff_base, retry, Duration::from_secs(60))
                    });
                    tracing::debug!(%why, retry, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Attempt::Retry { why, .. } => {
                    return Err(ClientError::Failed(format!(
                        "{why} (gave up after {} attempts)",
                        retry + 1
                    )));
                }
            }
        }
    }

    /// Spaces request starts `60 / requests_per_minute` seconds apart.
    async fn wait_for_slot(&self) {
        let Some(rpm) = self.config.requests_per_minute.filter(|r| *r > 0) else {
            return;
        };
        let spacing = Duration::from_secs_f64(60.0 / f64::from(rpm));
        let start = {
            let mut next = self.next_start.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + spacing;
            start
        };
        tokio::time::sleep_until(start).await;
    }

    fn request(&self) -> reqwest::RequestBuilder {
        let base = self.config.base_url.trim_end_matches('/');
        let (url, auth) = match self.config.provider {
            Provider::Openai => (format!("{base}/chat/completions"), "Bearer"),
            Provider::Deepl => (format!("{base}/v2/translate"), "DeepL-Auth-Key"),
        };
        let builder = self.http.post(url);
        match &self.config.api_key {
            Some(key) => builder.header("Authorization", format!("{auth} {key}")),
            None => builder,
        }
    }

    fn body(&self, system: &str, user: &str, target_language: &str) -> Json {
        match self.config.provider {
            Provider::Openai => {
                let mut body = json!({
                    "model": self.config.model,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                    ],
                    "temperature": self.config.temperature,
                });
                if let Some(max_tokens) = self.config.max_tokens {
                    body["max_tokens"] = max_tokens.into();
                }
                body
            }
            Provider::Deepl => json!({
                "text": [user],
                "target_lang": target_language.to_ascii_uppercase(),
            }),
        }
    }

    async fn attempt(&self, system: &str, user: &str, target_language: &str) -> Attempt {
        let sent = self
            .request()
            .json(&self.body(system, user, target_language))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_connect() && !e.is_timeout() => {
                return Attempt::Stop(ClientError::Fatal(format!(
                    "cannot reach {}: {}",
                    self.config.base_url,
                    error_chain(&e)
                )));
            }
            Err(e) => {
                return Attempt::Retry {
                    why: format!("no answer: {}", error_chain(&e)),
                    after: None,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(&response);
        let text = response.text().await.unwrap_or_default();
        match status {
            200..=299 => match self.answer_text(&text) {
                Some(answer) => Attempt::Done(answer),
                None => Attempt::Retry {
                    why: format!("malformed answer: {}", clip(&text)),
                    after: None,
                },
            },
            401 | 403 => Attempt::Stop(ClientError::Fatal(format!(
                "{} refused the API key ({status}): check the key given as `api_key` (${{secret.…}}): {}",
                self.config.base_url,
                clip(&text)
            ))),
            404 => Attempt::Stop(ClientError::Fatal(format!(
                "{} has no such endpoint or model `{}` (404): {}",
                self.config.base_url,
                self.config.model,
                clip(&text)
            ))),
            408 | 429 | 500..=599 => Attempt::Retry {
                why: format!("HTTP {status}"),
                after: retry_after,
            },
            _ => Attempt::Stop(ClientError::Failed(format!(
                "HTTP {status}: {}",
                clip(&text)
            ))),
        }
    }

    /// The text of a successful answer, or `None` when it is not the expected JSON.
    fn answer_text(&self, body: &str) -> Option<String> {
        let json: Json = serde_json::from_str(body).ok()?;
        let text = match self.config.provider {
            Provider::Openai => json["choices"][0]["message"]["content"].as_str()?,
            Provider::Deepl => json["translations"][0]["text"].as_str()?,
        };
        Some(text.to_string())
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs and read as absent).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    Some(Duration::from_secs_f64(seconds.clamp(0.0, 600.0)))
}

fn clip(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text.to_string()
    }
}

/// An error with its causes, `: `-separated (reqwest's own message omits them).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
